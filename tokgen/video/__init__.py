"""Trajectory video tokens: extraction (segment key frames + optical-flow tracking), a tokenizer with one token
per trajectory and a decoder, a space-time patch baseline, video I/O and video metrics."""
from .io import overlay, read_clip, read_video, write_video
from .metrics import evaluate_video_tokenizer, video_psnr, video_ssim
from .tokenizer import VideoTokenizer, VideoTokenizerConfig
from .trajectories import (
    ExtractionConfig,
    MaskSource,
    PrecomputedMasks,
    SuperpixelSegmenter,
    Trajectories,
    extract_trajectories,
    rag_merge,
    track_scores,
    trajectory_boxes,
    trajectory_moments,
)

__all__ = [
    "ExtractionConfig", "MaskSource", "PrecomputedMasks", "SuperpixelSegmenter", "Trajectories", "VideoTokenizer",
    "VideoTokenizerConfig", "evaluate_video_tokenizer", "extract_trajectories", "overlay", "rag_merge", "read_clip",
    "read_video", "track_scores", "trajectory_boxes", "trajectory_moments",
    "video_psnr", "video_ssim", "write_video",
]
