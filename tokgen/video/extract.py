"""Trajectory extraction: segment key frames, carry the segments through the clip by optical flow, link them.

The result is an id map: every pixel of every frame belongs to exactly one trajectory (a sub-object track),
so a clip of T frames becomes N trajectories, N following the scene (how many regions move coherently),
not the clip length.

Method (all classical, CPU, no weights):

1. **Key frames**: frame 0, then every ``keyframe_interval`` frames, and any frame whose mean absolute grey
   difference to the previous one exceeds ``scene_change`` (a cut: no linking across it).
2. **Segmentation** of a key frame by a :class:`MaskSource`. The default :class:`SuperpixelSegmenter` runs
   skimage SLIC in CIELAB and merges adjacent superpixels whose mean colours are within
   ``merge_threshold`` (a region adjacency graph cut at a threshold: connected components of the "similar"
   edges), so flat regions become one segment and textured ones several. Any external segmenter (e.g. a
   panoptic model the user has) plugs in as a callable ``frame (H, W, 3) uint8 -> labels (H, W) int``,
   or as precomputed per-key-frame label maps (:class:`PrecomputedMasks`).
3. **Propagation**: between key frames, the id map of frame t-1 is warped to frame t by backward dense
   optical flow (OpenCV DIS): pixel x of frame t takes the id found at x + flow(x) in frame t-1.
4. **Linking** at a key frame: IoU between the new segments and the propagated ids, one-to-one Hungarian
   matching (scipy ``linear_sum_assignment``) above ``link_iou``; an unmatched segment is absorbed into the
   propagated trajectories of the same colour when they cover at least ``absorb_fraction`` of it (the
   segmenter split a region differently); otherwise it starts a new trajectory. The reverse, a segment that
   swallows a propagated trajectory which still moves apart from the rest of it (``split_motion``) or differs in
   colour (``absorb_colour``), keeps that trajectory on its pixels (:func:`keep_undersegmented`): a weak edge at
   the working size must not end an object's track.
5. **Clean-up and order**: trajectories smaller than ``min_area`` of the clip volume (and all beyond
   ``max_trajectories``) are dissolved into their spatial neighbours; the rest are numbered by decreasing
   space-time area, so a prefix of trajectories is the coarse version of the clip.
6. **Movers** (``movers=True``): small moving objects, which segmentation paints into their surroundings, are
   found by how they differ from the clip's background model (camera motion compensated) and tracked on their
   own (:mod:`tokgen.video.movers`), at ``motion_size``. A mover track that already is most of one
   trajectory refines that trajectory's masks; any other becomes a trajectory of its own (kept whatever
   ``min_area`` says; ``max_trajectories`` still applies). Only for a static camera by default
   (``movers_moving_camera`` turns on the camera-compensated model, which still finds too many false movers).

The pipeline runs at ``work_size`` (longest side) and the id map is upsampled (nearest) to the input size.
Constant frames (black, or one flat colour) carry nothing to segment or track: each run of them is one
trajectory, the next frame with content starts new ones (as a cut does), and a warning says so.
"""
from __future__ import annotations

import sys
import time
import warnings
from dataclasses import dataclass
from typing import Callable

import numpy as np

from ..config import DictConfig
from .movers import camera_motion, detect_movers
from .segment import MaskSource, SuperpixelSegmenter, region_means, resize_nearest, rgb_to_lab

FLOW_PRESETS = ("ultrafast", "fast", "medium")


# Defaults that changed, with their values before the change: extraction settings saved partially (a video
# checkpoint written before 2026-12-04 holds only the recipe's keys) are completed with these, so such a model
# keeps extracting as it was trained. Settings saved since hold every field.
LEGACY_DEFAULTS = {"keyframe_interval": 8, "split_motion": 0.0}


def complete_legacy(settings: dict) -> dict:
    """``settings`` (ExtractionConfig fields, possibly partial) as saved by an earlier tokgen: when it lacks a
    field added later (``split_motion``), the changed defaults take their earlier values (:data:`LEGACY_DEFAULTS`)."""
    if "split_motion" in settings:
        return dict(settings)
    return {**LEGACY_DEFAULTS, **settings}


