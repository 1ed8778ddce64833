"""Validation image grids written next to the checkpoints: ``<default_root_dir>/samples/<name>_step{N}.png`` and
``<name>_latest.png`` (``name``: ``val`` for reconstructions, ``gen`` for generated samples), tiled with the same
look as every other tokgen picture (:func:`tokgen.images.tile`: 8-bit, 1 px white gaps)."""
from __future__ import annotations

import os

import lightning as L
import torch

from ..images import save_png, tile, to_uint8


def save_val_grid(module: L.LightningModule, images: torch.Tensor, nrow: int, name: str = "val") -> None:
    """images: (N, C, H, W) in [0, 1], laid out row by row with ``nrow`` images per row. The caller decides when
    (:class:`tokgen.lit.base.TrainingModule` saves on rank 0 only, never during the sanity check)."""
    out_dir = os.path.join(module.trainer.default_root_dir, "samples")
    os.makedirs(out_dir, exist_ok=True)
    grid = tile(to_uint8(images.detach().cpu(), value_range=(0, 1)), nrow)
    for file in (f"{name}_step{module.global_step:07d}.png", f"{name}_latest.png"):
        save_png(grid, os.path.join(out_dir, file))
