"""Dataset wrappers of the video pipeline: an in-memory cache of deterministic clips, and trajectories added to
every clip (extracted by :func:`tokgen.video.extract_trajectories`, or the ground-truth tracks)."""

from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import Dataset

from .base import check_choice


class CachedDataset(Dataset):
    """Keeps the items of a deterministic dataset (rendered moving-shapes clips) in memory once built, up to
    ``cache_mb`` megabytes of tensors; items beyond that are rebuilt on every access. The items are exactly those
    of ``base``: rendering a 64x64 clip costs more than a tiny tokenizer's training step on it."""

    def __init__(self, base: Dataset, cache_mb: float) -> None:
        self.base = base
        self.budget = float(cache_mb) * 2**20
        self.held = 0.0
        self._cache: dict[int, dict] = {}

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        item = self._cache.get(index)
        if item is None:
            item = self.base[index]
            size = sum(v.numel() * v.element_size() for v in item.values() if isinstance(v, torch.Tensor))
            if self.held + size <= self.budget:
                self._cache[index] = item
                self.held += size
        return dict(item)


class TrajectoryDataset(Dataset):
    """Adds ``"traj_ids"`` (T, H, W) int64 and ``"num_trajectories"`` to every clip of ``base``.

    Extraction runs once per clip and is cached in memory (clips are deterministic).
    """

    def __init__(self, base: Dataset, extraction: dict | None = None, source: str = "extracted") -> None:
        from ..video.extract import ExtractionConfig

        self.base = base
        self.config = ExtractionConfig.from_dict(extraction or {})
        self.source = check_choice("trajectory_source", source, ("extracted", "ground_truth"))
        self._cache: dict[int, torch.Tensor] = {}

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        from ..video.extract import Trajectories, extract_trajectories

        item = dict(self.base[index])
        if index not in self._cache:
            if self.source == "ground_truth":
                if "tracks" not in item:
                    raise ValueError("trajectory_source='ground_truth' needs a dataset with 'tracks' (moving_shapes)")
                traj = Trajectories.from_id_map(item["tracks"].numpy(), self.config.max_trajectories)
            else:
                traj = extract_trajectories(item["video"], self.config)
            self._cache[index] = torch.from_numpy(traj.ids.astype(np.int64))
        ids = self._cache[index]
        item["traj_ids"] = ids
        item["num_trajectories"] = torch.tensor(int(ids.max()) + 1, dtype=torch.int64)
        return item