@dataclass
class ExtractionConfig(DictConfig):
    """Settings of :func:`extract_trajectories` (plain types, for recipes)."""

    config_name = "trajectory extraction"

    work_size: int = 64  # longest side the pipeline runs at (larger inputs are downscaled); 0 = input size
    n_segments: int = 48  # SLIC superpixels per key frame
    compactness: float = 5.0  # SLIC colour / space trade-off
    slic_iters: int = 5  # SLIC k-means iterations
    merge_threshold: float = 12.0  # CIELAB distance under which adjacent superpixels merge; 0 = no merging
    keyframe_interval: int = 2  # a key frame every this many frames (8 before 2026-12-04)
    scene_change: float = 0.25  # mean |grey difference| in [0, 1] that makes a cut; 0 = never
    flow_preset: str = "fast"  # OpenCV DIS preset: ultrafast, fast or medium
    link_iou: float = 0.2  # smallest IoU for a Hungarian match between a segment and a trajectory
    absorb_fraction: float = 0.5  # an unmatched segment joins same-coloured trajectories covering this much
    absorb_colour: float = 25.0  # CIELAB distance under which colours count as the same
    split_motion: float = 1.0  # a swallowed trajectory moving this many px/frame (working size) apart survives; 0 = off
    min_area: float = 0.002  # trajectories below this fraction of the clip volume are dissolved
    max_trajectories: int | None = None  # keep at most this many (largest first)
    movers: bool = False  # opt-in: also find small moving objects by motion (see tokgen.video.movers)
    motion_size: int = 128  # longest side mover detection runs at (larger inputs are downscaled); 0 = input size
    motion_threshold: float = 0.1  # summed RGB difference in [0, 3] to the background model that is a mover
    mover_max_area: float = 0.02  # larger moving regions (fraction of the frame) are left to segmentation
    mover_min_pixels: int = 4  # smaller foreground specks (at motion_size) are noise
    mover_min_frames: int = 3  # a mover must be seen in this many frames
    mover_max_gap: int = 4  # frames a mover may stay unseen (occluded) and keep its trajectory
    mover_explained: float = 3.0  # a mover inside one trajectory at most this many times its volume is that one
    movers_moving_camera: bool = False  # also look for movers when the camera moves (experimental: many false ones)

    def __post_init__(self):
        def check(name, ok, accepted):
            if not ok:
                raise ValueError(f"extraction {name}={getattr(self, name)!r} is invalid; expected {accepted}")

        check("work_size", isinstance(self.work_size, int) and (self.work_size == 0 or self.work_size >= 16),
              "0 or an int >= 16")
        check("n_segments", isinstance(self.n_segments, int) and self.n_segments >= 1, "a positive int")
        check("keyframe_interval", isinstance(self.keyframe_interval, int) and self.keyframe_interval >= 1,
              "a positive int")
        check("flow_preset", self.flow_preset in FLOW_PRESETS, f"one of {FLOW_PRESETS}")
        check("link_iou", 0.0 <= self.link_iou <= 1.0, "a number in [0, 1]")
        check("absorb_fraction", 0.0 < self.absorb_fraction <= 1.0, "a number in (0, 1]")
        check("min_area", 0.0 <= self.min_area < 1.0, "a number in [0, 1)")
        check("split_motion", self.split_motion >= 0, "a number >= 0 (0: off)")
        check("motion_size", isinstance(self.motion_size, int) and (self.motion_size == 0 or self.motion_size >= 16),
              "0 or an int >= 16")
        check("motion_threshold", self.motion_threshold > 0, "a number > 0")
        check("mover_max_area", 0.0 < self.mover_max_area <= 1.0, "a number in (0, 1]")
        for name in ("mover_min_pixels", "mover_min_frames"):
            check(name, isinstance(getattr(self, name), int) and getattr(self, name) >= 1, "a positive int")
        check("mover_max_gap", isinstance(self.mover_max_gap, int) and self.mover_max_gap >= 0, "an int >= 0")
        check("mover_explained", self.mover_explained >= 1.0, "a number >= 1")
        check("max_trajectories", self.max_trajectories is None
              or (isinstance(self.max_trajectories, int) and self.max_trajectories >= 1), "None or a positive int")


