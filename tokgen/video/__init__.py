"""Trajectory video tokens: extraction (segment key frames + optical-flow tracking), a tokenizer with one token
per trajectory and a decoder (TrajectoryTokenizer), a space-time patch baseline (PatchVideoTokenizer), both under
VideoTokenizer (which loads either from a file), video I/O and video metrics.

The names below are imported from their submodules on first use (PEP 562), so ``tokgen video-tokenize`` and
other extraction-only code load OpenCV / skimage without the tokenizer's model code (torch, tokgen.nn).
"""
from __future__ import annotations

import importlib

EXPORTS = {
    ".io": ("overlay", "read_clip", "read_video", "write_video"),
    ".extract": ("ExtractionConfig", "Trajectories", "extract_trajectories"),
    ".geometry": ("trajectory_boxes", "trajectory_moments"),
    ".metrics": ("evaluate_video_tokenizer", "track_scores", "video_psnr", "video_ssim"),
    ".segment": ("MaskSource", "PrecomputedMasks", "SuperpixelSegmenter", "rag_merge"),
    ".tokenizer": ("VideoTokenizer", "VideoTokenizerConfig"),
    ".trajectory_tokenizer": ("TrajectoryTokenizer", "TrajectoryTokenizerConfig"),
    ".patch_tokenizer": ("PatchVideoTokenizer", "PatchVideoTokenizerConfig"),
}
MODULE_OF = {name: module for module, names in EXPORTS.items() for name in names}

__all__ = sorted(MODULE_OF)


def __getattr__(name: str):
    if name in MODULE_OF:
        value = getattr(importlib.import_module(MODULE_OF[name], __name__), name)
        globals()[name] = value  # later look-ups skip this hook
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(MODULE_OF))
