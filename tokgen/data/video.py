"""The video datamodule. Every dataset yields dicts ``{"video": (T, C, H, W) in [-1, 1], ...}``.

- :class:`MovingShapesDataset` (:mod:`tokgen.data.moving_shapes`) — synthetic clips: coloured shapes moving (bouncing off the borders) and
  occluding each other on a textured background, with ground-truth instance tracks. Clip ``i`` is a pure
  function of ``(seed, i)``, and a clip of ``2T`` frames starts with the same ``T`` frames as the clip of
  ``T`` frames with the same ``(seed, i)`` (the scene does not depend on the clip length).
- :class:`VideoFolderDataset` (:mod:`tokgen.data.video_folder`) — clips of ``num_frames`` frames, ``stride`` frames apart, read with PyAV
  from every video file under a folder; resized (shorter side) and centre-cropped to ``image_size``.
- :class:`VideoDataModule` — train / val splits of either, optionally with trajectories extracted by
  :func:`tokgen.video.extract_trajectories` (``"traj_ids"``: (T, H, W) int64 trajectory id of every pixel,
  ordered largest first), which the trajectory tokenizer needs (:class:`TrajectoryDataset` and the clip cache
  :class:`CachedDataset` live in :mod:`tokgen.data.video_datasets`).

Samples: ``{"video": (T, 3, H, W) float32 in [-1, 1]}``, plus for moving shapes ``"tracks"``: (T, H, W)
int64 ground-truth instance ids (0 = background, j = shape j) and ``"num_shapes"``, plus ``"traj_ids"`` and
``"num_trajectories"`` when extraction is on.
"""

from __future__ import annotations

import lightning as L
import torch
from torch.utils.data import DataLoader, Dataset

from .base import ResumableLoader, check_choice, check_int
from .moving_shapes import MovingShapesDataset
from .video_datasets import CachedDataset, TrajectoryDataset
from .video_folder import VideoFolderDataset

__all__ = ["CachedDataset", "MovingShapesDataset", "TrajectoryDataset", "VideoDataModule", "VideoFolderDataset"]



def command_line_values(settings: dict) -> dict:
    """``settings`` with numbers and booleans typed: a free-form dict set from the command line
    (``--data.init_args.extraction.keyframe_interval 2``) arrives as strings, which are read as YAML scalars
    ("2" -> 2, "0.5" -> 0.5, "true" -> True); other strings ("fast") stay as they are."""
    import yaml

    typed = {}
    for key, value in settings.items():
        if isinstance(value, str):
            parsed = yaml.safe_load(value) if value.strip() else value
            value = parsed if isinstance(parsed, (int, float, bool)) or parsed is None else value
        typed[key] = value
    return typed