# ---------------------------------------------------------------------------------------------------- output
@dataclass
class Trajectories:
    """Trajectories of one clip as an id map ``ids``: (T, H, W) int32 in 0..N-1, 0 = the largest trajectory."""

    ids: np.ndarray

    @property
    def num(self) -> int:
        return int(self.ids.max()) + 1

    @property
    def masks(self) -> np.ndarray:
        """(N, T, H, W) bool per-frame masks."""
        return self.ids[None] == np.arange(self.num)[:, None, None, None]

    @property
    def areas(self) -> np.ndarray:
        """(N,) space-time area in pixels (decreasing)."""
        return np.bincount(self.ids.ravel(), minlength=self.num)

    @property
    def presence(self) -> np.ndarray:
        """(N, T) bool: the trajectory has pixels in frame t."""
        return self._boxes()[1][0].numpy()

    @property
    def boxes(self) -> np.ndarray:
        """(N, T, 4) float boxes (x0, y0, x1, y1) in [0, 1] of the image; zeros where absent."""
        return self._boxes()[0][0].numpy()

    def _boxes(self):
        """:func:`tokgen.video.geometry.trajectory_boxes` of the id map (torch is imported here, not by extraction)."""
        import torch

        from .geometry import trajectory_boxes

        return trajectory_boxes(torch.from_numpy(self.ids.astype(np.int64))[None], self.num)

    @classmethod
    def from_id_map(cls, id_map: np.ndarray, max_trajectories: int | None = None, min_area: float = 0.0):
        """Canonicalise any (T, H, W) integer id map (e.g. external tracks): renumbered largest first."""
        id_map = np.asarray(id_map)
        if id_map.ndim != 3 or not np.issubdtype(id_map.dtype, np.integer):
            raise ValueError(f"an id map must be a (T, H, W) integer array, got shape {id_map.shape} {id_map.dtype}")
        return cls(_finalize(id_map, min_area, max_trajectories))


# ---------------------------------------------------------------------------------------------------- helpers
def _as_uint8_frames(video) -> np.ndarray:
    """Accept (T, H, W, 3) uint8 or (T, 3, H, W) float in [-1, 1] -> (T, H, W, 3) uint8, with a clear error.
    (A tensor can only come from a caller that imported torch, so torch is looked up, not imported, here.)"""
    torch = sys.modules.get("torch")
    if torch is not None and isinstance(video, torch.Tensor):
        if video.ndim != 4 or video.shape[1] != 3:
            raise ValueError(f"a video tensor must be (T, 3, H, W) in [-1, 1], got shape {tuple(video.shape)}")
        video = ((video.detach().float().cpu() + 1) * 127.5).round().clamp(0, 255).to(torch.uint8)
        video = video.permute(0, 2, 3, 1).numpy()
    video = np.asarray(video)
    if video.ndim != 4 or video.shape[-1] != 3 or video.dtype != np.uint8:
        raise ValueError(f"frames must be (T, H, W, 3) uint8 RGB, got shape {video.shape} dtype {video.dtype}")
    if video.shape[0] == 0:
        raise ValueError("the clip has zero frames; expected at least one")
    return np.ascontiguousarray(video)


def _fill_from_neighbours(ids: np.ndarray, invalid: np.ndarray) -> np.ndarray:
    """Give every invalid pixel the id of the nearest valid pixel of the same frame."""
    from scipy.ndimage import distance_transform_edt

    out = ids.copy()
    fallback = None
    for t in range(ids.shape[0]):
        if not invalid[t].any():
            continue
        if invalid[t].all():  # nothing valid in this frame: use the largest valid id of the clip
            if fallback is None:
                valid = ids[~invalid]
                fallback = np.bincount(valid).argmax() if valid.size else 0
            out[t] = fallback
            continue
        iy, ix = distance_transform_edt(invalid[t], return_distances=False, return_indices=True)
        out[t] = ids[t][iy, ix]
    return out


