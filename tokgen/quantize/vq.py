"""Vector quantization with a learned codebook (VQ-VAE, van den Oord et al. 2017), cosine lookup
(ViT-VQGAN, Yu et al. 2021) and dead-code restart.

Lookup. Each token ``z: (D,)`` is replaced by its nearest codebook row. With ``normalize=True`` (default)
both tokens and codebook rows are l2-normalised first, so "nearest" is highest cosine similarity and the
search is ``argmax(z @ C^T)``; without it, it is the smallest euclidean distance,
``argmax(2 z @ C^T - |C|^2)``. The score matrix is built in row chunks (about 2**24 entries at a time)
so 64k tokens against 4096 codes stay memory-friendly.

Losses (returned separately in ``aux_losses``, to be added to the training loss):

    vq_codebook = mean((q - sg(z))^2)          # moves codes towards the tokens
    vq_commit   = beta * mean((sg(q) - z)^2)   # keeps the encoder close to its codes

where ``z`` is the (normalised, if ``normalize``) token and ``q`` its code. The output is the straight-
through ``z_q = sg(q) + (z - sg(z))``: exactly ``q`` in value, identity gradient to ``z`` (so to the
encoder through the normalisation), no decoder gradient into the codebook.

Dead-code restart (training mode, ``restart_every > 0``). A buffer ``usage_ema: (N,)`` tracks an
exponential moving average (decay ``usage_decay``) of the fraction of the batch's tokens assigned to
each code; it sums to 1 and starts uniform at ``1/N``. A code is *dead* when its share falls below
``restart_threshold`` times the uniform share, ``usage_ema < restart_threshold / N``. On every
``restart_every``-th training forward call, before the lookup, each dead code is overwritten by a randomly
chosen token of the current batch plus small gaussian noise (1% of the token's rms), re-normalised when
``normalize``; its ``usage_ema`` is reset to ``1/N`` so it gets the same grace period as a fresh code.
Because the restart happens before the lookup, the batch immediately uses the new codes. (Optimizer
state of restarted rows, e.g. Adam moments, is left as it is.) With defaults (decay 0.99, threshold
1e-3) a code must be essentially unused for ~700 steps to be declared dead.

Distributed training: when ``torch.distributed`` is initialised with more than one process, the per-code
counts are ``all_reduce``-summed before the EMA update (so every rank holds the same ``usage_ema`` and
finds the same dead codes) and the replacement rows are drawn on rank 0 from its batch and broadcast, so
all ranks keep identical codebooks. Every rank must therefore call ``forward`` in training mode equally
often, as DDP already requires.

Shapes: z (B, K, D) -> z_q (B, K, D), codes (B, K) int64 in [0, codebook_size).
"""
from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn

from .base import Quantizer, straight_through

_RESTART_NOISE = 0.01


def _distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


