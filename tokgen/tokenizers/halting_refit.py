"""Refit a trained halting tokenizer's halting head to the search minimum, on its frozen encoder.

Why. Two-phase training (``tokgen.lit.halting``) labels the head with a random budget T and the error eps0 that
T tokens achieved *unconditioned*, while the encoder keeps moving; the lengths it learns follow eps and the
image's complexity, but their spread around the smallest sufficient prefix is wide, so meeting eps on most images
costs many extra tokens. Once the tokenizer is trained, the exact label is cheap to get: for an image and a target
eps, encode conditioned on eps (as inference does) and search the smallest prefix k* whose reconstruction meets
eps (``search_min_tokens``). The head is then refit with BCE so positions >= k* halt, on cached encoder states.

What changes. Only the halting head (``halt_mlp``, ``halt_head``). The encoder, the eps embedding, the quantizer
and the decoder are untouched, so the codes of every image at every eps stay bit-identical; only the lengths move.
Inference is still one encoder pass and no decoder pass; the decoder passes are spent once, here.

Cost. One conditioned encoder pass and ~log2(K) + 1 decoder passes (binary search) per (image, eps) example,
then a few thousand steps of a small MLP on cached (B, K, W) states. The decoder passes dominate and are spent
once, here; the README's halting sections hold the measured times.

On a plain nested tokenizer (``halting_from_tokenizer``) the same refit is how halting is added: the encoder does
not read eps there, so the head is the only part that learns.

Error-model head (``halt_head="error_model"``, codes independent of eps). The head does not learn one eps at a time:
it models, per image, the error of every prefix (a logistic distribution of log error per register, fit by its
negative log-likelihood). Labels are the errors of ``prefixes`` random prefix lengths per image, one decoder pass
each, and every eps is read off the same model: the halting probability at eps is P(error <= eps), so lengths can
never fall as eps falls, and one threshold serves the whole range.
"""
from __future__ import annotations

import copy
import math
import os

import torch
import torch.nn.functional as F
from tqdm import tqdm

from ..checkpoint import load_checkpoint
from .halting import (SEARCH_METHODS, HaltingTokenizer, halting_bce, halting_targets, lengths_from_halting,
                      reconstruction_error, search_min_tokens)


@torch.no_grad()
def search_labels(tokenizer: HaltingTokenizer, images: torch.Tensor, target_errors: torch.Tensor,
                  method: str = "binary") -> dict[str, torch.Tensor]:
    """images (B, C, H, W) in [-1, 1], target_errors (B,) -> what the head reads under that conditioning,
    {"hidden": (B, K, W), "eps_token": (B, W)}, and the search minimum {"kstar": (B,)} (K when even K misses)."""
    condition = tokenizer.condition_index(target_errors, images.shape[0])
    hidden, _ = tokenizer.encoder_states(images, condition)
    z_q = tokenizer.quantize(tokenizer.to_token(hidden))[0]
    found = search_min_tokens(tokenizer, z_q, images, target_errors, method, tokenizer.config.error_metric)
    return {"hidden": hidden, "condition": condition, "kstar": found["length"]}


@torch.no_grad()
def error_labels(tokenizer: HaltingTokenizer, images: torch.Tensor, prefixes: int, generator: torch.Generator
                 ) -> dict[str, torch.Tensor]:
    """images (B, C, H, W) in [-1, 1] -> the register states the error model reads {"hidden": (B, K, W)} and the
    log error of ``prefixes`` distinct random prefix lengths in 1..K-1 per image {"k": (B, P), "log_error": (B, P)}
    (all K-1 when ``prefixes`` >= K-1), one decoder pass per prefix."""
    B, K = images.shape[0], tokenizer.num_tokens
    hidden, _ = tokenizer.encoder_states(images)  # the encoder does not read eps in this mode
    z_q = tokenizer.quantize(tokenizer.to_token(hidden))[0]
    P = min(prefixes, K - 1)
    k = torch.rand(B, K - 1, generator=generator).argsort(dim=1)[:, :P] + 1  # (B, P) distinct lengths
    k = k.to(images.device)
    log_error = torch.stack([reconstruction_error(tokenizer.decode_latents(z_q, keep=k[:, j]), images,
                                                  tokenizer.config.error_metric) for j in range(P)], dim=1)
    return {"hidden": hidden, "k": k, "log_error": log_error.clamp_min(1e-8).log()}


