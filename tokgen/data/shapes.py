"""Procedural coloured shapes: an embedded dataset of varied complexity that needs no files.

Image ``i`` of a ``ShapesDataset`` is a pure function of ``(seed, i)``: it is drawn with
``np.random.default_rng([seed, i])``, so the dataset is indexable, identical on every machine and run,
and costs no storage.

How an image is drawn:

1. Background: one plain colour, or a linear gradient between two colours along a random direction.
2. ``n ~ U{min_shapes..max_shapes}`` shapes, each a circle, square (axis-aligned or rotated) or
   equilateral triangle, painted in order so later shapes occlude earlier ones. A shape's *size* is the
   radius of the circle of equal area, drawn in [0.12, 0.30] of the image side, so sizes compare areas
   across kinds. Shapes lie fully inside the image. Colours are saturated and kept apart from the
   background and from the other shapes.
3. Every shape must keep at least 40% of its area visible; otherwise positions are re-drawn (and all
   sizes shrunk by 10%) up to 12 times, so ``num_shapes`` matches what one can see.
4. Shapes are rasterised as boolean masks on a grid 4x finer (2x above 64 px) and average-pooled down,
   which anti-aliases the edges.

Samples: ``{"image": (3, H, W) float32 in [-1, 1], "label": int64 (kind of the largest shape:
0 circle, 1 square, 2 triangle), "num_shapes": int64}``.
"""

from __future__ import annotations

import colorsys
import math

import numpy as np
import torch
from torch.utils.data import Dataset

from .base import ImageDataModule, check_choice, check_int

KINDS = ("circle", "square", "triangle")
BACKGROUNDS = ("plain", "gradient", "mixed")

MIN_SIZE, MAX_SIZE = 0.12, 0.30  # equal-area radius, as a fraction of the image side
MIN_VISIBLE = 0.4  # fraction of each shape's area that must stay visible
MAX_ATTEMPTS = 12  # layouts tried before accepting the last one
SHRINK = 0.9  # size factor applied after each rejected layout
MIN_BG_DISTANCE = 0.5  # RGB distance (colours in [0, 1]) between a shape and the background
MIN_SHAPE_DISTANCE = 0.3  # RGB distance between two shapes


def _check_shape_args(image_size: int, min_shapes: int, max_shapes: int, background: str) -> None:
    check_int("image_size", image_size, minimum=8)
    check_int("min_shapes", min_shapes, minimum=1)
    check_int("max_shapes", max_shapes, minimum=1)
    if max_shapes < min_shapes:
        raise ValueError(f"max_shapes must be >= min_shapes={min_shapes}, got max_shapes={max_shapes}")
    check_choice("background", background, BACKGROUNDS)


def random_colour(rng: np.random.Generator, saturation: tuple, value: tuple) -> np.ndarray:
    """A random RGB colour in [0, 1] (float32): uniform hue, saturation and value drawn in the given ranges."""
    rgb = colorsys.hsv_to_rgb(rng.random(), rng.uniform(*saturation), rng.uniform(*value))
    return np.array(rgb, dtype=np.float32)


def min_distance(colour: np.ndarray, others: list[np.ndarray]) -> float:
    """Smallest RGB distance from ``colour`` to any of ``others`` (inf when there are none)."""
    return min((float(np.linalg.norm(colour - o)) for o in others), default=math.inf)


