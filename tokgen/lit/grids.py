"""Validation image grids written next to the checkpoints: ``<default_root_dir>/samples/val_step{N}.png`` and
``val_latest.png`` (rank 0 only, never during the sanity check)."""
from __future__ import annotations

import os

import lightning as L
import torch
from torchvision.utils import save_image


def should_save_grid(module: L.LightningModule, grid: torch.Tensor | None) -> bool:
    return grid is not None and not module.trainer.sanity_checking and module.trainer.is_global_zero


def save_val_grid(module: L.LightningModule, images: torch.Tensor, nrow: int) -> None:
    """images: (N, C, H, W) in [0, 1], laid out row by row with ``nrow`` images per row."""
    out_dir = os.path.join(module.trainer.default_root_dir, "samples")
    os.makedirs(out_dir, exist_ok=True)
    for name in (f"val_step{module.global_step:07d}.png", "val_latest.png"):
        save_image(images.float().cpu(), os.path.join(out_dir, name), nrow=nrow, padding=1)