def error_model_nll(tokenizer: HaltingTokenizer, hidden: torch.Tensor, k: torch.Tensor,
                    log_error: torch.Tensor) -> torch.Tensor:
    """Mean negative log-likelihood of observed log errors (B, P) at prefix lengths k (B, P) under the error
    model's logistic distributions read from register states hidden (B, K, W)."""
    loc, scale = tokenizer.error_model(hidden)
    loc, scale = loc.gather(1, k), scale.gather(1, k)
    z = (log_error - loc) / scale
    return (scale.log() + z + 2 * F.softplus(-z)).mean()


def refit_halting_head(
    tokenizer: HaltingTokenizer,
    data,
    eps_range: tuple[float, float] | None = None,
    reps: int = 2,
    steps: int = 3000,
    lr: float = 1e-3,
    batch_size: int = 256,
    search: str = "binary",
    holdout: float = 0.1,
    seed: int = 0,
    progress: bool = True,
    prefixes: int = 8,
) -> dict:
    """Refit ``tokenizer``'s halting head in place (see the module docstring); returns a JSON-ready summary.

    data: a ``tokgen.metrics.datasets.EvalData`` (training images, not the split you will score).
    Classifier head: every image is used ``reps`` times, each with a target error drawn log-uniformly from
    ``eps_range`` (default: the trained range) and labelled with its search minimum. Error-model head: every image
    is labelled with the errors of ``prefixes`` random prefix lengths (``reps``, ``eps_range`` and ``search`` unused).
    A ``holdout`` fraction of the examples is kept out of the fit and scored before and after (classifier: head
    BCE against the search labels and the fraction of examples whose halting length at the config's threshold is
    exactly k*; error model: the negative log-likelihood of the held-out errors), so the summary shows whether the
    refit helped.
    """
    c = tokenizer.config
    lo, hi = eps_range if eps_range is not None else (c.eps_min, c.eps_max)
    if not c.eps_min <= lo < hi <= c.eps_max:
        raise ValueError(f"eps_range=({lo:g}, {hi:g}) must be an increasing pair inside the trained range "
                         f"[{c.eps_min:g}, {c.eps_max:g}]")
    if search not in SEARCH_METHODS:
        raise ValueError(f"search method {search!r} is not supported; use one of {SEARCH_METHODS}")
    for name, value, minimum in (("reps", reps, 1), ("steps", steps, 1), ("batch_size", batch_size, 1),
                                 ("prefixes", prefixes, 1)):
        if not isinstance(value, int) or value < minimum:
            raise ValueError(f"{name}={value!r} must be an integer >= {minimum}")
    if not 0.0 < holdout < 1.0:
        raise ValueError(f"holdout={holdout!r} must be in (0, 1)")
    device = next(tokenizer.parameters()).device
    gen = torch.Generator().manual_seed(seed)
    tokenizer.eval()
    K = tokenizer.num_tokens
    error_model = c.halt_head == "error_model"

    # 1) labels, with the register states the head reads (computed without grad: only the head's parameters learn)
    cache: dict[str, list] = {}
    for batch in tqdm(data.loader(64, 0), desc="error labels" if error_model else "search labels", unit="batch",
                      disable=not progress):
        x = batch["image"].to(device)
        if error_model:
            found = [error_labels(tokenizer, x, prefixes, gen)]
        else:
            found = []
            for _ in range(reps):
                eps = torch.exp(torch.empty(x.shape[0]).uniform_(math.log(lo), math.log(hi), generator=gen))
                found.append(search_labels(tokenizer, x, eps.to(device), search))
        for f in found:
            for key, value in f.items():
                cache.setdefault(key, []).append(value.cpu())
    cache = {key: torch.cat(v) for key, v in cache.items()}
    n = cache["hidden"].shape[0]
    order = torch.randperm(n, generator=gen)
    n_hold = max(1, int(round(n * holdout)))
    if n - n_hold < 1:
        raise ValueError(f"{n} examples are too few to hold out {holdout:.0%}; give more images or reps")
    hold, fit = order[:n_hold], order[n_hold:]

    def loss_on(rows: torch.Tensor) -> torch.Tensor:
        hidden = cache["hidden"][rows].to(device)
        if error_model:
            return error_model_nll(tokenizer, hidden, cache["k"][rows].to(device), cache["log_error"][rows].to(device))
        logits = tokenizer.halting_logits(hidden, cache["condition"][rows].to(device))
        return halting_bce(logits, *halting_targets(cache["kstar"][rows].to(device), K))

    params = [p for m in (tokenizer.halt_mlp, tokenizer.halt_head) if m is not None for p in m.parameters()]
    before = _head_scores(tokenizer, cache, hold, device, loss_on)

    # 2) fit the head alone on the cached states
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=1e-4)
    losses = []
    for step in tqdm(range(steps), desc="refit halting head", unit="step", disable=not progress):
        for group in opt.param_groups:  # cosine decay to 0
            group["lr"] = lr * 0.5 * (1 + math.cos(math.pi * step / steps))
        loss = loss_on(fit[torch.randint(0, fit.numel(), (min(batch_size, fit.numel()),), generator=gen)])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    after = _head_scores(tokenizer, cache, hold, device, loss_on)
    summary = {
        "head": c.halt_head, "examples": n, "holdout_examples": n_hold, "steps": steps, "lr": lr,
        "batch_size": batch_size, "seed": seed,
        "fit_loss_first_100": sum(losses[:100]) / len(losses[:100]), "fit_loss_last_100": sum(losses[-100:]) / len(losses[-100:]),
        "holdout_before": before, "holdout_after": after,
    }
    if error_model:
        summary.update(prefixes=min(prefixes, K - 1), mean_log_error=cache["log_error"].mean().item())
    else:
        summary.update(eps_range=[lo, hi], reps=reps, search=search, mean_kstar=cache["kstar"].float().mean().item())
    return summary