def _finalize(ids: np.ndarray, min_area: float, max_trajectories: int | None) -> np.ndarray:
    """Dissolve small / surplus trajectories into neighbours and renumber 0..N-1 by decreasing area."""
    if ids.min() >= 0 and ids.max() < ids.size:  # small non-negative ids: a lookup table instead of a sort
        present = np.bincount(ids.ravel()) > 0
        uniq = np.flatnonzero(present)
        lookup = np.cumsum(present) - 1
        inverse = lookup[ids]
    else:
        uniq, inverse = np.unique(ids, return_inverse=True)
        inverse = inverse.reshape(ids.shape)
    areas = np.bincount(inverse.ravel())
    order = np.argsort(-areas, kind="stable")
    keep = areas >= min_area * ids.size
    keep[order[0]] = True  # never dissolve everything
    if max_trajectories is not None:
        keep[order[max_trajectories:]] = False
    if not keep.all():
        inverse = _fill_from_neighbours(inverse, ~keep[inverse])
        areas = np.bincount(inverse.ravel(), minlength=len(uniq))
        order = np.argsort(-areas, kind="stable")
    rank = np.empty(len(uniq), dtype=np.int32)
    rank[order] = np.arange(len(uniq), dtype=np.int32)
    out = rank[inverse]
    # ranks of dissolved ids are unused: compact them away (they come last since their area is 0)
    return out.astype(np.int32)


def _link(seg: np.ndarray, warped: np.ndarray, lab: np.ndarray, flow: np.ndarray, next_id: int, cfg: ExtractionConfig):
    """New key-frame segments ``seg`` (0..S-1) -> trajectory ids, given the propagated ids ``warped`` (``flow``: the
    frame's backward flow, ``lab``: its CIELAB colours)."""
    from scipy.optimize import linear_sum_assignment

    S = int(seg.max()) + 1
    w_ids, w_idx = np.unique(warped, return_inverse=True)
    w_idx = w_idx.reshape(warped.shape)
    Wn = len(w_ids)
    inter = np.bincount((seg * Wn + w_idx).ravel(), minlength=S * Wn).reshape(S, Wn).astype(np.float64)
    area_s, area_w = inter.sum(1), inter.sum(0)
    iou = inter / np.maximum(area_s[:, None] + area_w[None] - inter, 1)
    table = np.full((S, Wn), -1, dtype=np.int64)  # id for the pixels of segment s that were propagated as w
    rows, cols = linear_sum_assignment(-iou)
    for r, c in zip(rows, cols):
        if iou[r, c] >= cfg.link_iou:
            table[r] = w_ids[c]
    colour_s, colour_w = region_means(seg, lab, S), region_means(w_idx, lab, Wn)
    same = np.linalg.norm(colour_s[:, None] - colour_w[None], axis=-1) <= cfg.absorb_colour  # (S, Wn)
    for r in np.flatnonzero(table[:, 0] < 0):
        compatible = same[r] & (inter[r] > 0)
        if inter[r, compatible].sum() >= cfg.absorb_fraction * area_s[r]:
            best = w_ids[np.argmax(np.where(compatible, inter[r], -1))]
            table[r] = np.where(compatible, w_ids, best)
        else:
            table[r] = next_id
            next_id += 1
    return keep_undersegmented(table, seg, w_idx, inter, lab, flow, w_ids, cfg), next_id


