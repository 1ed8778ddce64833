"""Images at the edges of tokgen (files, metrics, grids): value ranges, 8-bit conversion and grid pictures.

Models work on images in [-1, 1]; what is written to a file or scored is 8-bit: clamped to the range, scaled to
0..255 and rounded to the nearest level (not truncated), i.e. exactly what a PNG of the image holds. Every
command that writes a picture of several images tiles them here, with one look: 1 px white gaps, grey images
stay grey.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

VALUE_RANGES = ((-1, 1), (0, 1))


def to_unit(images: torch.Tensor) -> torch.Tensor:
    """Model range [-1, 1] -> [0, 1], clamped (what is written to files and scored)."""
    return ((images.float() + 1) / 2).clamp(0, 1)


def to_uint8(images: torch.Tensor, value_range: tuple[int, int] = (-1, 1)) -> torch.Tensor:
    """Images in ``value_range`` ((-1, 1), the models' range, or (0, 1)) -> uint8 0..255, clamped to the range and
    rounded to the nearest level, as a PNG stores them. Same shape and device."""
    if tuple(value_range) not in VALUE_RANGES:
        raise ValueError(f"value_range={value_range!r} is not accepted; use one of {VALUE_RANGES}")
    unit = to_unit(images) if tuple(value_range) == (-1, 1) else images.float().clamp(0, 1)
    return (unit * 255).round_().to(torch.uint8)


def tile(images: torch.Tensor, nrow: int) -> torch.Tensor:
    """uint8 images (N, C, H, W) -> one uint8 picture (C, H', W'): ``nrow`` images per row, 1 px white gaps."""
    from torchvision.utils import make_grid

    if images.dtype != torch.uint8:
        raise ValueError(f"tile takes uint8 images (use to_uint8 first), got {images.dtype}")
    return make_grid(images, nrow=nrow, padding=1, pad_value=255)


def save_png(image: torch.Tensor, path: str) -> None:
    """uint8 (C, H, W) with C = 1 or 3 -> a PNG (grey when C = 1) at ``path``."""
    from PIL import Image

    array = image.permute(1, 2, 0).cpu().numpy()
    Image.fromarray(array[..., 0] if array.shape[2] == 1 else array).save(path)


def save_labelled_grid(rows: list[tuple[str, torch.Tensor]], path: str, min_tile: int = 64,
                       captions: list[list[str] | None] | None = None) -> None:
    """Rows of images (g, C, H, W) in [0, 1] -> one PNG with each row's label in a left margin (small images
    upscaled, nearest, to at least ``min_tile`` pixels); ``captions`` (one list per row, or None) writes a short
    text in each tile's corner, e.g. the tokens it kept."""
    from PIL import Image, ImageDraw

    g = max(r.shape[0] for _, r in rows)
    h, w = rows[0][1].shape[-2:]
    scale = max(1, math.ceil(min_tile / h))
    th, tw, pad, margin = h * scale, w * scale, 2, 48
    canvas = Image.new("RGB", (margin + g * (tw + pad), len(rows) * (th + pad)), "white")
    draw = ImageDraw.Draw(canvas)
    for i, (label, images) in enumerate(rows):
        y = i * (th + pad)
        draw.text((4, y + th // 2 - 6), label, fill="black")
        tiles = rgb(images.float())
        tiles = F.interpolate(tiles, scale_factor=scale, mode="nearest") if scale > 1 else tiles
        for j, tile_ in enumerate(to_uint8(tiles, (0, 1))):
            canvas.paste(Image.fromarray(tile_.permute(1, 2, 0).numpy()), (margin + j * (tw + pad), y))
            if captions is not None and captions[i] is not None:
                draw.text((margin + j * (tw + pad) + 2, y + th - 12), captions[i][j], fill="white",
                          stroke_width=1, stroke_fill="black")
    canvas.save(path)


def rgb(images: torch.Tensor) -> torch.Tensor:
    """(B, 1 or 3, H, W) -> (B, 3, H, W): grey repeated to three channels (a view)."""
    return images.expand(-1, 3, -1, -1) if images.shape[1] == 1 else images
