"""Token quantizers behind one interface: ``quantizer(z) -> (z_q, codes, aux_losses)``.

* ``FSQ``               finite scalar quantization, implicit grid codebook ``prod(levels)``
* ``VectorQuantizer``   learned codebook, cosine lookup, commitment loss, dead-code restart
* ``BinaryQuantizer``   per-channel sign, codes are packed bits (``2**dim`` codes)
* ``IdentityQuantizer`` continuous tokens (optionally tanh-bounded)

Build one from a recipe with ``QuantizerConfig(kind=...).build()`` or ``build_quantizer(kind, ...)``;
``QuantizerConfig.token_dim`` is the channel count the encoder must project its tokens to.
"""
from __future__ import annotations

from dataclasses import dataclass

from .base import Quantizer, straight_through
from .binary import BinaryQuantizer
from .fsq import FSQ
from .identity import IdentityQuantizer
from .vq import VectorQuantizer

KINDS = ("fsq", "vq", "binary", "identity")
DEFAULT_FSQ_LEVELS = [8, 8, 8, 5, 5, 5]
DEFAULT_DIMS = {"vq": 12, "binary": 16, "identity": 12}

__all__ = [
    "Quantizer",
    "FSQ",
    "VectorQuantizer",
    "BinaryQuantizer",
    "IdentityQuantizer",
    "QuantizerConfig",
    "build_quantizer",
    "straight_through",
    "KINDS",
]


def _check_kind(kind: str) -> None:
    if kind not in KINDS:
        raise ValueError(f"unknown quantizer kind {kind!r}; accepted kinds: {list(KINDS)}")


def _token_dim(kind: str, dim: int | None, levels: list[int] | None) -> int:
    """Channel dim of the tokens for this kind (validating fsq's dim against its levels)."""
    _check_kind(kind)
    if kind == "fsq":
        n = len(DEFAULT_FSQ_LEVELS if levels is None else levels)
        if dim is not None and dim != n:
            raise ValueError(
                f"fsq dim must equal len(levels) = {n} (levels={levels if levels is not None else DEFAULT_FSQ_LEVELS}); "
                f"got dim={dim}. Leave dim unset for fsq."
            )
        return n
    if levels is not None:
        raise ValueError(f"levels={levels!r} only applies to kind='fsq'; got kind={kind!r} (set dim instead)")
    return DEFAULT_DIMS[kind] if dim is None else dim


def build_quantizer(
    kind: str,
    dim: int | None = None,
    levels: list[int] | None = None,
    codebook_size: int = 4096,
    beta: float = 0.25,
    normalize: bool = True,
    restart_every: int = 0,
    bound: str = "none",
    restart_threshold: float = 1e-3,
) -> Quantizer:
    """Build a quantizer by name. ``kind`` in {"fsq", "vq", "binary", "identity"}; ``dim`` defaults to
    len(levels) for fsq (where a different explicit dim is an error), 12 for vq and identity, 16 for
    binary. Arguments that do not apply to ``kind`` are ignored, except ``levels`` (fsq only)."""
    d = _token_dim(kind, dim, levels)
    if kind == "fsq":
        return FSQ(levels=list(DEFAULT_FSQ_LEVELS if levels is None else levels))
    if kind == "vq":
        return VectorQuantizer(
            codebook_size=codebook_size, dim=d, beta=beta, normalize=normalize,
            restart_every=restart_every, restart_threshold=restart_threshold,
        )
    if kind == "binary":
        return BinaryQuantizer(dim=d)
    return IdentityQuantizer(dim=d, bound=bound)


@dataclass
class QuantizerConfig:
    """Recipe-friendly quantizer settings (plain field types for jsonargparse / YAML)."""

    kind: str = "fsq"
    dim: int | None = None
    levels: list[int] | None = None
    codebook_size: int = 4096
    beta: float = 0.25
    normalize: bool = True
    restart_every: int = 0
    restart_threshold: float = 1e-3
    bound: str = "none"

    @property
    def token_dim(self) -> int:
        """The channel dim the encoder must project its tokens to."""
        return _token_dim(self.kind, self.dim, self.levels)

    def build(self) -> Quantizer:
        return build_quantizer(
            self.kind, dim=self.dim, levels=self.levels, codebook_size=self.codebook_size, beta=self.beta,
            normalize=self.normalize, restart_every=self.restart_every, bound=self.bound,
            restart_threshold=self.restart_threshold,
        )