def keep_undersegmented(table: np.ndarray, seg: np.ndarray, w_idx: np.ndarray, inter: np.ndarray, lab: np.ndarray,
                        flow: np.ndarray, w_ids: np.ndarray, cfg: ExtractionConfig) -> np.ndarray:
    """The key frame's ids ``table[seg, w_idx]``, keeping the trajectories its segmentation swallowed (see
    :func:`_link`; ``table[s, j]`` is the id of the pixels of segment s propagated as the j-th trajectory).

    A segmenter that merges regions across a weak edge (a cup in front of a cat's fur of about the same mean
    colour, at 64 px) would end every trajectory inside the merged segment but one. A propagated trajectory that
    lies mostly (half or more of its pixels) in one segment that gives those pixels another id keeps its id when
    it still stands apart from the rest of that segment: by motion (mean flow differing by more than
    ``split_motion`` pixels per frame at the working size) or by colour (means more than ``absorb_colour`` apart
    in CIELAB). It keeps only its pixels that are closer to its own mean than to the rest's in that respect, so
    the trail a moving object leaves in the propagated ids (uncovered background) still goes to the segment.
    Remnants that move and look like their surroundings (flow drift) are absorbed as before."""
    out = table[seg, w_idx]
    S, Wn = inter.shape
    main = np.argmax(inter, axis=0)  # (Wn,) the segment holding most of each propagated trajectory
    cols = np.arange(Wn)
    lost = np.flatnonzero((table[main, cols] != w_ids) & (inter[main, cols] >= 0.5 * inter.sum(0)))
    if not len(lost):
        return out
    values = np.concatenate([lab, flow], axis=-1)  # (h, w, 5): L, a, b, flow x, flow y
    pairs = seg * Wn + w_idx
    sums = region_means(pairs, values, S * Wn).reshape(S, Wn, -1) * inter[..., None]  # per (segment, trajectory)
    for j in lost:
        r = main[j]
        rest = inter[r].sum() - inter[r, j]
        if rest <= 0:
            continue
        inside, outside = sums[r, j] / inter[r, j], (sums[r].sum(0) - sums[r, j]) / rest
        if cfg.split_motion > 0 and np.linalg.norm(inside[3:] - outside[3:]) > cfg.split_motion:
            part = slice(3, 5)  # apart by motion: each pixel goes by its flow
        elif np.linalg.norm(inside[:3] - outside[:3]) > cfg.absorb_colour:
            part = slice(0, 3)  # apart by colour: each pixel goes by its colour
        else:
            continue
        pix = pairs == r * Wn + j
        if part.start == 3:  # by motion: also the segment's pixels around it that move with it (propagation erodes)
            ys, xs = np.nonzero(pix)
            pad = max(2, int(np.ceil(np.abs(inside[3:]).max())) + 1)
            box = np.zeros_like(pix)
            box[max(ys.min() - pad, 0):ys.max() + pad + 1, max(xs.min() - pad, 0):xs.max() + pad + 1] = True
            pix = box & (seg == r) & np.isin(out, [w_ids[j], table[r, j]])
        v = values[pix][:, part]
        own = np.linalg.norm(v - inside[part], axis=1) <= np.linalg.norm(v - outside[part], axis=1)
        out[pix] = np.where(own, w_ids[j], table[r, j])
    return out


def _runs(indices: np.ndarray) -> list[tuple[int, int]]:
    """Sorted frame indices -> (first, last) of every run of consecutive ones."""
    breaks = np.flatnonzero(np.diff(indices) > 1)
    starts = np.r_[indices[:1], indices[breaks + 1]]
    ends = np.r_[indices[breaks], indices[-1:]]
    return [(int(a), int(b)) for a, b in zip(starts, ends)]


