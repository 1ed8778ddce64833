"""Validation image grids written next to the checkpoints: ``<default_root_dir>/samples/<name>_step{N}.png`` and
``<name>_latest.png`` (``name``: ``val`` for reconstructions, ``gen`` for generated samples)."""
from __future__ import annotations

import os

import lightning as L
import torch
from torchvision.utils import save_image


def save_val_grid(module: L.LightningModule, images: torch.Tensor, nrow: int, name: str = "val") -> None:
    """images: (N, C, H, W) in [0, 1], laid out row by row with ``nrow`` images per row. The caller decides when
    (:class:`tokgen.lit.base.TrainingModule` saves on rank 0 only, never during the sanity check)."""
    out_dir = os.path.join(module.trainer.default_root_dir, "samples")
    os.makedirs(out_dir, exist_ok=True)
    for file in (f"{name}_step{module.global_step:07d}.png", f"{name}_latest.png"):
        save_image(images.float().cpu(), os.path.join(out_dir, file), nrow=nrow, padding=1)
