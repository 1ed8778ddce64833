"""Halting: one encoder pass decides how many tokens each image needs to meet a target error (KARL style).

Quality conditioning. A target error ``eps`` (per-pixel L1 on [0, 1] images by default, or MSE) is placed on a
log scale between ``eps_min`` and ``eps_max`` with ``eps_bins`` learned embeddings at evenly spaced bin centres
(the first at eps_min, the last at eps_max); the condition is the linear interpolation of the two neighbouring
bin embeddings, so every eps in the range has a trained condition even where few training errors fell (hard
bins left the bins that training rarely reached at their random init, and lengths at those eps were
arbitrary). The embedding is one extra encoder input token, ``[patches | eps | registers]``. Row 0 is
"unconditioned": plain ``encode(images)`` uses it, so a halting tokenizer still works as an any-prefix
tokenizer. With causal registers, register i attends to every patch, to the eps token and to registers <= i;
patches attend only to patches.

Halting on a nested tokenizer (``condition_encoder=False``, ``halting_from_tokenizer``): the encoder is a trained
any-prefix tokenizer's, unchanged, and only the halting head reads eps. The codes of an image are then the same at
every eps (and the same as the nested tokenizer's); eps moves only where the sequence ends. This is the cheap way
to add halting: no encoder training, just the head fit to the search minimum (``tokgen refit-halting`` on a
``tokenizer1d`` checkpoint).

Halting head. One logit per register, read from the register's last hidden state (``halt_head_hidden > 0``: by
an MLP that also reads the eps embedding directly, so eps need not reach every register through attention):
``p_i = sigmoid(h_i)`` is the probability that tokens ``0..i-1`` already meet the target, i.e. that the sequence may end before token i.
The length is the first position ``i >= 1`` with ``p_i > halt_threshold`` (K when none), so the kept set is
always a prefix ``0..L-1`` with ``1 <= L <= K``: valid for nested decoding and for the generator.

Training (``tokgen.lit.halting``, upside-down-RL style): (1) encode unconditioned, keep a random budget T,
measure the achieved error eps0 of each image; (2) encode conditioned on eps0 and train the head with BCE so
positions 1..T-1 stay active and T..K-1 halt (target 1 = "T tokens suffice"). ``halting_targets`` builds those
labels, including the partial labels of an eps0 outside the trained range.

Head refit (``tokgen.tokenizers.halting_refit``, ``tokgen refit-halting``): once the tokenizer is trained, the head
alone is refit on the frozen encoder to the search minimum k* of (image, eps) pairs, which tightens the lengths
around the smallest sufficient prefix; codes do not change.

Error-model head (``halt_head="error_model"``, only with ``condition_encoder=False``). Instead of one halting logit
per (register, eps), an MLP on the mean register state models the log error of the image's first i tokens, for
every i, as a logistic distribution (location, scale); at a target eps, ``p_i = P(error_i <= eps) = sigmoid((log
eps - loc_i) / scale_i)``. p_i rises with eps at every register, so a lower eps never halts earlier, for every image and
every threshold; one fit covers the whole eps range (its labels are decoded prefix errors, not per-eps searches).

Inference: ``encode(images, target_error=eps)`` -> (codes (B, K) with zeros past each length, lengths (B,)),
one encoder pass and no decoder pass. An eps outside ``[eps_min, eps_max]`` raises a ValueError unless
``clamp=True``, which uses the nearest trained value (the lengths are then those of the clamped eps).

Search baseline (for evaluation): ``search_min_tokens`` decodes candidate prefixes (linear or binary search)
and returns the smallest k whose reconstruction meets eps, with the decoder passes it spent.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .tokenizer1d import Tokenizer1D, TokenizerConfig, register_attention_mask

ERROR_METRICS = ("l1", "l2")
HALT_HEADS = ("classifier", "error_model")
SEARCH_METHODS = ("linear", "binary")


@dataclass
class HaltingConfig(TokenizerConfig):
    """A 1D tokenizer plus eps conditioning and a halting head (saved with every checkpoint)."""

    config_name = "halting tokenizer"

    error_metric: str = "l1"  # per-pixel error on [0, 1] images: "l1" (mean |x - y|) or "l2" (mean squared)
    eps_min: float = 0.02  # trained range of target errors; eps0 outside it is clamped in training
    eps_max: float = 0.3
    eps_bins: int = 32  # log-spaced bin centres over [eps_min, eps_max] (>= 2), interpolated between
    halt_threshold: float = 0.5  # a position halts when its halting probability exceeds this
    halt_thresholds: list | None = None  # optional [[eps, threshold], ...] by rising eps, thresholds non-increasing:
    #                                     the threshold at eps, linear in log eps between entries (replaces
    #                                     halt_threshold; written by `tokgen refit-halting --calibrate`)
    halt_head_hidden: int = 0  # 0: a linear head on each register's state; > 0: an MLP of this width on the
    #                            register's state next to the eps embedding (the head reads eps directly)
    condition_encoder: bool = True  # False: the encoder does not read eps (codes independent of eps); only the
    #                                 head does, so it needs halt_head_hidden > 0
    halt_head: str = "classifier"  # "classifier": a logit per register from [state | eps embedding];
    #                                "error_model": a distribution of each prefix's error, eps read at the end

    def __post_init__(self):
        super().__post_init__()
        if self.error_metric not in ERROR_METRICS:
            raise ValueError(f"error_metric={self.error_metric!r} is not supported; use one of {ERROR_METRICS}")
        if not (isinstance(self.eps_min, (int, float)) and isinstance(self.eps_max, (int, float))
                and 0 < self.eps_min < self.eps_max):
            raise ValueError(f"need 0 < eps_min < eps_max, got eps_min={self.eps_min!r}, eps_max={self.eps_max!r}")
        if not isinstance(self.eps_bins, int) or self.eps_bins < 2:
            raise ValueError(f"eps_bins={self.eps_bins!r} must be an integer >= 2 (bin centres at eps_min and eps_max)")
        if not 0.0 < self.halt_threshold < 1.0:
            raise ValueError(f"halt_threshold={self.halt_threshold!r} must be in (0, 1)")
        if self.halt_thresholds is not None:
            table = self.halt_thresholds
            ok = isinstance(table, (list, tuple)) and len(table) >= 1 and all(
                isinstance(row, (list, tuple)) and len(row) == 2 and all(isinstance(v, (int, float)) for v in row)
                for row in table)
            if ok:
                eps, thr = [float(r[0]) for r in table], [float(r[1]) for r in table]
                ok = (all(e > 0 for e in eps) and all(0 < t < 1 for t in thr)
                      and all(a < b for a, b in zip(eps, eps[1:])) and all(a >= b for a, b in zip(thr, thr[1:])))
            if not ok:
                raise ValueError(f"halt_thresholds={table!r} must be [[eps, threshold], ...] with eps > 0 rising and "
                                 f"thresholds in (0, 1) not rising (a lower eps never halts earlier)")
            self.halt_thresholds = [[float(e), float(t)] for e, t in table]
        if not isinstance(self.halt_head_hidden, int) or self.halt_head_hidden < 0:
            raise ValueError(f"halt_head_hidden={self.halt_head_hidden!r} must be an integer >= 0 (0 = linear head)")
        if not isinstance(self.condition_encoder, bool):
            raise ValueError(f"condition_encoder={self.condition_encoder!r} must be true or false")
        if self.halt_head not in HALT_HEADS:
            raise ValueError(f"halt_head={self.halt_head!r} is not supported; use one of {HALT_HEADS}")
        if self.halt_head == "error_model" and (self.condition_encoder or not self.halt_head_hidden):
            raise ValueError("halt_head='error_model' models the error of codes that do not depend on eps: it needs "
                             f"condition_encoder=false and halt_head_hidden > 0 (got condition_encoder="
                             f"{self.condition_encoder!r}, halt_head_hidden={self.halt_head_hidden!r})")
        if not self.condition_encoder and not self.halt_head_hidden:
            raise ValueError("condition_encoder=false needs halt_head_hidden > 0: with an unconditioned encoder only "
                             "the head's MLP reads eps")


def reconstruction_error(recon: torch.Tensor, images: torch.Tensor, metric: str = "l1") -> torch.Tensor:
    """Per-image error (B,) of reconstructions against images, both (B, C, H, W) in [-1, 1], measured on
    [0, 1] images clamped like the files: "l1" = mean |x - y|, "l2" = mean (x - y)^2."""
    diff = ((recon.float() + 1) / 2).clamp(0, 1) - ((images.float() + 1) / 2).clamp(0, 1)
    if metric == "l1":
        return diff.abs().flatten(1).mean(1)
    if metric == "l2":
        return diff.pow(2).flatten(1).mean(1)
    raise ValueError(f"error metric {metric!r} is not supported; use one of {ERROR_METRICS}")


def lengths_from_halting(halt_logits: torch.Tensor, threshold: float | torch.Tensor) -> torch.Tensor:
    """halt_logits (B, K) -> lengths (B,) in 1..K: the first position i >= 1 whose halting probability exceeds
    ``threshold`` (a float, or one per image (B,)) (K when none does). Everything before it is kept, so the kept
    set is a prefix."""
    B, K = halt_logits.shape
    if isinstance(threshold, torch.Tensor) and threshold.dim() == 1:
        threshold = threshold.to(halt_logits.device)[:, None]
    halted = torch.sigmoid(halt_logits.float()) > threshold
    halted[:, 0] = False  # at least one token
    positions = torch.arange(K, device=halt_logits.device).expand(B, K)
    return torch.where(halted, positions, torch.full_like(positions, K)).amin(dim=1)


def halting_targets(budget: torch.Tensor, num_tokens: int, too_high: torch.Tensor | None = None,
                    too_low: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Labels for the halting head when a budget of T tokens achieved eps0 and the encoder is conditioned on eps0.

    budget: (B,) T in 1..K. Returns (targets (B, K) float, weights (B, K) float): position i halts (target 1)
    iff i >= T, and position 0 is never scored (length >= 1). When eps0 was above the trained range
    (``too_high``, conditioned on eps_max) we only know T tokens are not enough: positions 1..T get target 0
    and later ones no label. When eps0 was below it (``too_low``, conditioned on eps_min) we only know T tokens
    suffice: positions >= T get target 1 and earlier ones no label.
    """
    positions = torch.arange(num_tokens, device=budget.device)[None, :]  # (1, K)
    T = budget[:, None]
    targets = (positions >= T).float()
    weights = (positions >= 1).float().expand(budget.shape[0], -1).clone()
    if too_high is not None:
        high = too_high[:, None]
        targets = torch.where(high, torch.zeros_like(targets), targets)
        weights = torch.where(high & (positions > T), torch.zeros_like(weights), weights)
    if too_low is not None:
        weights = torch.where(too_low[:, None] & (positions < T), torch.zeros_like(weights), weights)
    return targets, weights