def _add_movers(ids: np.ndarray, frames: np.ndarray, flows: list, work: tuple[int, int], cfg: ExtractionConfig):
    """Mover tracks (:mod:`tokgen.video.movers`) into the (T, H, W) id map ``ids``: one explained by a single
    trajectory (most of its pixels in it, that trajectory at most ``mover_explained`` times its volume) refines
    that trajectory; any other becomes a new trajectory. Shots (runs without a cut) are handled apart."""
    import cv2

    T, H, W = ids.shape
    m = min(1.0, cfg.motion_size / max(H, W)) if cfg.motion_size else 1.0
    mh, mw = max(1, round(H * m)), max(1, round(W * m))
    small = frames if (mh, mw) == (H, W) else np.stack([cv2.resize(f, (mw, mh), interpolation=cv2.INTER_AREA)
                                                          for f in frames])
    movers = np.zeros((T, mh, mw), dtype=np.int64)
    starts = [0] + [t for t in range(1, T) if flows[t] is None] + [T]
    for a, b in zip(starts[:-1], starts[1:]):
        if b - a < cfg.mover_min_frames:
            continue
        affines = camera_motion([flows[t] for t in range(a + 1, b)], work, mh / work[0])
        found = detect_movers(small[a:b], affines, cfg.motion_threshold, cfg.mover_min_pixels, cfg.mover_max_area,
                              cfg.mover_min_frames, cfg.mover_max_gap, cfg.movers_moving_camera).astype(np.int64)
        movers[a:b] = np.where(found > 0, found + movers.max(), 0)
    if not movers.any():
        return ids
    movers = resize_nearest(movers, (H, W))
    M, N = int(movers.max()) + 1, int(ids.max()) + 1
    inter = np.bincount((movers * N + ids).ravel(), minlength=M * N).reshape(M, N)[1:]  # (movers, trajectories)
    volume = np.bincount(ids.ravel(), minlength=N)
    table = np.arange(M, dtype=np.int64) + N - 1  # mover k -> new trajectory N + k - 1 unless explained
    table[0] = -1
    for k, row in enumerate(inter, start=1):
        best = int(row.argmax())
        if row[best] >= 0.5 * row.sum() and volume[best] <= cfg.mover_explained * row.sum():
            table[k] = best
    painted = table[movers]
    return np.where(painted >= 0, painted, ids)


# ---------------------------------------------------------------------------------------------------- pipeline
MIN_FLOW_SIZE = 12  # OpenCV's DIS optical flow needs a frame whose width or height is at least this
FLAT_RANGE = 2  # a frame whose grey values span at most this (of 255) is constant


