"""Identity "quantizer" for continuous tokens (e.g. FlexTok-style or diffusion-decoded latents that are
not discretised, or a generator regressing continuous tokens).

The tokens pass through unchanged (``bound="none"``) or squashed into ``(-1, 1)`` by ``tanh``
(``bound="tanh"``), which keeps the token scale fixed for a downstream generator. There is no codebook
(``codebook_size = None``), no auxiliary loss, and the "codes" are the bounded latents themselves
(detached), so ``codes_to_latents(codes)`` returns them as they are.

Shapes: z (B, K, D) -> z_q (B, K, D), codes (B, K, D) float32.
"""
from __future__ import annotations

import torch
from torch import Tensor

from .base import Quantizer

BOUNDS = ("none", "tanh")


class IdentityQuantizer(Quantizer):
    """Continuous tokens, optionally bounded by ``tanh``; ``codebook_size = None``."""

    def __init__(self, dim: int = 12, bound: str = "none"):
        super().__init__()
        if isinstance(dim, bool) or not isinstance(dim, int) or dim < 1:
            raise ValueError(f"IdentityQuantizer dim must be an int >= 1; got {dim!r}")
        if bound not in BOUNDS:
            raise ValueError(f"IdentityQuantizer bound must be one of {list(BOUNDS)}; got {bound!r}")
        self.dim = dim
        self.codebook_size = None
        self.bound = bound

    def quantize(self, z: Tensor) -> tuple[Tensor, Tensor, dict[str, Tensor]]:
        z_q = torch.tanh(z) if self.bound == "tanh" else z           # (B, K, D)
        return z_q, z_q.detach(), {}

    def codes_to_latents(self, codes: Tensor) -> Tensor:
        self._check_latents(codes)
        return codes.float()                                         # (B, K, D)

    def extra_repr(self) -> str:
        return f"dim={self.dim}, bound={self.bound!r}"
