"""Group quantization: several codes per token.

A token of ``dim = groups * d`` channels is split into ``groups`` consecutive chunks of ``d`` channels and every
chunk is quantized by the same inner quantizer (e.g. FSQ with levels ``[8, 5, 5, 5]``: ``d = 4``, 1000 codes), so
the token is described by ``groups`` codes of one small codebook instead of one code of a codebook of
``codebook_size ** groups`` entries. That widens a discrete token (more channels, the same per-code vocabulary)
without a codebook a generator could not model: a generator reads the codes of a token as ``groups``
consecutive positions over a ``codebook_size``-way vocabulary.

The groups share the inner quantizer. FSQ and the binary quantizer have no parameters, so sharing is exactly G
independent quantizers; a VQ inner quantizer means one codebook shared by every group (the same code then
means the same vector in every group, which is what a shared generator vocabulary assumes). Auxiliary losses
are the inner quantizer's over all groups at once (a mean over every chunk, so their scale does not grow with
``groups``).

Shapes: z (..., groups * d) -> z_q (..., groups * d), codes (..., groups) int64 in [0, codebook_size), group
``g`` reading channels ``g * d .. (g + 1) * d - 1``. ``codes_per_token = groups``.
"""
from __future__ import annotations

from torch import Tensor

from .base import Quantizer


class GroupQuantizer(Quantizer):
    """``groups`` codes per token, each chunk of ``inner.dim`` channels quantized by the shared ``inner``
    (discrete) quantizer; ``dim = groups * inner.dim``, ``codebook_size = inner.codebook_size`` (per code)."""

    def __init__(self, inner: Quantizer, groups: int):
        super().__init__()
        if isinstance(groups, bool) or not isinstance(groups, int) or groups < 2:
            raise ValueError(f"GroupQuantizer groups must be an int >= 2 (1 group is the inner quantizer itself); "
                             f"got {groups!r}")
        if not isinstance(inner, Quantizer) or not inner.is_discrete:
            raise ValueError(f"GroupQuantizer needs a discrete inner quantizer (fsq, vq or binary); got "
                             f"{type(inner).__name__} (continuous tokens have no codes to group)")
        if inner.codes_per_token != 1:
            raise ValueError(f"GroupQuantizer cannot nest groups: the inner {type(inner).__name__} already has "
                             f"{inner.codes_per_token} codes per token")
        self.inner = inner
        self.groups = groups
        self.dim = groups * inner.dim
        self.codebook_size = inner.codebook_size
        self.codes_per_token = groups

    def quantize(self, z: Tensor) -> tuple[Tensor, Tensor, dict[str, Tensor]]:
        chunks = z.unflatten(-1, (self.groups, self.inner.dim))      # (..., G, d)
        z_q, codes, aux = self.inner.quantize(chunks)                # (..., G, d), (..., G)
        return z_q.flatten(-2), codes, aux

    def codes_to_latents(self, codes: Tensor) -> Tensor:
        if not isinstance(codes, Tensor) or codes.ndim < 1 or codes.shape[-1] != self.groups:
            shape = tuple(codes.shape) if isinstance(codes, Tensor) else type(codes).__name__
            raise ValueError(f"GroupQuantizer codes must have shape (..., groups) = (..., {self.groups}), one code "
                             f"per group; got {shape}")
        return self.inner.codes_to_latents(codes).flatten(-2)        # (..., G * d)

    def extra_repr(self) -> str:
        return f"groups={self.groups}, dim={self.dim}, codebook_size={self.codebook_size} per code"
