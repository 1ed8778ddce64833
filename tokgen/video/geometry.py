"""Geometry of trajectory id maps, as the video tokenizer reads it: per-frame boxes and mask moments.

Both take a batch of id maps ``ids: (B, T, H, W)`` (int64 trajectory id of every pixel) and return per-trajectory,
per-frame values with a presence flag, so the model can embed a trajectory's track and supervise its decoder.
"""
from __future__ import annotations

import torch


def trajectory_boxes(ids: torch.Tensor, num: int) -> tuple[torch.Tensor, torch.Tensor]:
    """ids (B, T, H, W) int64 -> (boxes (B, num, T, 4) as (x0, y0, x1, y1) in [0, 1], presence (B, num, T) bool).

    Boxes span pixel edges: a one-pixel trajectory at column x has x0 = x / W, x1 = (x + 1) / W.
    """
    B, T, H, W = ids.shape
    onehot = ids[:, None] == torch.arange(num, device=ids.device)[None, :, None, None, None]  # (B, N, T, H, W)
    rows, cols = onehot.any(-1), onehot.any(-2)  # (B, N, T, H), (B, N, T, W)
    presence = rows.any(-1)
    ar_h = torch.arange(H, device=ids.device, dtype=torch.float32)
    ar_w = torch.arange(W, device=ids.device, dtype=torch.float32)
    y0 = torch.where(rows, ar_h, float(H)).amin(-1)
    y1 = torch.where(rows, ar_h + 1, 0.0).amax(-1)
    x0 = torch.where(cols, ar_w, float(W)).amin(-1)
    x1 = torch.where(cols, ar_w + 1, 0.0).amax(-1)
    boxes = torch.stack([x0 / W, y0 / H, x1 / W, y1 / H], -1) * presence[..., None]
    return boxes, presence


def trajectory_moments(ids: torch.Tensor, num: int) -> tuple[torch.Tensor, torch.Tensor]:
    """ids (B, T, H, W) int64 -> (moments (B, num, T, 4) as (cy, cx, sy, sx), presence (B, num, T) bool).

    Per frame, the centroid and the standard deviation of each trajectory's pixel coordinates, in [0, 1] of the
    image (pixel centres at (i + 0.5) / H); zeros where absent. A uniform disc of radius r has s = r / 2, a
    uniform square of half-side a has s = a / sqrt(3).
    """
    B, T, H, W = ids.shape
    onehot = (ids[:, None] == torch.arange(num, device=ids.device)[None, :, None, None, None]).float()
    rows, cols = onehot.sum(-1), onehot.sum(-2)  # (B, N, T, H), (B, N, T, W): pixels per row / column
    count = rows.sum(-1)
    presence = count > 0
    moments = []
    for hist, size in ((rows, H), (cols, W)):
        coord = (torch.arange(size, device=ids.device, dtype=torch.float32) + 0.5) / size
        mean = (hist * coord).sum(-1) / count.clamp_min(1)
        var = (hist * coord**2).sum(-1) / count.clamp_min(1) - mean**2
        moments.append((mean, var.clamp_min(0).sqrt()))
    (cy, sy), (cx, sx) = moments
    return torch.stack([cy, cx, sy, sx], -1) * presence[..., None], presence

