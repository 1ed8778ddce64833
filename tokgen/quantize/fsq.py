"""Finite Scalar Quantization (Mentzer et al., 2023, "Finite Scalar Quantization: VQ-VAE Made Simple").

Each of the ``dim = len(levels)`` channels is squashed into a bounded interval and rounded to one of
``L_i`` integer values; the token's code is the tuple of per-channel values, i.e. a point of an implicit
grid codebook with ``prod(levels)`` entries. There is no learned codebook and no auxiliary loss, so
code collapse cannot happen.

Per channel with ``L`` levels (``h = (L - 1) / 2``, ``off = 0.5`` if ``L`` is even else ``0``):

    bounded = tanh(z + atanh(off / (h + eps))) * (h + eps) - off     # z = 0 -> 0
    q       = round(bounded)                                         # integers in [-(L // 2), L - 1 - L // 2]
    digit   = q + L // 2                                             # in [0, L)
    z_q     = digit / h - 1                                          # L evenly spaced values in [-1, 1]

For odd ``L`` the interval is symmetric, ``(-h - eps, h + eps)``, reaching ``q in {-h .. h}``. For even ``L``
a symmetric interval cannot hold exactly ``L`` integers, so it is shifted by half a step, ``(-L/2 - eps,
L/2 - 1 + eps)``; the ``atanh`` shift keeps ``z = 0`` at ``bounded = 0``. The small additive margin
``eps`` (1e-3) makes the end values reachable with a non-vanishing interval of ``z`` while staying below the
half step that would admit an extra value, for any ``L``. Rounding uses a straight-through estimator
(value of ``round``, gradient of identity), so ``dz_q/dz`` is the derivative of the smooth bound.

The code is the mixed-radix number ``sum_i digit_i * prod_{j<i} L_j`` in ``[0, prod(levels))``.
Shapes: z (B, K, D) -> z_q (B, K, D), codes (B, K) int64, with D = len(levels).
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

from .base import Quantizer, straight_through

_EPS = 1e-3


def _validate_levels(levels) -> list[int]:
    if isinstance(levels, (str, bytes)) or not isinstance(levels, Sequence) or len(levels) == 0:
        raise ValueError(f"FSQ levels must be a non-empty list of ints >= 2 (e.g. [8, 8, 8, 5, 5, 5]); got {levels!r}")
    bad = [lv for lv in levels if isinstance(lv, bool) or not isinstance(lv, int) or lv < 2]
    if bad:
        raise ValueError(f"FSQ levels must all be ints >= 2; got {list(levels)!r} (bad entries: {bad!r})")
    if math.prod(levels) >= 2**63:
        raise ValueError(f"FSQ codebook prod(levels) = {math.prod(levels)} does not fit int64 codes; got levels {list(levels)!r}")
    return [int(lv) for lv in levels]


class FSQ(Quantizer):
    """Finite scalar quantizer with per-channel ``levels``; ``dim = len(levels)``,
    ``codebook_size = prod(levels)``; no auxiliary loss."""

    def __init__(self, levels: Sequence[int] = (8, 8, 8, 5, 5, 5)):
        super().__init__()
        levels = _validate_levels(levels)
        self.levels = levels
        self.dim = len(levels)
        self.codebook_size = math.prod(levels)

        basis = torch.cumprod(torch.tensor([1] + levels[:-1], dtype=torch.int64), 0)  # (D,) mixed radix
        # Integer buffers follow .to(device) but, unlike float buffers, survive .to(bfloat16); the float
        # constants are derived from them in float32 on use. Non-persistent: not in checkpoints.
        self.register_buffer("_levels", torch.tensor(levels, dtype=torch.int64), persistent=False)  # (D,)
        self.register_buffer("_basis", basis, persistent=False)  # (D,)

    def _constants(self) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """Per-channel float32 (D,) constants: h = (L-1)/2, h + eps, offset (0.5 for even L), atanh shift."""
        lv = self._levels.float()
        half = (lv - 1) / 2
        half_eps = half + _EPS
        offset = (self._levels % 2 == 0).float() * 0.5
        return half, half_eps, offset, torch.atanh(offset / half_eps)

    def bound(self, z: Tensor) -> Tensor:
        """z: (..., D) -> continuous values in the per-channel rounding interval (integer units)."""
        _, half_eps, offset, shift = self._constants()
        return torch.tanh(z + shift) * half_eps - offset

    def _digits_to_latents(self, digits: Tensor) -> Tensor:
        """digits: (..., D) float in [0, L) -> latents in [-1, 1]; shared by forward and decoding."""
        return digits / self._constants()[0] - 1

    def quantize(self, z: Tensor) -> tuple[Tensor, Tensor, dict[str, Tensor]]:
        bounded = self.bound(z)                                      # (B, K, D)
        q = straight_through(torch.round(bounded), bounded)          # (B, K, D) integer-valued
        digits = q + self._levels // 2                               # (B, K, D) in [0, L)
        z_q = self._digits_to_latents(digits)                        # (B, K, D) in [-1, 1]
        codes = (digits.detach().long() * self._basis).sum(-1)       # (B, K)
        return z_q, codes, {}

    def codes_to_latents(self, codes: Tensor) -> Tensor:
        self._check_codes(codes)
        codes = codes.long().to(self._basis.device)
        digits = (codes.unsqueeze(-1) // self._basis) % self._levels  # (B, K, D)
        return self._digits_to_latents(digits.float())

    def extra_repr(self) -> str:
        return f"levels={self.levels}, dim={self.dim}, codebook_size={self.codebook_size}"
