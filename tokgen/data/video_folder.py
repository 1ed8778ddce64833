"""Clips read from a folder of video files (PyAV), resized and centre-cropped to a square."""

from __future__ import annotations

import os

import torch
from torch.utils.data import Dataset

from ..video.io import READ_EXTENSIONS as VIDEO_EXTENSIONS
from .base import check_int


def find_videos(root: str, extensions: tuple[str, ...] = VIDEO_EXTENSIONS) -> list[str]:
    """Every video file (by extension) under ``root``, sorted; a missing folder or none found raises."""
    if not os.path.isdir(root):
        raise FileNotFoundError(f"video folder not found: {root!r}")
    paths = sorted(
        os.path.join(d, f) for d, _, files in os.walk(root) for f in files if f.lower().endswith(extensions)
    )
    if not paths:
        raise ValueError(f"no video files ({', '.join(extensions)}) under {root!r}")
    return paths


class VideoFolderDataset(Dataset):
    """Clips of ``num_frames`` frames taken ``stride`` frames apart from every video under ``root``.

    A video of F frames gives the clips starting at 0, span, 2 * span, ... with span = (T - 1) * stride + 1
    (``clips_per_video`` caps how many). Frames are resized (shorter side, antialiased) and centre-cropped to
    ``image_size``. A video that cannot be decoded, has no frames, or is shorter than one clip raises one
    ValueError naming the file (when the folder is scanned, in ``__init__``).
    """

    def __init__(self, root: str, num_frames: int = 16, stride: int = 1, image_size: int = 64,
                 clips_per_video: int | None = None) -> None:
        from ..video.io import count_frames

        self.num_frames = check_int("num_frames", num_frames, minimum=1)
        self.stride = check_int("stride", stride, minimum=1)
        self.image_size = check_int("image_size", image_size, minimum=8)
        if clips_per_video is not None:
            check_int("clips_per_video", clips_per_video, minimum=1)
        span = (num_frames - 1) * stride + 1
        self.clips: list[tuple[str, int]] = []
        for path in find_videos(root):
            frames = count_frames(path)
            if frames < span:
                raise ValueError(
                    f"video {path!r} has {frames} frames, shorter than the configured clip length: num_frames="
                    f"{num_frames} with stride={stride} needs at least {span} frames; lower num_frames or stride"
                )
            starts = list(range(0, frames - span + 1, span))[:clips_per_video]
            self.clips += [(path, s) for s in starts]

    def __len__(self) -> int:
        return len(self.clips)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        from ..video.io import read_clip

        path, start = self.clips[index]
        frames = read_clip(path, start, self.num_frames, self.stride, self.image_size)  # (T, H, W, 3) uint8
        video = torch.from_numpy(frames).permute(0, 3, 1, 2).float().div_(127.5).sub_(1.0)
        return {"video": video}
