"""The one interface every token quantizer in tokgen follows.

A tokenizer's encoder emits continuous tokens ``z: (B, K, dim)``; a quantizer turns them into

* ``z_q: (B, K, dim)`` -- what the decoder reads (float32, gradients reach ``z`` through a
  straight-through estimator where the quantizer is not differentiable),
* ``codes`` -- what a generator models and what ``tokenize`` writes to disk: int64 ``(B, K)`` indices
  in ``[0, codebook_size)`` for discrete quantizers, float ``(B, K, dim)`` latents for the identity one,
* ``aux_losses: dict[str, Tensor]`` -- scalar terms to ADD to the training loss (empty when none).

``codes_to_latents(codes)`` returns exactly the ``z_q`` that ``forward`` produced for those codes (in
eval mode), so a generator's samples decode like the tokenizer's own tokens.

Leading dimensions are free: ``(B, K, dim)`` is the common case but any ``(..., dim)`` works, with
codes of shape ``(...)`` (discrete) or ``(..., dim)`` (identity). A group quantizer
(:class:`~tokgen.quantize.group.GroupQuantizer`) gives every token ``codes_per_token = G`` codes, shape
``(..., G)``, each in ``[0, codebook_size)``; every other quantizer has ``codes_per_token = 1``.

Quantizers compute in float32 with autocast switched off: code assignment (argmax / rounding) in bf16
would flip codes near decision boundaries, and ``codes_to_latents`` could not reproduce ``z_q``.
"""
from __future__ import annotations

import math
from abc import ABC, abstractmethod

import torch
from torch import Tensor, nn


def straight_through(value: Tensor, x: Tensor) -> Tensor:
    """Return a tensor whose value is exactly ``value`` and whose gradient w.r.t. ``x`` is identity.

    ``value.detach() + (x - x.detach())``: the second term is exactly zero in the forward pass (so the
    result equals ``value`` bit for bit, unlike ``x + (value - x).detach()``), and its derivative
    w.r.t. ``x`` is 1. No gradient reaches ``value``.
    """
    return value.detach() + (x - x.detach())


class Quantizer(nn.Module, ABC):
    """Base class: ``forward(z) -> (z_q, codes, aux_losses)`` plus decoding and statistics of codes.

    Subclasses set ``self.dim`` (channels the encoder must project to) and ``self.codebook_size``
    (``None`` for continuous tokens) in ``__init__`` and implement ``quantize`` and
    ``codes_to_latents``. ``forward`` validates the input and runs ``quantize`` in float32.
    """

    dim: int
    codebook_size: int | None  # entries of the codebook each code indexes (None: continuous)
    codes_per_token: int = 1  # codes per token: G for a group quantizer, whose codes are (..., G)

    @property
    def is_discrete(self) -> bool:
        return self.codebook_size is not None

    # ------------------------------------------------------------------ main entry points
    def forward(self, z: Tensor) -> tuple[Tensor, Tensor, dict[str, Tensor]]:
        """z: (B, K, dim) -> z_q: (B, K, dim) float32, codes: (B, K) int64 | (B, K, dim), aux_losses."""
        self._check_latents(z)
        with torch.autocast(device_type=z.device.type, enabled=False):
            return self.quantize(z.float())

    @abstractmethod
    def quantize(self, z: Tensor) -> tuple[Tensor, Tensor, dict[str, Tensor]]:
        """The method itself, on validated float32 ``z: (..., dim)``."""

    @abstractmethod
    def codes_to_latents(self, codes: Tensor) -> Tensor:
        """codes: (B, K) int64 (or (B, K, dim) for identity) -> z_q: (B, K, dim) float32."""

    @torch.no_grad()
    def stats(self, codes: Tensor) -> dict[str, float]:
        """Code statistics of a batch: ``usage`` = distinct codes / codebook size and ``perplexity`` =
        exp(entropy of the code histogram) (equals n when n codes are used equally often).
        Empty for continuous quantizers."""
        if not self.is_discrete:
            return {}
        self._check_codes(codes)
        if codes.numel() == 0:
            return {"usage": 0.0, "perplexity": 0.0}
        # torch.unique rather than bincount: binary codebooks have up to 2**62 entries.
        _, counts = torch.unique(codes.reshape(-1), return_counts=True)
        p = counts.double() / counts.sum()
        entropy = -(p * p.log()).sum().item()
        return {"usage": counts.numel() / self.codebook_size, "perplexity": math.exp(entropy)}

    # ------------------------------------------------------------------ validation helpers
    def _check_latents(self, z: Tensor) -> None:
        if not isinstance(z, Tensor):
            raise ValueError(f"{type(self).__name__} expects a tensor (B, K, {self.dim}); got {type(z).__name__}")
        if z.ndim < 1 or z.shape[-1] != self.dim:
            raise ValueError(
                f"{type(self).__name__} expects latents of shape (B, K, {self.dim}) (last dim = dim = "
                f"{self.dim}); got shape {tuple(z.shape)}"
            )
        if not z.is_floating_point():
            raise ValueError(f"{type(self).__name__} expects floating-point latents; got dtype {z.dtype}")

    def _check_codes(self, codes: Tensor) -> None:
        """Discrete codes must be integers in [0, codebook_size)."""
        if not isinstance(codes, Tensor):
            raise ValueError(f"codes must be a tensor; got {type(codes).__name__}")
        if codes.is_floating_point() or codes.is_complex() or codes.dtype == torch.bool:
            raise ValueError(f"{type(self).__name__} codes must be an integer tensor; got dtype {codes.dtype}")
        if codes.numel() == 0:
            return
        lo, hi = int(codes.min()), int(codes.max())
        if lo < 0 or hi >= self.codebook_size:
            raise ValueError(
                f"{type(self).__name__} codes out of range: got values in [{lo}, {hi}], "
                f"accepted range is [0, {self.codebook_size - 1}] (codebook_size={self.codebook_size})"
            )

    def extra_repr(self) -> str:
        return f"dim={self.dim}, codebook_size={self.codebook_size}"
