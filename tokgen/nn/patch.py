"""Patch embedding (image -> patch tokens) and its inverse (patch tokens -> image)."""
from __future__ import annotations

import torch
from einops import rearrange
from torch import nn


def check_patch_grid(image_size: int, patch_size: int) -> int:
    """Number of patches per side; a clear error when the image does not tile into patches."""
    if patch_size <= 0 or image_size <= 0 or image_size % patch_size != 0:
        raise ValueError(
            f"image_size={image_size} is not divisible by patch_size={patch_size}; "
            "choose a positive image size that is a multiple of the patch size"
        )
    return image_size // patch_size


class PatchEmbed(nn.Module):
    """(B, C, H, W) -> (B, (H/p)*(W/p), dim) by a strided convolution."""

    def __init__(self, image_size: int, patch_size: int, in_channels: int, dim: int):
        super().__init__()
        self.grid = check_patch_grid(image_size, patch_size)
        self.image_size, self.patch_size = image_size, patch_size
        self.proj = nn.Conv2d(in_channels, dim, kernel_size=patch_size, stride=patch_size)

    @property
    def num_patches(self) -> int:
        return self.grid * self.grid

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-2:] != (self.image_size, self.image_size):
            raise ValueError(
                f"expected images of size {self.image_size}x{self.image_size}, got {tuple(x.shape[-2:])}"
            )
        return self.proj(x).flatten(2).transpose(1, 2)


def unpatchify(x: torch.Tensor, patch_size: int, channels: int) -> torch.Tensor:
    """(B, N, p*p*C) with N = g*g patches in raster order -> (B, C, g*p, g*p)."""
    N = x.shape[1]
    g = int(round(N ** 0.5))
    if g * g != N:
        raise ValueError(f"unpatchify needs a square number of patches, got {N}")
    return rearrange(x, "b (gh gw) (ph pw c) -> b c (gh ph) (gw pw)", gh=g, ph=patch_size, pw=patch_size)