def halting_bce(halt_logits: torch.Tensor, targets: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """BCE of halting logits (B, K) against ``halting_targets``' labels, averaged over the scored positions."""
    bce = F.binary_cross_entropy_with_logits(halt_logits.float(), targets, weight=weights, reduction="sum")
    return bce / weights.sum().clamp(min=1.0)


class HaltingTokenizer(Tokenizer1D):
    """Tokenizer1D whose encoder also reads a target-error token and predicts one halting logit per register."""

    config_class = HaltingConfig
    kind = "halting_tokenizer"
    description = "halting tokenizer"
    hint = "train one with tokgen.lit.HaltingModule, e.g. configs/tokenizer/shapes_halting.yaml"

    def __init__(self, config: HaltingConfig | dict | None = None):
        super().__init__(config)  # config -> HaltingConfig (TokgenModel.make_config, with config_class)
        c = self.config
        self.eps_embed = nn.Embedding(c.eps_bins + 1, c.width)  # row 0: unconditioned
        if c.halt_head == "error_model":  # MLP on the mean register state -> (location, scale) for every prefix
            self.halt_mlp = nn.Sequential(nn.LayerNorm(c.width), nn.Linear(c.width, c.halt_head_hidden), nn.GELU())
            self.halt_head = nn.Linear(c.halt_head_hidden, 2 * c.num_tokens)
        elif c.halt_head_hidden:  # MLP on [register state | eps embedding]
            self.halt_mlp = nn.Sequential(nn.LayerNorm(2 * c.width), nn.Linear(2 * c.width, c.halt_head_hidden),
                                          nn.GELU())
            self.halt_head = nn.Linear(c.halt_head_hidden, 1)
        else:
            self.halt_mlp = None
            self.halt_head = nn.Linear(c.width, 1)
        nn.init.normal_(self.eps_embed.weight, std=0.02)
        nn.init.trunc_normal_(self.halt_head.weight, std=0.02)
        nn.init.zeros_(self.halt_head.bias)
        if c.condition_encoder:
            # encoder sequence [patches | eps | registers]: the eps token is the first of the "register" group, so
            # in causal mode every register sees it and the registers stay causal among themselves
            self.enc_mask = register_attention_mask(self.patch_embed.num_patches, 1 + c.num_tokens,
                                                    c.register_attention)

    # ------------------------------------------------------------------ target error -> condition index
    def condition_index(self, target_error, batch_size: int, clamp: bool = False) -> torch.Tensor:
        """A target error (float or (B,) tensor) -> condition coordinates (B,) float in [1, eps_bins]
        (eps_min -> 1, eps_max -> eps_bins, log-linear between; 0 means unconditioned).

        Outside [eps_min, eps_max] this raises, naming the value and the range, unless ``clamp``."""
        c = self.config
        device = self.registers.device
        eps = torch.as_tensor(target_error, dtype=torch.float64).to(device).flatten()
        if eps.numel() == 1:
            eps = eps.expand(batch_size)
        if eps.numel() != batch_size:
            raise ValueError(f"target_error holds {eps.numel()} values for a batch of {batch_size} images; "
                             f"give one value or one per image")
        if not torch.isfinite(eps).all():
            raise ValueError(f"target_error must be finite, got {eps.tolist()[:8]}")
        tol = 1e-6  # float32 inputs: 0.03 as float32 is 0.029999999
        outside = (eps < c.eps_min * (1 - tol)) | (eps > c.eps_max * (1 + tol))
        if outside.any() and not clamp:
            bad = eps[outside][0].item()
            raise ValueError(
                f"target_error={bad:g} is outside the trained range [{c.eps_min:g}, {c.eps_max:g}] of this halting "
                f"tokenizer ({c.error_metric} error on [0, 1] images); pass a value in that range, or clamp=True "
                f"to use the nearest trained value")
        return self._bin(eps)

    def _bin(self, eps: torch.Tensor) -> torch.Tensor:
        """eps (B,) -> log-scale bin coordinate in [1, eps_bins] (float32, clamped to the trained range)."""
        c = self.config
        pos = (torch.log(eps.double().clamp(c.eps_min, c.eps_max)) - math.log(c.eps_min)) / math.log(c.eps_max / c.eps_min)
        return (1 + pos.clamp(0, 1) * (c.eps_bins - 1)).float()

    def threshold_at(self, target_error, batch_size: int) -> torch.Tensor:
        """The halting threshold (B,) for a target error (float or (B,)): ``halt_thresholds`` interpolated linearly
        in log eps (its end values outside its eps span), or ``halt_threshold`` when there is no table."""
        c = self.config
        eps = torch.as_tensor(target_error, dtype=torch.float64).flatten().expand(batch_size)
        if not c.halt_thresholds:
            return torch.full((batch_size,), c.halt_threshold, dtype=torch.float32)
        table = torch.tensor(c.halt_thresholds, dtype=torch.float64)
        x, y = table[:, 0].log(), table[:, 1]
        le = eps.clamp(table[0, 0], table[-1, 0]).log()
        hi = torch.searchsorted(x, le).clamp(1, max(len(x) - 1, 1))
        lo = hi - 1 if len(x) > 1 else hi
        span = (x[hi] - x[lo]).clamp_min(1e-12)
        frac = ((le - x[lo]) / span).clamp(0, 1)
        return (y[lo] + frac * (y[hi] - y[lo])).float()

    def condition_embedding(self, condition: torch.Tensor) -> torch.Tensor:
        """Condition coordinates (B,) (0 = unconditioned, else in [1, eps_bins]) -> (B, W): the linear
        interpolation of the two neighbouring rows of the embedding table."""
        condition = condition.float()
        lo = condition.floor().long().clamp(0, self.config.eps_bins)
        hi = (lo + 1).clamp(max=self.config.eps_bins)
        frac = (condition - lo.float()).clamp(0, 1)[:, None]
        return (1 - frac) * self.eps_embed(lo) + frac * self.eps_embed(hi)

    def training_condition(self, achieved: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Achieved errors eps0 (B,) -> (condition coordinates (B,), eps0 > eps_max, eps0 < eps_min)."""
        c = self.config
        return self._bin(achieved.detach()), achieved > c.eps_max, achieved < c.eps_min

    # ------------------------------------------------------------------ encoder
    def encoder_states(self, images: torch.Tensor, condition: torch.Tensor | None = None):
        """images (B, C, H, W) in [-1, 1], condition (B,) coordinates (None or 0 = unconditioned)
        -> (register hidden states (B, K, W), eps embedding (B, W)): everything the halting head reads."""
        self.check_images(images)
        patches, registers = self.encoder_tokens(images)  # (B, N, W), (B, K, W): token-mixed when enabled
        if condition is None:
            condition = torch.zeros(images.shape[0], device=images.device)
        eps_token = self.condition_embedding(condition)  # (B, W)
        if self.config.condition_encoder:
            x = self.encoder(torch.cat([patches, eps_token[:, None], registers], dim=1), self.enc_mask)
        else:  # the nested tokenizer's encoder as it is; eps reaches only the head
            x = self.encoder(torch.cat([patches, registers], dim=1), self.enc_mask)
        return x[:, -self.num_tokens:], eps_token

    def condition_log_eps(self, condition: torch.Tensor) -> torch.Tensor:
        """Condition coordinates (B,) in [1, eps_bins] -> log eps (B,): the inverse of :meth:`condition_index`."""
        c = self.config
        if (condition < 1).any():
            raise ValueError("the error-model halting head needs a target error; condition 0 (unconditioned) has none")
        frac = (condition.double() - 1) / (c.eps_bins - 1)
        return (math.log(c.eps_min) + frac * math.log(c.eps_max / c.eps_min)).float()

    def error_model(self, hidden: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``halt_head="error_model"``: register states (B, K, W) -> (loc, scale) (B, K) of a logistic distribution
        of log error(first i tokens) in column i (column 0 unused: a length is >= 1). Read from the registers'
        mean: how well an image reconstructs is a property of the whole image, which one register's state alone
        carries poorly."""
        out = self.halt_head(self.halt_mlp(hidden.mean(dim=1))).float().view(hidden.shape[0], -1, 2)
        return out[..., 0], F.softplus(out[..., 1]) + 1e-3

    def halting_logits(self, hidden: torch.Tensor, condition: torch.Tensor) -> torch.Tensor:
        """The halting head: register states (B, K, W) and condition coordinates (B,) -> one logit per register (B, K).

        classifier: read from [state | eps embedding]. error_model: ``(log eps - loc) / scale``, so
        ``sigmoid(logit)`` is the modelled probability that the prefix's error is <= eps; it rises with eps at
        every register, so a lower eps never halts earlier."""
        if self.config.halt_head == "error_model":
            loc, scale = self.error_model(hidden)
            return (self.condition_log_eps(condition)[:, None] - loc) / scale
        if self.halt_mlp is not None:
            eps_token = self.condition_embedding(condition)
            hidden = self.halt_mlp(torch.cat([hidden, eps_token[:, None].expand_as(hidden)], dim=-1))
        return self.halt_head(hidden).squeeze(-1)

    def encode_hidden(self, images: torch.Tensor, condition: torch.Tensor | None = None):
        """images (B, C, H, W) in [-1, 1], condition (B,) coordinates (None or 0 = unconditioned)
        -> (register latents (B, K, token_dim), halting logits (B, K))."""
        if condition is None:
            condition = torch.zeros(images.shape[0], device=images.device)
        hidden, _ = self.encoder_states(images, condition)
        return self.to_token(hidden), self.halting_logits(hidden, condition)

    def encode_latents(self, images: torch.Tensor, condition: torch.Tensor | None = None) -> torch.Tensor:
        return self.to_token(self.encoder_states(images, condition)[0])

    @torch.no_grad()
    def encode(self, images: torch.Tensor, target_error=None, clamp: bool = False, threshold: float | None = None):
        """Without ``target_error``: codes (B, K), unconditioned (like Tokenizer1D.encode).

        With ``target_error`` (float or (B,) tensor): one encoder pass -> (codes (B, K) with 0 past each length,
        lengths (B,) int64 in 1..K). ``threshold`` overrides the config's halt_threshold / halt_thresholds."""
        if target_error is None:
            return self.quantize(self.encode_latents(images))[1]
        codes, lengths, _ = self.encode_adaptive(images, target_error, clamp, threshold)
        return codes, lengths

    @torch.no_grad()
    def encode_adaptive(self, images: torch.Tensor, target_error, clamp: bool = False, threshold: float | None = None):
        """-> (codes (B, K) zero-padded past each length, lengths (B,), z_q (B, K, token_dim) unpadded)."""
        if threshold is not None and not 0.0 < threshold < 1.0:
            raise ValueError(f"threshold={threshold!r} must be in (0, 1)")
        condition = self.condition_index(target_error, images.shape[0], clamp)
        if threshold is None:  # the table lies inside the trained range and clamps to its ends, so clamp needs nothing
            threshold = self.threshold_at(target_error, images.shape[0])
        latents, halt_logits = self.encode_hidden(images, condition)
        z_q, codes, _ = self.quantize(latents)
        lengths = lengths_from_halting(halt_logits, threshold)
        kept = torch.arange(self.num_tokens, device=codes.device)[None, :] < lengths[:, None]  # (B, K) prefix
        kept = kept.view(*kept.shape, *([1] * (codes.dim() - 2)))
        return torch.where(kept, codes, torch.zeros_like(codes)), lengths, z_q

    @torch.no_grad()
    def decode_lengths(self, codes: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """Zero-padded codes (B, K) and lengths (B,) from ``encode(..., target_error=...)`` -> images (B, C, H, W)."""
        self.check_prefix(codes)
        lengths = torch.as_tensor(lengths, device=codes.device).long()
        if lengths.shape != (codes.shape[0],) or (lengths < 1).any() or (lengths > codes.shape[1]).any():
            raise ValueError(f"lengths must be (B,) integers in 1..{codes.shape[1]}, got {lengths.tolist()[:8]}")
        return self.decode_latents(self.quantizer.codes_to_latents(codes), keep=lengths)

    # ------------------------------------------------------------------ training forward
    def forward(self, images: torch.Tensor, keep: torch.Tensor | None = None, condition: torch.Tensor | None = None):
        """-> (reconstruction from the first keep[b] tokens, codes, aux_losses, halting logits (B, K))."""
        latents, halt_logits = self.encode_hidden(images, condition)
        z_q, codes, aux = self.quantize(latents)
        return self.decode_latents(z_q, keep), codes, aux, halt_logits


@torch.no_grad()
def prefix_errors(tokenizer: Tokenizer1D, z_q: torch.Tensor, images: torch.Tensor, metric: str = "l1") -> torch.Tensor:
    """z_q (B, K, token_dim) of ``images`` (B, C, H, W) -> the error of every prefix (B, K) (column k-1: k tokens),
    K decoder passes per image."""
    B, K = z_q.shape[:2]
    return torch.stack([reconstruction_error(tokenizer.decode_latents(z_q, keep=torch.full((B,), k, device=z_q.device)),
                                             images, metric) for k in range(1, K + 1)], dim=1)


def halting_from_tokenizer(tokenizer: Tokenizer1D, eps_min: float, eps_max: float, error_metric: str = "l1",
                           halt_head_hidden: int = 128, eps_bins: int = 16, halt_threshold: float = 0.5,
                           halt_head: str = "error_model") -> HaltingTokenizer:
    """A halting tokenizer over a trained any-prefix tokenizer: its weights copied unchanged (encoder unconditioned,
    ``condition_encoder=False``), plus a fresh eps embedding and halting head to fit (``refit_halting_head``);
    ``halt_head`` is one of HALT_HEADS."""
    if type(tokenizer) is not Tokenizer1D:
        raise ValueError(f"halting_from_tokenizer needs a plain Tokenizer1D (a tokgen.lit.TokenizerModule checkpoint), "
                         f"got {type(tokenizer).__name__}")
    config = HaltingConfig.from_dict({**tokenizer.config.to_dict(), "error_metric": error_metric, "eps_min": eps_min,
                                      "eps_max": eps_max, "eps_bins": eps_bins, "halt_threshold": halt_threshold,
                                      "halt_head_hidden": halt_head_hidden, "condition_encoder": False,
                                      "halt_head": halt_head})
    halting = HaltingTokenizer(config).to(next(tokenizer.parameters()).device)
    missing, unexpected = halting.load_state_dict(tokenizer.state_dict(), strict=False)
    new = {k for k in missing if not k.startswith(("eps_embed", "halt_mlp", "halt_head"))}
    if new or unexpected:
        raise ValueError(f"tokenizer weights do not map onto the halting tokenizer (missing {sorted(new)[:4]}, "
                         f"unexpected {sorted(unexpected)[:4]})")
    return halting.eval()


# ---------------------------------------------------------------------------------------------- search baseline
@torch.no_grad()
def search_min_tokens(tokenizer: Tokenizer1D, z_q: torch.Tensor, images: torch.Tensor, target_error,
                      method: str = "linear", metric: str = "l1", errors: torch.Tensor | None = None
                      ) -> dict[str, torch.Tensor]:
    """Smallest prefix k whose reconstruction meets ``target_error``, found by decoding candidates.

    z_q: (B, K, token_dim) quantized latents of ``images`` (B, C, H, W) in [-1, 1]; target_error: a float or
    one value per image (B,). ``linear`` decodes
    k = 1, 2, ... until each image meets eps (exact minimum); ``binary`` bisects 1..K per image (the minimum
    when the error falls with k; K when even K misses). Every batched decode counts one pass for each image it
    still searches. Returns {"length": (B,), "met": (B,) bool, "error": (B,) error at that length,
    "passes": (B,) decoder passes spent per image}.

    ``errors`` (B, K), optional: the error of every prefix k = 1..K, already decoded (e.g. once for several eps
    when the codes do not depend on eps); the search then reads it instead of decoding, and counts the same passes.
    """
    if method not in SEARCH_METHODS:
        raise ValueError(f"search method {method!r} is not supported; use one of {SEARCH_METHODS}")
    B, K = z_q.shape[:2]
    device = z_q.device
    eps = torch.as_tensor(target_error, dtype=torch.float32, device=device).flatten()
    if eps.numel() not in (1, B):
        raise ValueError(f"target_error holds {eps.numel()} values for {B} images; give one value or one per image")
    eps = eps.expand(B)
    passes = torch.zeros(B, dtype=torch.long, device=device)

    def error_at(keep: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        passes[rows] += 1
        if errors is not None:
            return errors[rows, keep - 1].to(device)
        recon = tokenizer.decode_latents(z_q[rows], keep=keep)
        return reconstruction_error(recon, images[rows], metric)

    length = torch.full((B,), K, dtype=torch.long, device=device)
    error = torch.full((B,), float("inf"), device=device)
    if method == "linear":
        todo = torch.arange(B, device=device)
        for k in range(1, K + 1):
            if todo.numel() == 0:
                break
            err = error_at(torch.full((todo.numel(),), k, device=device), todo)
            done = (err <= eps[todo]) | (k == K)
            length[todo[done]], error[todo[done]] = k, err[done]
            todo = todo[~done]
    else:
        lo = torch.ones(B, dtype=torch.long, device=device)
        hi = torch.full((B,), K, dtype=torch.long, device=device)
        best_err = torch.full((B,), float("inf"), device=device)  # error at hi once hi has been decoded
        while True:
            todo = (lo < hi).nonzero().flatten()
            if todo.numel() == 0:
                break
            mid = (lo[todo] + hi[todo]) // 2
            err = error_at(mid, todo)
            ok = err <= eps[todo]
            hi[todo[ok]], best_err[todo[ok]] = mid[ok], err[ok]
            lo[todo[~ok]] = mid[~ok] + 1
        length = hi
        unknown = torch.isinf(best_err).nonzero().flatten()  # hi never decoded (= K, every probe failed)
        if unknown.numel():
            best_err[unknown] = error_at(length[unknown], unknown)
        error = best_err
    return {"length": length, "met": error <= eps, "error": error, "passes": passes}