class ShapesDataset(Dataset):
    """Deterministic procedural images of 1..N coloured shapes (see the module docstring).

    Args:
        num_images: dataset length.
        image_size: side H = W of the square images.
        min_shapes, max_shapes: inclusive range of the number of shapes per image.
        seed: image ``i`` is generated from ``(seed, i)``; datasets with different seeds never share images.
        background: "plain", "gradient" or "mixed" (half of each).
    """

    kinds = KINDS

    def __init__(
        self,
        num_images: int,
        image_size: int = 32,
        min_shapes: int = 1,
        max_shapes: int = 4,
        seed: int = 0,
        background: str = "mixed",
    ) -> None:
        check_int("num_images", num_images, minimum=0)
        _check_shape_args(image_size, min_shapes, max_shapes, background)
        self.num_images = num_images
        self.image_size = image_size
        self.min_shapes = min_shapes
        self.max_shapes = max_shapes
        self.seed = check_int("seed", seed, minimum=0)
        self.background = background

        # Pixel-centre coordinates in [0, 1] on the supersampled grid, kept 1D for broadcasting.
        self.supersample = 4 if image_size <= 64 else 2
        fine = image_size * self.supersample
        coords = (np.arange(fine, dtype=np.float32) + 0.5) / fine
        self._fine_x = coords[None, :]  # (1, S)
        self._fine_y = coords[:, None]  # (S, 1)
        # Output-resolution coordinates for the (smooth) background.
        coords = (np.arange(image_size, dtype=np.float32) + 0.5) / image_size
        self._x = coords[None, :]  # (1, H)
        self._y = coords[:, None]  # (H, 1)

    def __len__(self) -> int:
        return self.num_images

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        if not 0 <= index < self.num_images:
            raise IndexError(f"index {index} out of range for ShapesDataset of {self.num_images} images")
        image, label, num_shapes = self.render(index)  # image: (H, W, 3) in [0, 1]
        image = torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1)))  # (3, H, W)
        return {
            "image": (image * 2 - 1).clamp_(-1, 1),
            "label": torch.tensor(label, dtype=torch.int64),
            "num_shapes": torch.tensor(num_shapes, dtype=torch.int64),
        }

    # ------------------------------------------------------------------------------------------------
    def render(self, index: int) -> tuple[np.ndarray, int, int]:
        """Draw image ``index``; returns (image (H, W, 3) float32 in [0, 1], label, num_shapes)."""
        rng = np.random.default_rng([self.seed, index])
        n = int(rng.integers(self.min_shapes, self.max_shapes + 1))
        kinds = rng.integers(0, len(KINDS), size=n)
        sizes = rng.uniform(MIN_SIZE, MAX_SIZE, size=n)
        label = int(kinds[np.argmax(sizes)])  # sizes are equal-area radii, so this is the largest area

        background, bg_colours = self._background(rng)  # (H, W, 3), colours used
        colours: list[np.ndarray] = []
        for _ in range(n):
            colours.append(self._shape_colour(rng, bg_colours, colours))

        # Lay the shapes out so that each stays at least MIN_VISIBLE visible.
        scale = 1.0
        for _ in range(MAX_ATTEMPTS):
            masks = [self._rasterise(rng, int(k), s * scale) for k, s in zip(kinds, sizes)]  # n x (S, S)
            owner = np.full(masks[0].shape, -1, dtype=np.int8)  # (S, S) index of the visible shape
            for j, mask in enumerate(masks):
                owner[mask] = j
            visible = [np.count_nonzero(owner == j) / max(np.count_nonzero(m), 1) for j, m in enumerate(masks)]
            if min(visible) >= MIN_VISIBLE:
                break
            scale *= SHRINK

        # Composite: average-pool each shape's ownership map to get its coverage of every output pixel.
        H, s = self.image_size, self.supersample
        image = background.copy()  # (H, W, 3)
        for j, colour in enumerate(colours):
            coverage = (owner == j).reshape(H, s, H, s).mean(axis=(1, 3), dtype=np.float32)  # (H, W)
            image += coverage[..., None] * (colour - background)
        return np.clip(image, 0.0, 1.0), label, n

    def _background(self, rng: np.random.Generator) -> tuple[np.ndarray, list[np.ndarray]]:
        """Plain colour or linear gradient: returns ((H, W, 3) image, list of its end colours)."""
        use_gradient = self.background == "gradient" or (self.background == "mixed" and rng.random() < 0.5)
        c0 = random_colour(rng, saturation=(0.0, 0.8), value=(0.05, 0.95))
        H = self.image_size
        if not use_gradient:
            return np.broadcast_to(c0, (H, H, 3)).astype(np.float32), [c0]
        c1 = c0
        for _ in range(20):  # make the gradient visible
            c1 = random_colour(rng, saturation=(0.0, 0.8), value=(0.05, 0.95))
            if np.linalg.norm(c1 - c0) >= 0.3:
                break
        angle = rng.uniform(0, 2 * math.pi)
        cos, sin = math.cos(angle), math.sin(angle)
        # Projection on the direction, rescaled so the image corners span exactly [0, 1].
        t = ((self._x - 0.5) * cos + (self._y - 0.5) * sin) / (0.5 * (abs(cos) + abs(sin)))  # (H, W) in [-1, 1]
        t = ((t + 1) / 2)[..., None]  # (H, W, 1) in [0, 1]
        return ((1 - t) * c0 + t * c1).astype(np.float32), [c0, c1]

    def _shape_colour(self, rng: np.random.Generator, bg: list[np.ndarray], shapes: list[np.ndarray]) -> np.ndarray:
        """A saturated colour far enough from the background and the other shapes (best of 30 tries)."""
        best, best_score = None, -math.inf
        for _ in range(30):
            colour = random_colour(rng, saturation=(0.6, 1.0), value=(0.6, 1.0))
            score = min(min_distance(colour, bg) / MIN_BG_DISTANCE, min_distance(colour, shapes) / MIN_SHAPE_DISTANCE)
            if score > best_score:
                best, best_score = colour, score
            if score >= 1.0:
                break
        return best

    def _rasterise(self, rng: np.random.Generator, kind: int, size: float) -> np.ndarray:
        """Boolean (S, S) mask of one shape of equal-area radius ``size`` at a random pose inside the image."""
        if KINDS[kind] == "circle":
            cx, cy = rng.uniform(size, 1 - size, size=2)
            box = (cx - size, cx + size, cy - size, cy + size)
            x, y, window = self._window(box)  # x: (1, w), y: (h, 1)
            mask = np.zeros((self._fine_y.shape[0], self._fine_x.shape[1]), dtype=bool)  # (S, S)
            mask[window] = (x - cx) ** 2 + (y - cy) ** 2 <= size**2
            return mask

        # Regular polygon with `sides` sides: circumradius R chosen for area pi * size^2.
        sides = 4 if KINDS[kind] == "square" else 3
        R = size * math.sqrt(2 * math.pi / (sides * math.sin(2 * math.pi / sides)))
        if sides == 4 and rng.random() < 0.5:
            theta = math.pi / 4  # axis-aligned square
        else:
            theta = rng.uniform(0, 2 * math.pi / sides)
        vertex_angles = theta + 2 * math.pi * np.arange(sides) / sides
        vx, vy = R * np.cos(vertex_angles), R * np.sin(vertex_angles)
        cx = rng.uniform(-vx.min(), 1 - vx.max())  # keep every vertex inside [0, 1]
        cy = rng.uniform(-vy.min(), 1 - vy.max())
        x, y, window = self._window((cx + vx.min(), cx + vx.max(), cy + vy.min(), cy + vy.max()))
        # Inside = on the inner side of every edge: <p - c, n_k> <= apothem, n_k the outward edge normals.
        apothem = R * math.cos(math.pi / sides)
        inside = np.ones((y.shape[0], x.shape[1]), dtype=bool)  # (h, w)
        for a in vertex_angles + math.pi / sides:
            inside &= (x - cx) * math.cos(a) + (y - cy) * math.sin(a) <= apothem
        mask = np.zeros((self._fine_y.shape[0], self._fine_x.shape[1]), dtype=bool)  # (S, S)
        mask[window] = inside
        return mask

    def _window(self, box: tuple[float, float, float, float]) -> tuple[np.ndarray, np.ndarray, tuple]:
        """Fine-grid coordinates covering box = (x0, x1, y0, y1) in [0, 1], and the matching (S, S) slice.

        Only this window is tested against the shape, which makes small shapes cheap to draw.
        """
        S = self._fine_x.shape[1]
        x0, x1, y0, y1 = box
        c0, c1 = max(int(math.floor(x0 * S)) - 1, 0), min(int(math.ceil(x1 * S)) + 1, S)
        r0, r1 = max(int(math.floor(y0 * S)) - 1, 0), min(int(math.ceil(y1 * S)) + 1, S)
        return self._fine_x[:, c0:c1], self._fine_y[r0:r1], (slice(r0, r1), slice(c0, c1))


