"""Trajectory video tokens: extraction (segment key frames + optical-flow tracking), a tokenizer with one token
per trajectory and a decoder (TrajectoryTokenizer), a space-time patch baseline (PatchVideoTokenizer), both under
VideoTokenizer (which loads either from a file), video I/O and video metrics."""
from .io import overlay, read_clip, read_video, write_video
from .extract import ExtractionConfig, Trajectories, extract_trajectories
from .geometry import trajectory_boxes, trajectory_moments
from .metrics import evaluate_video_tokenizer, track_scores, video_psnr, video_ssim
from .segment import MaskSource, PrecomputedMasks, SuperpixelSegmenter, rag_merge
from .tokenizer import VideoTokenizer, VideoTokenizerConfig
from .trajectory_tokenizer import TrajectoryTokenizer, TrajectoryTokenizerConfig
from .patch_tokenizer import PatchVideoTokenizer, PatchVideoTokenizerConfig

__all__ = [
    "ExtractionConfig", "MaskSource", "PatchVideoTokenizer", "PatchVideoTokenizerConfig", "PrecomputedMasks",
    "SuperpixelSegmenter", "Trajectories", "TrajectoryTokenizer", "TrajectoryTokenizerConfig", "VideoTokenizer",
    "VideoTokenizerConfig", "evaluate_video_tokenizer", "extract_trajectories", "overlay", "rag_merge", "read_clip",
    "read_video", "track_scores", "trajectory_boxes", "trajectory_moments",
    "video_psnr", "video_ssim", "write_video",
]
