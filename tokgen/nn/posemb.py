"""Position embeddings: fixed 2D sin-cos for patch grids and learned tables for any sequence."""
from __future__ import annotations

import math

import torch
from torch import nn


def sincos_1d(positions: torch.Tensor, dim: int) -> torch.Tensor:
    """positions: (N,) -> (N, dim) with sin on the first half and cos on the second."""
    if dim % 2 != 0:
        raise ValueError(f"sin-cos embedding needs an even dim, got {dim}")
    steps = torch.arange(dim // 2, dtype=torch.float64, device=positions.device)
    freqs = torch.exp(-math.log(10000.0) * steps / (dim // 2))
    angles = positions.double()[:, None] * freqs[None]
    return torch.cat([angles.sin(), angles.cos()], dim=1).float()


def sincos_2d(grid: int, dim: int) -> torch.Tensor:
    """(grid*grid, dim) embedding of a raster-ordered square grid: half the channels for y, half for x."""
    if dim % 4 != 0:
        raise ValueError(f"2D sin-cos embedding needs dim divisible by 4, got {dim}")
    coords = torch.arange(grid)
    y, x = torch.meshgrid(coords, coords, indexing="ij")
    return torch.cat([sincos_1d(y.flatten(), dim // 2), sincos_1d(x.flatten(), dim // 2)], dim=1)


class LearnedPosEmb(nn.Module):
    """A learned (1, N, dim) table added to a sequence, initialised with small noise."""

    def __init__(self, num_positions: int, dim: int, std: float = 0.02):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(1, num_positions, dim) * std)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.weight[:, : x.shape[1]]


class SinCos2DPosEmb(nn.Module):
    """Fixed 2D sin-cos embedding added to patch tokens (a buffer, not trained)."""

    def __init__(self, grid: int, dim: int):
        super().__init__()
        self.register_buffer("weight", sincos_2d(grid, dim)[None], persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.weight[:, : x.shape[1]].to(x.dtype)


def build_pos_emb(kind: str, grid: int, dim: int) -> nn.Module:
    if kind == "learned":
        return LearnedPosEmb(grid * grid, dim)
    if kind == "sincos":
        return SinCos2DPosEmb(grid, dim)
    raise ValueError(f"pos_emb={kind!r} is not supported; use 'learned' or 'sincos'")