class ShapesDataModule(ImageDataModule):
    """Train / val / test splits of :class:`ShapesDataset` with disjoint seeds.

    The splits use seeds ``seed``, ``seed + 1_000_003`` and ``seed + 2_000_003``; since image ``i`` is
    drawn from ``(split_seed, i)``, no image appears in two splits. ``num_classes = 3``, ``channels = 3``.
    """

    SPLIT_SEED_OFFSETS = {"train": 0, "val": 1_000_003, "test": 2_000_003}

    def __init__(
        self,
        image_size: int = 32,
        min_shapes: int = 1,
        max_shapes: int = 4,
        train_size: int = 20000,
        val_size: int = 512,
        test_size: int = 1000,
        background: str = "mixed",
        batch_size: int = 32,
        num_workers: int = 0,
        val_batch_size: int | None = None,
        seed: int = 0,
    ) -> None:
        super().__init__(batch_size=batch_size, num_workers=num_workers, val_batch_size=val_batch_size, seed=seed)
        _check_shape_args(image_size, min_shapes, max_shapes, background)
        self.train_size = check_int("train_size", train_size, minimum=1)
        self.val_size = check_int("val_size", val_size, minimum=1)
        self.test_size = check_int("test_size", test_size, minimum=1)
        self.min_shapes, self.max_shapes, self.background = min_shapes, max_shapes, background
        self.image_size, self.channels, self.num_classes = image_size, 3, len(KINDS)
        self.save_hyperparameters()

    def split_seed(self, split: str) -> int:
        return self.seed + self.SPLIT_SEED_OFFSETS[split]

    def _dataset(self, split: str, size: int) -> ShapesDataset:
        return ShapesDataset(
            size,
            image_size=self.image_size,
            min_shapes=self.min_shapes,
            max_shapes=self.max_shapes,
            seed=self.split_seed(split),
            background=self.background,
        )

    def setup(self, stage: str | None = None) -> None:
        # Generation is lazy, so building all three splits costs nothing.
        self.train_set = self._dataset("train", self.train_size)
        self.val_set = self._dataset("val", self.val_size)
        self.test_set = self._dataset("test", self.test_size)