@torch.no_grad()
def _head_scores(tokenizer: HaltingTokenizer, cache: dict, rows: torch.Tensor, device, loss_on) -> dict:
    """The head's loss on ``rows`` of the cache and, for the classifier, how its lengths compare with k*."""
    loss = sum(loss_on(r) * r.numel() for r in rows.split(512)) / rows.numel()
    if tokenizer.config.halt_head == "error_model":
        return {"nll": loss.item()}
    logits = torch.cat([tokenizer.halting_logits(cache["hidden"][r].to(device), cache["condition"][r].to(device)).cpu()
                        for r in rows.split(512)])
    kstar = cache["kstar"][rows]
    lengths = lengths_from_halting(logits, tokenizer.config.halt_threshold)
    return {"bce": loss.item(), "exact": (lengths == kstar).float().mean().item(),
            "mean_abs_diff": (lengths - kstar).abs().float().mean().item(),
            "mean_length": lengths.float().mean().item(), "mean_kstar": kstar.float().mean().item()}


def refit_checkpoint(ckpt_path: str, out_path: str, tokenizer: HaltingTokenizer, summary: dict) -> None:
    """Write ``ckpt_path`` again to ``out_path`` with the refit head in the weights ``from_checkpoint`` loads
    (the EMA copy when there is one) and the refit summary under ``checkpoint["tokgen"]["halting_refit"]``.

    When ``ckpt_path`` holds a plain any-prefix tokenizer (kind ``tokenizer1d``; ``tokenizer`` then comes from
    ``halting_from_tokenizer``), the new file is a halting-tokenizer checkpoint with the whole tokenizer's weights
    (the source's, unchanged, plus the head) and its halting config; it is for loading, not for resuming training.
    The input checkpoint is never modified; ``out_path`` must differ from it."""
    if os.path.abspath(out_path) == os.path.abspath(ckpt_path):
        raise ValueError(f"--out {out_path} is the input checkpoint; write the refit head to a new file")
    ckpt = load_checkpoint(ckpt_path)
    meta = copy.deepcopy(ckpt.get("tokgen") or {})
    if meta.get("kind") == "tokenizer1d":
        state = {f"tokenizer.{k}": v.detach().cpu() for k, v in tokenizer.state_dict().items()}
        ckpt = {"state_dict": state, "global_step": ckpt.get("global_step", 0)}
        meta.update(kind="halting_tokenizer", tokenizer_config=tokenizer.config.to_dict(), halting_from=os.path.abspath(ckpt_path))
        prefix = "tokenizer."
    else:
        state = ckpt["state_dict"]
        prefix = "ema_tokenizer." if any(k.startswith("ema_tokenizer.") for k in state) else "tokenizer."
        head = {k: v for k, v in tokenizer.state_dict().items() if k.startswith(("halt_mlp.", "halt_head."))}
        for k, v in head.items():
            if prefix + k not in state:
                raise ValueError(f"checkpoint {ckpt_path} has no {prefix + k}; is it the checkpoint this head was refit from?")
            state[prefix + k] = v.detach().to(state[prefix + k].dtype).cpu()
    ckpt["tokgen"] = meta
    meta["halting_refit"] = {**summary, "from": os.path.abspath(ckpt_path), "weights": prefix.rstrip(".")}
    meta["tokenizer_config"]["halt_threshold"] = tokenizer.config.halt_threshold  # calibrated or not
    meta["tokenizer_config"]["halt_thresholds"] = tokenizer.config.halt_thresholds
    os.makedirs(os.path.dirname(os.path.abspath(out_path)), exist_ok=True)
    tmp = out_path + ".tmp"
    torch.save(ckpt, tmp)
    os.replace(tmp, out_path)
