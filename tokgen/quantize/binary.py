"""Binary (sign) quantization, as in lookup-free quantization (LFQ, Yu et al. 2023, "Language Model Beats
Diffusion") without its entropy penalty.

Each of the ``dim`` channels is quantized independently to ``+1`` (``z >= 0``; ``sign(0) = +1``) or ``-1``,
so the implicit codebook is the ``2**dim`` corners of the hypercube and there is nothing to learn or
to collapse. The output is straight-through, ``z_q = sg(sign(z)) + (z - sg(z))``: exactly ``+-1`` in value,
identity gradient to ``z``. No auxiliary loss.

The code of a token packs its bits into one int64, ``code = sum_i [z_i >= 0] * 2**i`` (bit ``i`` is
channel ``i``), which limits ``dim`` to 62 so codes stay non-negative and ``2**dim`` fits int64.
``codes_to_latents`` unpacks the bits back to ``+-1``.

Shapes: z (B, K, D) -> z_q (B, K, D) in {-1, +1}, codes (B, K) int64 in [0, 2**D).
"""
from __future__ import annotations

import torch
from torch import Tensor

from .base import Quantizer, straight_through

MAX_BINARY_DIM = 62


class BinaryQuantizer(Quantizer):
    """Per-channel sign quantizer; ``codebook_size = 2**dim``, ``dim <= 62``; no auxiliary loss."""

    def __init__(self, dim: int = 16):
        super().__init__()
        if isinstance(dim, bool) or not isinstance(dim, int) or not 1 <= dim <= MAX_BINARY_DIM:
            raise ValueError(
                f"BinaryQuantizer dim must be an int in [1, {MAX_BINARY_DIM}] (codes are bits packed into int64); got {dim!r}"
            )
        self.dim = dim
        self.codebook_size = 2**dim
        self.register_buffer("_bit_values", 2 ** torch.arange(dim, dtype=torch.int64), persistent=False)  # (D,)
        self.register_buffer("_bit_shifts", torch.arange(dim, dtype=torch.int64), persistent=False)  # (D,)

    def quantize(self, z: Tensor) -> tuple[Tensor, Tensor, dict[str, Tensor]]:
        bits = z.detach() >= 0                                       # (B, K, D) bool, sign(0) = +1
        signs = bits.float() * 2 - 1                                 # (B, K, D) in {-1, +1}
        z_q = straight_through(signs, z)                             # (B, K, D)
        codes = (bits.long() * self._bit_values).sum(-1)             # (B, K)
        return z_q, codes, {}

    def codes_to_latents(self, codes: Tensor) -> Tensor:
        self._check_codes(codes)
        codes = codes.long().to(self._bit_shifts.device)
        bits = (codes.unsqueeze(-1) >> self._bit_shifts) & 1         # (B, K, D)
        return bits.float() * 2 - 1
