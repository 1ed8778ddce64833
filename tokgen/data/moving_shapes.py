"""Moving shapes: synthetic clips of coloured shapes moving over a textured background, with ground-truth
instance tracks.

Clip ``i`` is a pure function of ``(seed, i)``, and a clip of ``2T`` frames starts with the same ``T`` frames as the
clip of ``T`` frames with the same ``(seed, i)`` (the scene does not depend on the clip length). Samples:
``{"video": (T, 3, H, W) float32 in [-1, 1], "tracks": (T, H, W) int64 (0 = background, j = shape j),
"num_shapes": int64}``.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch.utils.data import Dataset

from .base import check_int
from .shapes import KINDS, min_distance, random_colour

MIN_SIZE, MAX_SIZE = 0.10, 0.22  # equal-area radius of a shape, as a fraction of the image side
MIN_SPEED, MAX_SPEED = 0.01, 0.035  # image sides per frame
MIN_VISIBLE = 0.3  # fraction of each shape's area that must stay visible in every frame (best of MAX_ATTEMPTS)
MAX_ATTEMPTS = 10
CHECK_FRAMES = 16  # visibility is checked on these first frames whatever the clip length, so T and 2T agree
CAMOUFLAGE_DISTANCE = (0.10, 0.16)  # RGB distance of a camouflaged shape's colour from a background colour
OCCLUDER_WIDTH = (0.06, 0.10)  # width of a static occluding bar, as a fraction of the image side


def reflect(p: np.ndarray, lo: np.ndarray | float, hi: np.ndarray | float) -> np.ndarray:
    """Bounce positions ``p`` back and forth inside [lo, hi] (a triangle wave); shared with the photo clips."""
    span = np.maximum(hi - lo, 1e-6)
    u = np.mod(p - lo, 2 * span)
    return lo + np.where(u <= span, u, 2 * span - u)


class RenderedClips(Dataset):
    """Base of the synthetic clip datasets: ``num_clips`` clips, clip ``index`` drawn by ``render(index)`` ->
    (video (T, H, W, 3) float in [0, 1] or uint8, tracks (T, H, W) int, number of objects), returned as the
    item ``{"video": (T, 3, H, W) in [-1, 1], "tracks": int64, "num_shapes": int64}``."""

    num_clips: int

    def render(self, index: int) -> tuple[np.ndarray, np.ndarray, int]:
        raise NotImplementedError

    def __len__(self) -> int:
        return self.num_clips

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        if not 0 <= index < self.num_clips:
            raise IndexError(f"index {index} out of range for {type(self).__name__} of {self.num_clips} clips")
        video, tracks, n = self.render(index)
        video = torch.from_numpy(np.ascontiguousarray(video.transpose(0, 3, 1, 2)))  # (T, 3, H, W)
        if video.dtype == torch.uint8:
            video = video.float().div_(127.5).sub_(1.0)
        else:
            video = (video * 2 - 1).clamp_(-1, 1)
        return {"video": video, "tracks": torch.from_numpy(tracks.astype(np.int64)),
                "num_shapes": torch.tensor(n, dtype=torch.int64)}


class MovingShapesDataset(RenderedClips):
    """Synthetic clips of ``min_shapes..max_shapes`` moving shapes with ground-truth tracks.

    Each shape (circle, square or triangle; flat saturated colour) moves at a constant velocity, bouncing
    off the image borders, squares and triangles also rotate slowly; shapes are painted in a fixed depth
    order, so they occlude each other as they pass. The background is a two-colour texture (a sum of three
    random sinusoidal gratings). Layouts are re-drawn (best of 10) until every shape stays at least 30%
    visible in every frame where it is inside the image. Shapes are rasterised on a grid 4x finer (2x above
    64 px) and average-pooled, so edges are anti-aliased; the ground-truth id of a pixel is the layer covering
    most of it.

    Harder scenes (all off by default, so the default clips stay as they were): small movers of a given
    pixel size, camouflaged colours (close to the background's), shapes that enter from outside the image
    mid-clip, and static occluding bars that movers pass behind (their pixels are background in the tracks).
    These options draw from their own random streams, so switching one on does not move the others' scene.

    Args:
        num_clips: dataset length.
        num_frames: frames per clip T.
        image_size: H = W.
        min_shapes, max_shapes: inclusive range of shapes per clip.
        seed: clip ``i`` is generated from ``(seed, i)``.
        texture_contrast: strength of the background texture in [0, 1] (0 = plain background).
        mover_size_px: ``(lo, hi)`` equal-area diameter range of the shapes in pixels (default: 0.2-0.44 of
            the image side).
        camouflage: probability in [0, 1] that a shape's colour is a background colour shifted by an RGB
            distance of 0.10-0.16 (instead of a colour far from the background).
        enter_fraction: probability in [0, 1] that a shape starts outside the image and enters it from a border
            between frames 2 and 8.
        occluders: number of static bars (background-coloured, in front of the shapes) per clip.
    """

    def __init__(
        self,
        num_clips: int,
        num_frames: int = 16,
        image_size: int = 32,
        min_shapes: int = 1,
        max_shapes: int = 4,
        seed: int = 0,
        texture_contrast: float = 0.5,
        mover_size_px: tuple[float, float] | None = None,
        camouflage: float = 0.0,
        enter_fraction: float = 0.0,
        occluders: int = 0,
    ) -> None:
        self.num_clips = check_int("num_clips", num_clips, minimum=0)
        self.num_frames = check_int("num_frames", num_frames, minimum=1)
        self.image_size = check_int("image_size", image_size, minimum=8)
        self.min_shapes = check_int("min_shapes", min_shapes, minimum=1)
        self.max_shapes = check_int("max_shapes", max_shapes, minimum=1)
        if max_shapes < min_shapes:
            raise ValueError(f"max_shapes must be >= min_shapes={min_shapes}, got max_shapes={max_shapes}")
        self.seed = check_int("seed", seed, minimum=0)
        if not 0.0 <= texture_contrast <= 1.0:
            raise ValueError(f"texture_contrast must be in [0, 1], got {texture_contrast!r}")
        self.texture_contrast = float(texture_contrast)
        if mover_size_px is not None:
            lo, hi = (float(v) for v in mover_size_px)
            if not 1.0 <= lo <= hi <= image_size / 2:
                raise ValueError(f"mover_size_px={tuple(mover_size_px)!r} must be (lo, hi) pixels with "
                                 f"1 <= lo <= hi <= image_size / 2 = {image_size / 2}")
            mover_size_px = (lo, hi)
        self.mover_size_px = mover_size_px
        for name, value in (("camouflage", camouflage), ("enter_fraction", enter_fraction)):
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} must be a probability in [0, 1], got {value!r}")
        self.camouflage, self.enter_fraction = float(camouflage), float(enter_fraction)
        self.occluders = check_int("occluders", occluders, minimum=0)
        self.supersample = 4 if image_size <= 64 else 2
        fine = image_size * self.supersample
        self._fine = (np.arange(fine, dtype=np.float32) + 0.5) / fine  # fine pixel centres in [0, 1]
        self._coarse = (np.arange(image_size, dtype=np.float32) + 0.5) / image_size

    # ------------------------------------------------------------------------------------------------
    def render(self, index: int) -> tuple[np.ndarray, np.ndarray, int]:
        """Clip ``index``: (video (T, H, W, 3) float32 in [0, 1], tracks (T, H, W) int, number of shapes)."""
        rng = np.random.default_rng([self.seed, index])
        n = int(rng.integers(self.min_shapes, self.max_shapes + 1))
        kinds = rng.integers(0, len(KINDS), size=n)
        sizes = np.sort(rng.uniform(MIN_SIZE, MAX_SIZE, size=n))[::-1]  # larger shapes further back
        background, bg_colours = self._background(rng)
        colours: list[np.ndarray] = []
        for _ in range(n):
            colours.append(self._shape_colour(rng, bg_colours, colours))
        if self.mover_size_px is not None:
            sizes = np.sort(np.random.default_rng([self.seed, index, 0, 1]).uniform(*self.mover_size_px, size=n))
            sizes = sizes[::-1] / (2 * self.image_size)
        if self.camouflage > 0:
            camo = np.random.default_rng([self.seed, index, 0, 2])
            for j in range(n):
                if camo.random() < self.camouflage:
                    colours[j] = self._camouflage_colour(camo, bg_colours)
        entering = np.zeros(n, dtype=bool)
        if self.enter_fraction > 0:
            entering = np.random.default_rng([self.seed, index, 0, 3]).random(n) < self.enter_fraction

        # Motion drawn from a separate stream per attempt, so the scene never depends on num_frames.
        T, S = max(self.num_frames, CHECK_FRAMES), self._fine.shape[0]
        best, best_visible = None, -1.0
        for attempt in range(MAX_ATTEMPTS):
            motion = np.random.default_rng([self.seed, index, attempt + 1])
            masks = [self._shape_masks(motion, int(k), float(s), bool(e))
                     for k, s, e in zip(kinds, sizes, entering)]  # n x (T, S, S)
            owner = np.zeros((T, S, S), dtype=np.int8)  # 0 = background, j + 1 = shape j
            for j, mask in enumerate(masks):
                owner[mask] = j + 1
            area = np.stack([m[:CHECK_FRAMES].reshape(CHECK_FRAMES, -1).sum(1) for m in masks])  # (n, CHECK_FRAMES)
            seen = np.stack([(owner[:CHECK_FRAMES] == j + 1).reshape(CHECK_FRAMES, -1).sum(1) for j in range(n)])
            visible = float(np.where(area > 0, seen / np.maximum(area, 1), 1.0).min())
            if visible > best_visible:
                best, best_visible = owner, visible
            if visible >= MIN_VISIBLE:
                break
        T = self.num_frames
        owner = best[:T]

        # Composite at output resolution: coverage of every layer by average pooling the fine owner map.
        H, s = self.image_size, self.supersample
        coverage = np.stack([(owner == j).reshape(T, H, s, H, s).mean(axis=(2, 4), dtype=np.float32)
                             for j in range(n + 1)])  # (n + 1, T, H, W)
        video = coverage[0][..., None] * background[None]
        for j, colour in enumerate(colours):
            video = video + coverage[j + 1][..., None] * colour
        tracks = coverage.argmax(0)  # (T, H, W)
        if self.occluders:
            bars, colour = self._occluders(np.random.default_rng([self.seed, index, 0, 4]), bg_colours)
            video = np.where(bars[None, ..., None], colour, video)
            tracks = np.where(bars[None], 0, tracks)
        return np.clip(video, 0.0, 1.0).astype(np.float32), tracks, n

    def _camouflage_colour(self, rng: np.random.Generator, bg: list[np.ndarray]) -> np.ndarray:
        """A colour of the background texture moved by an RGB distance of 0.10-0.16 in a random direction."""
        base = bg[0] + rng.uniform(0, 1) * (bg[1] - bg[0])
        for _ in range(30):
            step = rng.normal(size=3)
            colour = base + rng.uniform(*CAMOUFLAGE_DISTANCE) * step / max(float(np.linalg.norm(step)), 1e-6)
            if ((colour >= 0) & (colour <= 1)).all():
                break
        return np.clip(colour, 0, 1).astype(np.float32)

    def _occluders(self, rng: np.random.Generator, bg: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        """(H, W) bool mask of ``occluders`` static vertical or horizontal bars, and their flat colour."""
        bars = np.zeros((self.image_size, self.image_size), dtype=bool)
        for _ in range(self.occluders):
            width = rng.uniform(*OCCLUDER_WIDTH)
            start = rng.uniform(0.1, 0.9 - width)
            inside = (self._coarse >= start) & (self._coarse < start + width)
            if rng.random() < 0.5:
                bars[:, inside] = True
            else:
                bars[inside, :] = True
        colour = np.clip(0.5 * (bg[0] + bg[1]) * rng.uniform(0.6, 0.9), 0, 1).astype(np.float32)
        return bars, colour

    def _background(self, rng: np.random.Generator) -> tuple[np.ndarray, list[np.ndarray]]:
        """(H, W, 3) texture between two colours, and those colours."""
        c0 = random_colour(rng, saturation=(0.0, 0.7), value=(0.15, 0.85))
        c1 = random_colour(rng, saturation=(0.0, 0.7), value=(0.15, 0.85))
        c1 = c0 + self.texture_contrast * 0.6 * (c1 - c0) / max(float(np.linalg.norm(c1 - c0)), 1e-6)
        c1 = np.clip(c1, 0, 1)
        x, y = self._coarse[None, :], self._coarse[:, None]
        field = np.zeros((self.image_size, self.image_size), dtype=np.float32)
        for _ in range(3):
            angle, freq, phase = rng.uniform(0, math.pi), rng.uniform(1.5, 5.0), rng.uniform(0, 2 * math.pi)
            field += np.sin(2 * math.pi * freq * (x * math.cos(angle) + y * math.sin(angle)) + phase)
        t = ((field / 3.0 + 1) / 2)[..., None]  # (H, W, 1) in [0, 1]
        return ((1 - t) * c0 + t * c1).astype(np.float32), [c0, c1]

    @staticmethod
    def _shape_colour(rng: np.random.Generator, bg: list[np.ndarray], shapes: list[np.ndarray]) -> np.ndarray:
        """A saturated colour far from the background and the other shapes (best of 30 tries)."""
        best, best_score = None, -math.inf
        for _ in range(30):
            colour = random_colour(rng, saturation=(0.6, 1.0), value=(0.6, 1.0))
            score = min(min_distance(colour, bg) / 0.6, min_distance(colour, shapes) / 0.35)
            if score > best_score:
                best, best_score = colour, score
            if score >= 1.0:
                break
        return best

    def _shape_masks(self, rng: np.random.Generator, kind: int, size: float, entering: bool = False) -> np.ndarray:
        """(T, S, S) boolean masks of one shape of equal-area radius ``size`` moving along its path, with
        T = max(num_frames, CHECK_FRAMES). An ``entering`` shape starts outside a border, just touches it at a
        frame between 2 and 8, moves straight in and bounces inside the image from then on."""
        T = max(self.num_frames, CHECK_FRAMES)
        t = np.arange(T, dtype=np.float32)[:, None, None]  # (T, 1, 1)
        x, y = self._fine[None, None, :], self._fine[None, :, None]  # (1, 1, S), (1, S, 1)
        speed, heading = rng.uniform(MIN_SPEED, MAX_SPEED), rng.uniform(0, 2 * math.pi)
        if KINDS[kind] == "circle":
            reach = size
        else:
            sides = 4 if KINDS[kind] == "square" else 3
            reach = size * math.sqrt(2 * math.pi / (sides * math.sin(2 * math.pi / sides)))  # circumradius
        c0 = rng.uniform(reach, 1 - reach, size=2)
        cx = reflect(c0[0] + speed * math.cos(heading) * t, reach, 1 - reach)
        cy = reflect(c0[1] + speed * math.sin(heading) * t, reach, 1 - reach)
        if entering:
            side, t_in = int(rng.integers(4)), rng.uniform(2, CHECK_FRAMES // 2)
            normal = speed * rng.uniform(0.6, 1.0)  # inward speed, at least 60% of the speed
            u = -reach + normal * (t - t_in)  # distance of the centre inside the border (linear, then bouncing)
            u = np.where(u < reach, u, reflect(u, reach, 1 - reach))
            along = reflect(rng.uniform(reach, 1 - reach) + rng.uniform(-1, 1) * math.sqrt(speed**2 - normal**2) * t,
                             reach, 1 - reach)
            across = u if side < 2 else 1 - u
            cx, cy = (across, along) if side % 2 == 0 else (along, across)
        if KINDS[kind] == "circle":
            return (x - cx) ** 2 + (y - cy) ** 2 <= size**2
        theta = rng.uniform(0, 2 * math.pi / sides) + rng.uniform(-0.05, 0.05) * t  # slow rotation
        apothem = reach * math.cos(math.pi / sides)
        inside = np.ones((T, self._fine.shape[0], self._fine.shape[0]), dtype=bool)
        for k in range(sides):
            a = theta + 2 * math.pi * k / sides + math.pi / sides  # outward edge normals
            inside &= (x - cx) * np.cos(a) + (y - cy) * np.sin(a) <= apothem
        return inside