def extract_trajectories(
    video,
    config: ExtractionConfig | dict | None = None,
    mask_source: MaskSource | Callable | None = None,
    timings: dict | None = None,
) -> Trajectories:
    """Trajectories of one clip (see the module docstring).

    Args:
        video: (T, H, W, 3) uint8 RGB frames, or a (T, 3, H, W) float tensor in [-1, 1].
        config: :class:`ExtractionConfig` or a dict of its fields.
        mask_source: key-frame segmenter; default :class:`SuperpixelSegmenter` from the config. One with a
            ``keyframes`` attribute (e.g. :class:`PrecomputedMasks`) also chooses the key frames.
        timings: if given, filled with seconds spent per stage.
    """
    import cv2

    cfg = config if isinstance(config, ExtractionConfig) else ExtractionConfig.from_dict(config or {})
    frames = _as_uint8_frames(video)
    T, H, W = frames.shape[:3]
    clock = time.perf_counter()
    stage = {"resize": 0.0, "segment": 0.0, "flow": 0.0, "link": 0.0, "movers": 0.0, "finalize": 0.0}

    scale = min(1.0, cfg.work_size / max(H, W)) if cfg.work_size else 1.0
    h, w = max(1, round(H * scale)), max(1, round(W * scale))
    if T > 1 and max(h, w) < MIN_FLOW_SIZE:
        raise ValueError(f"frames of {H}x{W} (working size {w}x{h}) are too small for optical flow; accepted: "
                         f"frames whose larger side is >= {MIN_FLOW_SIZE} px (and work_size >= {MIN_FLOW_SIZE})")
    small = frames if (h, w) == (H, W) else np.stack([cv2.resize(f, (w, h), interpolation=cv2.INTER_AREA) for f in frames])
    grey = np.stack([cv2.cvtColor(f, cv2.COLOR_RGB2GRAY) for f in small])
    source = mask_source or SuperpixelSegmenter(cfg.n_segments, cfg.compactness, cfg.slic_iters, cfg.merge_threshold)
    keyframes = getattr(source, "keyframes", None)
    flow_engine = cv2.DISOpticalFlow_create(getattr(cv2, f"DISOPTICAL_FLOW_PRESET_{cfg.flow_preset.upper()}"))
    gy, gx = np.mgrid[0:h, 0:w].astype(np.float32)
    flat = (grey.max(axis=(1, 2)).astype(np.int16) - grey.min(axis=(1, 2))) <= FLAT_RANGE  # (T,) constant frames
    if flat.any():
        runs = ", ".join(f"{a}-{b}" if a != b else f"{a}" for a, b in _runs(np.flatnonzero(flat)))
        warnings.warn(f"frames {runs} of the {T}-frame clip are constant (black or one flat colour): nothing to "
                      + ("segment or track, the clip is one trajectory" if flat.all() else
                         "segment or track there; each run of them is one trajectory and trajectories restart "
                         "after it"), stacklevel=2)
    flows: list[np.ndarray | None] = [None] * T  # backward flow of frame t, None at a cut
    now = time.perf_counter()
    stage["resize"], clock = now - clock, now

    def segment(t: int) -> np.ndarray:
        labels = np.asarray(source(small[t], t))
        if labels.shape != (h, w) or not np.issubdtype(labels.dtype, np.integer) or labels.min() < 0:
            raise ValueError(f"mask source returned labels of shape {labels.shape} dtype {labels.dtype} for frame "
                             f"{t}; expected ({h}, {w}) non-negative integers")
        return np.unique(labels, return_inverse=True)[1].reshape(h, w).astype(np.int64)

    ids = np.empty((T, h, w), dtype=np.int64)
    ids[0] = segment(0)
    next_id = int(ids[0].max()) + 1
    stage["segment"] += time.perf_counter() - clock
    for t in range(1, T):
        clock = time.perf_counter()
        cut = cfg.scene_change > 0 and float(np.abs(grey[t].astype(np.float32) - grey[t - 1]).mean()) / 255 > cfg.scene_change
        cut = cut or bool(flat[t] != flat[t - 1])
        is_key = (t in keyframes) if keyframes is not None else (t % cfg.keyframe_interval == 0)
        if cut:
            ids[t] = segment(t) + next_id
            next_id = int(ids[t].max()) + 1
            stage["segment"] += time.perf_counter() - clock
            continue
        flow = flow_engine.calc(grey[t], grey[t - 1], None)  # frame t pixel x came from x + flow(x) in t-1
        flows[t] = flow
        warped = cv2.remap(ids[t - 1].astype(np.float32), gx + flow[..., 0], gy + flow[..., 1],
                           interpolation=cv2.INTER_NEAREST, borderMode=cv2.BORDER_REPLICATE).astype(np.int64)
        now = time.perf_counter()
        stage["flow"], clock = stage["flow"] + now - clock, now
        if is_key:
            seg = segment(t)
            now = time.perf_counter()
            stage["segment"], clock = stage["segment"] + now - clock, now
            ids[t], next_id = _link(seg, warped, rgb_to_lab(small[t]), flow, next_id, cfg)
            stage["link"] += time.perf_counter() - clock
        else:
            ids[t] = warped

    clock = time.perf_counter()
    out = _finalize(ids, cfg.min_area, None if cfg.movers else cfg.max_trajectories)
    out = resize_nearest(out, (H, W))
    stage["finalize"] = time.perf_counter() - clock
    if cfg.movers and T >= cfg.mover_min_frames and not flat.all():
        clock = time.perf_counter()
        out = _add_movers(out, frames, flows, (h, w), cfg)
        out = _finalize(out, 0.0, cfg.max_trajectories)
        stage["movers"] = time.perf_counter() - clock
    if timings is not None:
        timings.update(stage)
    return Trajectories(np.ascontiguousarray(out))
