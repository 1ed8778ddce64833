"""Per-image reconstruction metrics on [0, 1] images."""
from __future__ import annotations

import torch


def to_unit(images: torch.Tensor) -> torch.Tensor:
    """Model range [-1, 1] -> [0, 1], clamped (what is written to files and scored)."""
    return ((images.float() + 1) / 2).clamp(0, 1)


def psnr(pred: torch.Tensor, target: torch.Tensor, eps: float = 1e-10) -> torch.Tensor:
    """PSNR in dB of each image pair (B, C, H, W) on [0, 1] images over the whole frame -> (B,)."""
    mse = (pred.float() - target.float()).pow(2).flatten(1).mean(1)
    return 10 * torch.log10(1.0 / (mse + eps))
