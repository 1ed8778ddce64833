"""Reading and writing video files (PyAV), with one clear error per bad input.

Frames at the edges are uint8 ``(T, H, W, 3)`` RGB numpy arrays; models see float ``(T, 3, H, W)`` in [-1, 1].
torch is imported only where a tensor is made (resizing, model outputs), so reading, extracting and writing a clip
at its own size runs without it.
"""
from __future__ import annotations

import os
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import torch

WRITE_EXTENSIONS = (".gif", ".mp4")
READ_EXTENSIONS = (".mp4", ".avi", ".mov", ".mkv", ".webm", ".gif")  # what a video folder is scanned for (any case)


def _open(path: str):
    import av

    if not os.path.isfile(path):
        raise FileNotFoundError(f"video not found: {path}")
    try:
        container = av.open(path)
    except Exception as err:  # av.error.InvalidDataError and friends
        from ..weights import error_summary

        raise ValueError(f"video {path!r} is unreadable ({error_summary(err, 160)}); "
                         "expected a video file PyAV/FFmpeg can decode (.mp4, .avi, .mov, .mkv, .webm, .gif)") from None
    if not container.streams.video:  # e.g. an MP4 written without any frame keeps no video track
        container.close()
        raise ValueError(f"video {path!r} has zero frames (no video stream); expected at least one decodable frame")
    return container


def _frames(path: str):
    """Yield (H, W, 3) uint8 RGB frames; a decode error midway raises one ValueError naming the file."""
    container = _open(path)
    try:
        for frame in container.decode(video=0):
            yield frame.to_ndarray(format="rgb24")
    except Exception as err:
        raise ValueError(f"video {path!r} could not be decoded ({type(err).__name__}: {str(err)[:160]})") from None
    finally:
        container.close()


def count_frames(path: str) -> int:
    """Number of decodable frames (decodes the file; container metadata is often missing or wrong)."""
    n = sum(1 for _ in _frames(path))
    if n == 0:
        raise ValueError(f"video {path!r} has zero frames; expected at least one decodable frame")
    return n


def read_video(path: str, max_frames: int | None = None) -> np.ndarray:
    """All frames (or the first ``max_frames``) of a video file -> (T, H, W, 3) uint8."""
    frames = []
    for frame in _frames(path):
        frames.append(frame)
        if max_frames is not None and len(frames) >= max_frames:
            break
    if not frames:
        raise ValueError(f"video {path!r} has zero frames; expected at least one decodable frame")
    return np.stack(frames)


def resize_frames(frames: np.ndarray, size: int) -> np.ndarray:
    """(T, H, W, 3) uint8 -> (T, size, size, 3) uint8: shorter side to ``size`` (antialiased), centre crop.
    Frames already ``size`` x ``size`` are returned as they are (what the resize would give)."""
    if frames.shape[1:3] == (size, size):
        return np.ascontiguousarray(frames)
    import torch
    import torch.nn.functional as F

    x = torch.from_numpy(np.ascontiguousarray(frames)).permute(0, 3, 1, 2).float()
    H, W = x.shape[-2:]
    scale = size / min(H, W)
    h, w = max(size, round(H * scale)), max(size, round(W * scale))
    if (h, w) != (H, W):
        x = F.interpolate(x, size=(h, w), mode="bilinear", antialias=True, align_corners=False)
    top, left = (h - size) // 2, (w - size) // 2
    x = x[..., top:top + size, left:left + size]
    return x.round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()


def read_clip(path: str, start: int, num_frames: int, stride: int = 1, image_size: int | None = None) -> np.ndarray:
    """Frames start, start + stride, ... (``num_frames`` of them) -> (T, S, S, 3) uint8 (resized when asked).

    A video too short for the clip raises a ValueError saying how many frames it has and how many are needed.
    """
    need = start + (num_frames - 1) * stride + 1
    frames = [f for i, f in enumerate(_frames(path)) if i >= start and (i - start) % stride == 0 and i < need]
    if len(frames) < num_frames:
        raise ValueError(
            f"video {path!r} is shorter than the configured clip: a clip of num_frames={num_frames} with "
            f"stride={stride} from frame {start} needs {need} frames, the video has fewer; lower num_frames or stride"
        )
    clip = np.stack(frames)
    return resize_frames(clip, image_size) if image_size is not None else clip


def to_uint8_frames(video: torch.Tensor | np.ndarray) -> np.ndarray:
    """(T, 3, H, W) float in [-1, 1] (or already uint8 (T, H, W, 3)) -> (T, H, W, 3) uint8 (rounded)."""
    if isinstance(video, np.ndarray) and video.dtype == np.uint8:
        return video
    import torch

    from ..images import to_uint8

    v = torch.as_tensor(video).detach().float().cpu()
    return to_uint8(v).permute(0, 2, 3, 1).numpy()


def write_video(path: str, frames: np.ndarray, fps: float = 8.0) -> None:
    """Write (T, H, W, 3) uint8 frames as an animated GIF (Pillow) or an H.264 MP4 (PyAV), by extension."""
    ext = os.path.splitext(path)[1].lower()
    if ext not in WRITE_EXTENSIONS:
        raise ValueError(f"output {path!r}: unsupported extension {ext!r}; accepted: {', '.join(WRITE_EXTENSIONS)}")
    frames = np.ascontiguousarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8 or len(frames) == 0:
        raise ValueError(f"write_video needs (T, H, W, 3) uint8 frames with T >= 1, got {frames.shape} {frames.dtype}")
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    if ext == ".gif":
        from PIL import Image

        images = [Image.fromarray(f) for f in frames]
        images[0].save(path, save_all=True, append_images=images[1:], duration=int(round(1000 / fps)), loop=0)
        return
    import av

    H, W = frames.shape[1:3]
    pad_h, pad_w = H % 2, W % 2  # yuv420p needs even sides
    if pad_h or pad_w:
        frames = np.pad(frames, ((0, 0), (0, pad_h), (0, pad_w), (0, 0)), mode="edge")
    with av.open(path, mode="w") as container:
        stream = container.add_stream("libx264", rate=int(round(fps)))
        stream.width, stream.height, stream.pix_fmt = frames.shape[2], frames.shape[1], "yuv420p"
        stream.options = {"crf": "18"}
        for f in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(f, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def palette(n: int, seed: int = 0) -> np.ndarray:
    """(n, 3) uint8 distinct colours (golden-ratio hues) for trajectory overlays."""
    import colorsys

    hues = (np.arange(n) * 0.618033988749895 + 0.1 * seed) % 1.0
    return np.array([[int(255 * c) for c in colorsys.hsv_to_rgb(h, 0.85, 1.0)] for h in hues], dtype=np.uint8)


def overlay(frames: np.ndarray, ids: np.ndarray, alpha: float = 0.5, edges: bool = True) -> np.ndarray:
    """Blend a colour per trajectory over (T, H, W, 3) uint8 frames; ``ids``: (T, H, W) ints >= 0."""
    colours = palette(int(ids.max()) + 1)
    out = (1 - alpha) * frames.astype(np.float32) + alpha * colours[ids].astype(np.float32)
    if edges:  # darken trajectory boundaries
        edge = np.zeros(ids.shape, dtype=bool)
        edge[:, 1:] |= ids[:, 1:] != ids[:, :-1]
        edge[:, :, 1:] |= ids[:, :, 1:] != ids[:, :, :-1]
        out[edge] *= 0.3
    return out.round().clip(0, 255).astype(np.uint8)
