"""Key-frame segmenters for trajectory extraction (:mod:`tokgen.video.extract`).

A segmenter is any callable ``frame (H, W, 3) uint8 RGB, index -> labels (H, W) int`` (:class:`MaskSource`). The
default :class:`SuperpixelSegmenter` runs skimage SLIC in CIELAB and merges adjacent superpixels of similar colour
(:func:`rag_merge`); :class:`PrecomputedMasks` plugs in label maps computed elsewhere (e.g. a panoptic model).
"""
from __future__ import annotations

from typing import Protocol

import numpy as np


class MaskSource(Protocol):
    """Segments one key frame: ``(H, W, 3) uint8 RGB -> (H, W) int labels`` (any non-negative ids)."""

    def __call__(self, frame: np.ndarray, index: int) -> np.ndarray: ...


def rgb_to_lab(frame: np.ndarray) -> np.ndarray:
    """(H, W, 3) uint8 RGB -> float32 CIELAB (L in 0..100)."""
    import cv2

    return cv2.cvtColor(frame.astype(np.float32) / 255.0, cv2.COLOR_RGB2Lab)


def region_means(labels: np.ndarray, values: np.ndarray, num: int) -> np.ndarray:
    """Mean of ``values`` (H, W, C) over every label 0..num-1 of ``labels`` (H, W) -> (num, C)."""
    flat = labels.ravel()
    counts = np.maximum(np.bincount(flat, minlength=num), 1)
    return np.stack([np.bincount(flat, weights=values[..., c].ravel(), minlength=num) for c in range(values.shape[-1])],
                    axis=1) / counts[:, None]


def rag_merge(labels: np.ndarray, lab: np.ndarray, threshold: float) -> np.ndarray:
    """Merge adjacent regions whose mean colours are closer than ``threshold``: the region adjacency graph,
    cut at the threshold, and its connected components as the new labels (0..M-1)."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    n = int(labels.max()) + 1
    means = region_means(labels, lab, n)
    a = np.concatenate([labels[:, :-1].ravel(), labels[:-1, :].ravel()])
    b = np.concatenate([labels[:, 1:].ravel(), labels[1:, :].ravel()])
    edge = a != b
    a, b = a[edge], b[edge]
    close = np.linalg.norm(means[a] - means[b], axis=1) < threshold
    graph = coo_matrix((np.ones(int(close.sum())), (a[close], b[close])), shape=(n, n))
    _, component = connected_components(graph, directed=False)
    return component[labels].astype(np.int32)


class SuperpixelSegmenter:
    """SLIC superpixels in CIELAB, optionally merged by a region adjacency graph (see :func:`rag_merge`)."""

    def __init__(self, n_segments: int = 48, compactness: float = 5.0, iters: int = 5, merge_threshold: float = 12.0):
        self.n_segments, self.compactness, self.iters = n_segments, compactness, iters
        self.merge_threshold = merge_threshold

    def __call__(self, frame: np.ndarray, index: int = 0) -> np.ndarray:
        from skimage.segmentation import slic

        # RGB in, skimage converts to CIELAB itself (it min-max rescales its input first, which would squash a
        # CIELAB input and with it the meaning of ``compactness``)
        labels = slic(frame.astype(np.float32) / 255.0, n_segments=self.n_segments, compactness=self.compactness,
                      max_num_iter=self.iters, start_label=0, channel_axis=-1).astype(np.int32)
        if self.merge_threshold > 0:
            labels = rag_merge(labels, rgb_to_lab(frame), self.merge_threshold)
        return labels


class PrecomputedMasks:
    """Externally computed key-frame segmentations: ``{frame index: (H, W) int labels}``.

    Its key frames replace the schedule (scene-change detection still applies). Label maps of another size
    than the frames are resized (nearest).
    """

    def __init__(self, label_maps: dict[int, np.ndarray]):
        if not label_maps or 0 not in label_maps:
            raise ValueError(f"PrecomputedMasks needs a label map for frame 0; got frames {sorted(label_maps)}")
        self.label_maps = {int(k): np.asarray(v) for k, v in label_maps.items()}
        self.keyframes = set(self.label_maps)

    def __call__(self, frame: np.ndarray, index: int) -> np.ndarray:
        if index not in self.label_maps:
            raise ValueError(f"no precomputed mask for key frame {index}; available: {sorted(self.label_maps)}")
        return resize_nearest(self.label_maps[index], frame.shape[:2])



def resize_nearest(labels: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """(..., h, w) -> (..., H, W) by nearest neighbour (pixel centres)."""
    h, w = labels.shape[-2:]
    H, W = shape
    if (h, w) == (H, W):
        return labels
    rows = np.minimum(((np.arange(H) + 0.5) * h / H).astype(np.int64), h - 1)
    cols = np.minimum(((np.arange(W) + 0.5) * w / W).astype(np.int64), w - 1)
    return labels[..., rows[:, None], cols[None, :]]

