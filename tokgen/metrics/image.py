"""Per-image reconstruction metrics on [0, 1] images, and the 8-bit conversion every metric sees."""
from __future__ import annotations

import torch
from torchmetrics.functional.image import structural_similarity_index_measure

from ..images import to_uint8, to_unit  # noqa: F401  (the conversion every metric sees lives with the other edges)


def psnr(pred: torch.Tensor, target: torch.Tensor, eps: float = 1e-10) -> torch.Tensor:
    """PSNR in dB of each image pair (B, C, H, W) on [0, 1] images over the whole frame -> (B,)."""
    mse = (pred.float() - target.float()).pow(2).flatten(1).mean(1)
    return 10 * torch.log10(1.0 / (mse + eps))


def ssim(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """SSIM of each image pair (B, C, H, W) on [0, 1] images -> (B,).

    torchmetrics' SSIM: 11x11 Gaussian window, sigma 1.5, k1 = 0.01, k2 = 0.03, data range 1, averaged over
    channels and pixels.
    """
    return structural_similarity_index_measure(pred.float(), target.float(), data_range=1.0, reduction="none")
