"""1D rotary position embeddings (RoPE) in the half-split layout, with an unrotated prefix.

Channel pair ``(i, i + head_dim / 2)`` of the vector at position ``p`` is rotated by the angle
``p * base^(-2i / head_dim)``, so the dot product of a rotated query and key depends only on their distance.
The first ``num_prefix`` positions (e.g. a GPT's condition token) are not rotated.
"""
from __future__ import annotations

import torch


def rope_tables(seq_len: int, head_dim: int, base: float, num_prefix: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and signed sin tables (seq_len, head_dim) for half-split rotary embeddings.

    The first ``num_prefix`` positions get angle 0 (identity); position p >= num_prefix is rotated by
    ``(p - num_prefix) * base^(-2i/head_dim)`` for the channel pair (i, i + head_dim/2).
    """
    half = head_dim // 2
    inv_freq = base ** (-torch.arange(half, dtype=torch.float64) / half)
    pos = (torch.arange(seq_len, dtype=torch.float64) - num_prefix).clamp(min=0)
    angles = pos[:, None] * inv_freq[None]  # (seq_len, half)
    cos = torch.cat([angles.cos(), angles.cos()], dim=1)
    sin = torch.cat([-angles.sin(), angles.sin()], dim=1)  # sign folded in: see apply_rope
    return cos.float(), sin.float()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x: (..., head_dim) with cos/sin broadcastable to it.

    With x = [x1, x2]: out = [x1 cos - x2 sin, x2 cos + x1 sin]; ``roll`` swaps the halves.
    """
    return x * cos + x.roll(x.shape[-1] // 2, dims=-1) * sin
