"""Token quantizers behind one interface: ``quantizer(z) -> (z_q, codes, aux_losses)``.

* ``FSQ``               finite scalar quantization, implicit grid codebook ``prod(levels)``
* ``VectorQuantizer``   learned codebook, cosine lookup, commitment loss, dead-code restart
* ``BinaryQuantizer``   per-channel sign, codes are packed bits (``2**dim`` codes)
* ``IdentityQuantizer`` continuous tokens (optionally tanh-bounded)
* ``GroupQuantizer``    ``groups`` codes per token: the token's channels split into chunks, each quantized by
  the same discrete quantizer (``groups: G`` in a recipe; codes ``(..., G)``)

Build one from a recipe with ``QuantizerConfig(kind=...).build()`` or ``build_quantizer(kind, ...)``;
``QuantizerConfig.token_dim`` is the channel count the encoder must project its tokens to (``groups`` times the
inner quantizer's dim).
"""
from __future__ import annotations

from dataclasses import dataclass

from .base import Quantizer, straight_through
from .binary import BinaryQuantizer
from .fsq import FSQ
from .group import GroupQuantizer
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
    "GroupQuantizer",
    "QuantizerConfig",
    "build_quantizer",
    "straight_through",
    "KINDS",
]


def _check_kind(kind: str) -> None:
    if kind not in KINDS:
        raise ValueError(f"unknown quantizer kind {kind!r}; accepted kinds: {list(KINDS)}")


def _check_groups(kind: str, groups: int) -> None:
    if isinstance(groups, bool) or not isinstance(groups, int) or groups < 1:
        raise ValueError(f"quantizer groups must be an int >= 1 (codes per token); got {groups!r}")
    if groups > 1 and kind == "identity":
        raise ValueError(f"quantizer groups={groups} needs a discrete kind (fsq, vq or binary); kind='identity' "
                         f"has no codes to group (use groups: 1)")


def _token_dim(kind: str, dim: int | None, levels: list[int] | None, groups: int = 1) -> int:
    """Channel dim of the tokens for this kind: ``groups`` times the dim of one group (validating fsq's dim
    against its levels)."""
    _check_kind(kind)
    _check_groups(kind, groups)
    return groups * _group_dim(kind, dim, levels)


def _group_dim(kind: str, dim: int | None, levels: list[int] | None) -> int:
    """Channel dim of one group (of the whole token without groups)."""
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
    groups: int = 1,
) -> Quantizer:
    """Build a quantizer by name. ``kind`` in {"fsq", "vq", "binary", "identity"}; ``dim`` defaults to
    len(levels) for fsq (where a different explicit dim is an error), 12 for vq and identity, 16 for
    binary. Arguments that do not apply to ``kind`` are ignored, except ``levels`` (fsq only).
    ``groups > 1`` (discrete kinds) wraps that quantizer in a :class:`GroupQuantizer`: tokens of
    ``groups * dim`` channels, ``groups`` codes each."""
    _check_groups(kind, groups)
    if groups > 1:
        return GroupQuantizer(build_quantizer(kind, dim, levels, codebook_size, beta, normalize, restart_every,
                                              bound, restart_threshold), groups)
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
    """Recipe-friendly quantizer settings (plain field types for jsonargparse / YAML). With ``groups > 1``,
    ``dim`` / ``levels`` describe one group and the token has ``groups * dim`` channels."""

    kind: str = "fsq"
    dim: int | None = None
    levels: list[int] | None = None
    codebook_size: int = 4096
    beta: float = 0.25
    normalize: bool = True
    restart_every: int = 0
    restart_threshold: float = 1e-3
    bound: str = "none"
    groups: int = 1  # codes per token: the token is groups chunks of dim channels, each quantized alike

    @property
    def token_dim(self) -> int:
        """The channel dim the encoder must project its tokens to (``groups`` times ``dim``)."""
        return _token_dim(self.kind, self.dim, self.levels, self.groups)

    def build(self) -> Quantizer:
        return build_quantizer(
            self.kind, dim=self.dim, levels=self.levels, codebook_size=self.codebook_size, beta=self.beta,
            normalize=self.normalize, restart_every=self.restart_every, bound=self.bound,
            restart_threshold=self.restart_threshold, groups=self.groups,
        )