class VectorQuantizer(Quantizer):
    """Learned codebook ``(codebook_size, dim)`` with cosine (``normalize``) or euclidean lookup,
    codebook + commitment losses and optional DDP-safe dead-code restart."""

    def __init__(
        self,
        codebook_size: int = 4096,
        dim: int = 12,
        beta: float = 0.25,
        normalize: bool = True,
        restart_every: int = 0,
        restart_threshold: float = 1e-3,
        usage_decay: float = 0.99,
    ):
        super().__init__()
        for name, value, low in (("codebook_size", codebook_size, 1), ("dim", dim, 1), ("restart_every", restart_every, 0)):
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ValueError(f"VectorQuantizer {name} must be an int >= {low}; got {value!r}")
        if not beta >= 0:
            raise ValueError(f"VectorQuantizer beta must be >= 0; got {beta!r}")
        if not restart_threshold >= 0:
            raise ValueError(f"VectorQuantizer restart_threshold must be >= 0; got {restart_threshold!r}")
        if not 0 <= usage_decay < 1:
            raise ValueError(f"VectorQuantizer usage_decay must be in [0, 1); got {usage_decay!r}")
        self.dim = dim
        self.codebook_size = codebook_size
        self.beta = float(beta)
        self.normalize = bool(normalize)
        self.restart_every = restart_every
        self.restart_threshold = float(restart_threshold)
        self.usage_decay = float(usage_decay)

        self.codebook = nn.Parameter(F.normalize(torch.randn(codebook_size, dim), dim=-1))  # (N, D)
        self.register_buffer("usage_ema", torch.full((codebook_size,), 1.0 / codebook_size))  # (N,)
        self.register_buffer("train_calls", torch.zeros((), dtype=torch.int64))  # training forwards seen
        self.last_restart_count = 0  # codes replaced at the most recent restart (for logging)

    # ------------------------------------------------------------------ lookup
    def get_codebook(self) -> Tensor:
        """(N, D) float32 codebook as used in lookup (l2-normalised when ``normalize``)."""
        codebook = self.codebook.float()
        return F.normalize(codebook, dim=-1) if self.normalize else codebook

    @torch.no_grad()
    def nearest(self, flat: Tensor, codebook: Tensor) -> Tensor:
        """flat: (M, D), codebook: (N, D) -> (M,) int64 index of the best code for each row."""
        bias = None if self.normalize else codebook.pow(2).sum(-1)  # (N,) |c|^2
        chunk = max(1, 2**24 // codebook.shape[0])
        out = []
        for rows in flat.split(chunk):
            scores = rows @ codebook.T                              # (m, N)
            if bias is not None:
                scores = 2 * scores - bias                          # -|z - c|^2 + |z|^2
            out.append(scores.argmax(-1))
        return torch.cat(out) if out else flat.new_zeros(0, dtype=torch.int64)

    def quantize(self, z: Tensor) -> tuple[Tensor, Tensor, dict[str, Tensor]]:
        lead = z.shape[:-1]
        flat = z.reshape(-1, self.dim)                              # (M, D), M = B * K
        if self.normalize:
            flat = F.normalize(flat, dim=-1)

        if self.training and self.restart_every > 0:
            self.train_calls += 1
            if int(self.train_calls) % self.restart_every == 0:
                self._restart_dead_codes(flat.detach())

        codebook = self.get_codebook()                              # (N, D)
        idx = self.nearest(flat.detach(), codebook.detach())       # (M,)
        q = F.embedding(idx, codebook)                              # (M, D), grad -> codebook
        aux = {
            "vq_codebook": F.mse_loss(q, flat.detach()),
            "vq_commit": self.beta * F.mse_loss(flat, q.detach()),
        }
        z_q = straight_through(q, flat)                             # (M, D), value q, grad -> z

        if self.training:
            self._update_usage(idx)
        return z_q.reshape(*lead, self.dim), idx.reshape(lead), aux

    def codes_to_latents(self, codes: Tensor) -> Tensor:
        self._check_codes(codes)
        codebook = self.get_codebook()
        return F.embedding(codes.long().to(codebook.device), codebook)  # (B, K, D)

    # ------------------------------------------------------------------ dead-code restart
    @torch.no_grad()
    def _update_usage(self, idx: Tensor) -> None:
        counts = torch.bincount(idx, minlength=self.codebook_size).float()  # (N,)
        if self.restart_every > 0 and _distributed():
            dist.all_reduce(counts)                                 # same usage on every rank
        share = counts / counts.sum().clamp_min(1.0)
        self.usage_ema.mul_(self.usage_decay).add_(share, alpha=1 - self.usage_decay)

    @torch.no_grad()
    def _restart_dead_codes(self, flat: Tensor) -> int:
        """Replace codes with ``usage_ema < restart_threshold / N`` by batch tokens; returns how many."""
        n_codes = self.codebook_size
        dead = (self.usage_ema < self.restart_threshold / n_codes).nonzero().squeeze(1)  # (n,) same on all ranks
        n_dead = dead.numel()
        self.last_restart_count = n_dead
        if n_dead == 0:
            return 0
        distributed = _distributed()
        if not distributed or dist.get_rank() == 0:
            if flat.shape[0] > 0:
                pick = torch.randint(0, flat.shape[0], (n_dead,), device=flat.device)
                new = flat[pick]                                    # (n, D)
            else:  # empty batch: fall back to random directions
                new = torch.randn(n_dead, self.dim, device=flat.device)
            rms = new.pow(2).mean(-1, keepdim=True).sqrt()
            new = new + _RESTART_NOISE * rms * torch.randn_like(new)
            if self.normalize:
                new = F.normalize(new, dim=-1)
        else:
            new = torch.empty(n_dead, self.dim, device=flat.device)
        if distributed:
            dist.broadcast(new, src=0)
        self.codebook[dead] = new.to(self.codebook.dtype)
        self.usage_ema[dead] = 1.0 / n_codes
        return n_dead

    def extra_repr(self) -> str:
        return (
            f"codebook_size={self.codebook_size}, dim={self.dim}, beta={self.beta}, normalize={self.normalize}, "
            f"restart_every={self.restart_every}, restart_threshold={self.restart_threshold}, "
            f"usage_decay={self.usage_decay}"
        )