class VideoDataModule(L.LightningDataModule):
    """Train / val clips from ``moving_shapes`` or a video folder, with optional trajectory extraction.

    Args:
        dataset: "moving_shapes" or "folder".
        root: the folder of videos (``dataset="folder"``); ``val_root`` defaults to ``root``.
        num_frames, image_size: clip shape T x H x W (H = W).
        stride: frame step inside a clip (folder only).
        train_size, val_size: clip counts (moving shapes; for folders they cap the clips used).
        min_shapes, max_shapes, texture_contrast: moving-shapes scene settings.
        trajectories: extract trajectories (needed by the trajectory tokenizer).
        trajectory_source: "extracted" (classical pipeline) or "ground_truth" (moving-shapes tracks, as an
            example of externally computed masks).
        extraction: :class:`tokgen.video.ExtractionConfig` fields.
        cache_mb: rendered moving-shapes clips are kept in memory up to this many megabytes per split
            (0 = render on every access); the clips are deterministic, so caching changes only the speed.
    """

    def __init__(
        self,
        dataset: str = "moving_shapes",
        root: str | None = None,
        val_root: str | None = None,
        num_frames: int = 16,
        image_size: int = 32,
        stride: int = 1,
        train_size: int = 512,
        val_size: int = 64,
        min_shapes: int = 1,
        max_shapes: int = 4,
        texture_contrast: float = 0.5,
        trajectories: bool = True,
        trajectory_source: str = "extracted",
        extraction: dict | None = None,
        batch_size: int = 8,
        val_batch_size: int | None = None,
        num_workers: int = 0,
        seed: int = 0,
        cache_mb: float = 1024,
    ) -> None:
        super().__init__()
        self.dataset = check_choice("dataset", dataset, ("moving_shapes", "folder"))
        if not isinstance(cache_mb, (int, float)) or isinstance(cache_mb, bool) or cache_mb < 0:
            raise ValueError(f"cache_mb={cache_mb!r} must be a number >= 0 (megabytes of clips kept in memory)")
        self.cache_mb = cache_mb
        if dataset == "folder" and not root:
            raise ValueError("dataset='folder' needs root=<folder of videos>")
        self.root, self.val_root = root, val_root or root
        self.num_frames = check_int("num_frames", num_frames, minimum=1)
        self.image_size = check_int("image_size", image_size, minimum=8)
        self.stride = check_int("stride", stride, minimum=1)
        self.train_size = check_int("train_size", train_size, minimum=1)
        self.val_size = check_int("val_size", val_size, minimum=1)
        self.min_shapes, self.max_shapes, self.texture_contrast = min_shapes, max_shapes, texture_contrast
        self.trajectories = trajectories
        self.trajectory_source = check_choice("trajectory_source", trajectory_source, ("extracted", "ground_truth"))
        self.extraction = command_line_values(extraction or {})
        if self.trajectories:  # fail at construction, naming the key, not at the first clip
            from ..video.extract import ExtractionConfig

            ExtractionConfig.from_dict(self.extraction)
        self.batch_size = check_int("batch_size", batch_size, minimum=1)
        self.val_batch_size = check_int("val_batch_size", val_batch_size or batch_size, minimum=1)
        self.num_workers = check_int("num_workers", num_workers, minimum=0)
        self.seed = check_int("seed", seed, minimum=0)
        self.channels = 3
        self.train_set = self.val_set = None
        self.save_hyperparameters()

    def _split(self, split: str) -> Dataset:
        size = self.train_size if split == "train" else self.val_size
        if self.dataset == "moving_shapes":
            base = MovingShapesDataset(size, self.num_frames, self.image_size, self.min_shapes, self.max_shapes,
                                       seed=self.seed + (0 if split == "train" else 1_000_003),
                                       texture_contrast=self.texture_contrast)
            if self.cache_mb > 0:
                base = CachedDataset(base, self.cache_mb)
        else:
            base = VideoFolderDataset(self.root if split == "train" else self.val_root, self.num_frames,
                                      self.stride, self.image_size)
            if len(base) > size:
                base = torch.utils.data.Subset(base, range(size))
        return TrajectoryDataset(base, self.extraction, self.trajectory_source) if self.trajectories else base

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is None:
            self.train_set, self.val_set = self._split("train"), self._split("val")

    def _loader(self, dataset: Dataset, batch_size: int, shuffle: bool) -> DataLoader:
        if shuffle and len(dataset) < batch_size:
            raise ValueError(f"batch_size={batch_size} is larger than the train set ({len(dataset)} clips)")
        if shuffle:
            return ResumableLoader(dataset, batch_size, self.seed, self.num_workers)
        return DataLoader(dataset, batch_size=batch_size, generator=torch.Generator().manual_seed(self.seed),
                          num_workers=self.num_workers, persistent_workers=self.num_workers > 0)

    def train_dataloader(self) -> DataLoader:
        self.setup()
        return self._loader(self.train_set, self.batch_size, True)

    def val_dataloader(self) -> DataLoader:
        self.setup()
        return self._loader(self.val_set, self.val_batch_size, False)

    def test_dataloader(self) -> DataLoader:
        return self.val_dataloader()
