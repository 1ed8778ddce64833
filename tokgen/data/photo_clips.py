"""Photo clips: synthetic-but-natural video smoke data with ground-truth mover masks.

A camera pans and zooms over one of the photos shipped with scikit-image (``skimage.data``: public-domain or
freely licensed images, nothing downloaded), and small sprites cut from other photos (elliptic patches of
natural texture) move over the view, some entering from a border mid-clip. The view is a linear path of the
crop window (centre and size), rendered by an affine warp; sprites move in screen coordinates at constant
velocity, bouncing off the borders, and are painted in a fixed depth order with soft (anti-aliased) edges. The
ground-truth id of a pixel is the sprite whose alpha there is at least one half (0 = the photo).

Clip ``i`` is a pure function of ``(seed, i)``; a clip of ``2T`` frames starts with the clip of ``T`` frames.
Samples: ``{"video": (T, 3, H, W) float32 in [-1, 1], "tracks": (T, H, W) int64, "num_shapes": int64}`` (the
keys of :class:`tokgen.data.moving_shapes.MovingShapesDataset`, so both feed the same code).
"""

from __future__ import annotations

import math

import numpy as np

from .base import check_int
from .moving_shapes import RenderedClips, reflect

PHOTOS = ("astronaut", "coffee", "chelsea", "rocket", "cat", "immunohistochemistry", "hubble_deep_field")
VIEW = (0.45, 0.75)  # crop window side, as a fraction of the photo's shorter side
ZOOM = 0.2  # the window side changes by up to this fraction over 16 frames
PAN = 0.12  # the window centre moves by up to this fraction of the shorter side over 16 frames
SPEED_PX = (0.7, 3.0)  # sprite speed in output pixels per frame
REFERENCE_FRAMES = 16  # camera rates are per this many frames, whatever the clip length


def _load_photos() -> list[np.ndarray]:
    import skimage.data

    return [np.asarray(getattr(skimage.data, name)(), dtype=np.uint8) for name in PHOTOS]


class PhotoMoversDataset(RenderedClips):
    """Camera motion over ``skimage.data`` photos with ``min_movers..max_movers`` sprites (see the module
    docstring).

    Args:
        num_clips: dataset length.
        num_frames: frames per clip T.
        image_size: H = W of the output.
        min_movers, max_movers: inclusive range of sprites per clip.
        mover_size_px: ``(lo, hi)`` sprite diameter range in output pixels.
        enter_fraction: probability that a sprite starts outside the view and enters between frames 2 and 8.
        camera: move the camera (pan + zoom); False = a static view of the photo.
        seed: clip ``i`` is generated from ``(seed, i)``.
    """

    def __init__(self, num_clips: int, num_frames: int = 16, image_size: int = 128, min_movers: int = 2,
                 max_movers: int = 5, mover_size_px: tuple[float, float] = (6.0, 14.0), enter_fraction: float = 0.3,
                 camera: bool = True, seed: int = 0) -> None:
        self.num_clips = check_int("num_clips", num_clips, minimum=0)
        self.num_frames = check_int("num_frames", num_frames, minimum=1)
        self.image_size = check_int("image_size", image_size, minimum=16)
        self.min_movers = check_int("min_movers", min_movers, minimum=0)
        self.max_movers = check_int("max_movers", max_movers, minimum=min_movers)
        lo, hi = (float(v) for v in mover_size_px)
        if not 2.0 <= lo <= hi <= image_size / 2:
            raise ValueError(f"mover_size_px={tuple(mover_size_px)!r} must be (lo, hi) pixels with "
                             f"2 <= lo <= hi <= image_size / 2 = {image_size / 2}")
        self.mover_size_px = (lo, hi)
        if not 0.0 <= enter_fraction <= 1.0:
            raise ValueError(f"enter_fraction must be a probability in [0, 1], got {enter_fraction!r}")
        self.enter_fraction, self.camera = float(enter_fraction), bool(camera)
        self.seed = check_int("seed", seed, minimum=0)
        self._photos: list[np.ndarray] | None = None

    def render(self, index: int) -> tuple[np.ndarray, np.ndarray, int]:
        """Clip ``index``: (video (T, H, W, 3) uint8, tracks (T, H, W) int, number of sprites)."""
        import cv2

        if self._photos is None:
            self._photos = _load_photos()
        rng = np.random.default_rng([self.seed, index])
        T, S = self.num_frames, self.image_size
        scene = int(rng.integers(len(PHOTOS)))
        photo = self._photos[scene]
        ph, pw = photo.shape[:2]
        short = min(ph, pw)
        side0 = rng.uniform(*VIEW) * short
        side1 = side0 * (1 + rng.uniform(-ZOOM, ZOOM)) if self.camera else side0
        centre0 = np.array([rng.uniform(side0 / 2, pw - side0 / 2), rng.uniform(side0 / 2, ph - side0 / 2)])
        pan = rng.uniform(-PAN, PAN, size=2) * short if self.camera else np.zeros(2)
        video = np.empty((T, S, S, 3), dtype=np.uint8)
        for t in range(T):
            u = t / REFERENCE_FRAMES
            side = side0 + (side1 - side0) * u
            centre = centre0 + pan * u
            half = side / 2
            centre = np.clip(centre, [half, half], [pw - half, ph - half])  # the view stays on the photo
            scale = side / S
            to_photo = np.float32([[scale, 0, centre[0] - half], [0, scale, centre[1] - half]])
            video[t] = cv2.warpAffine(photo, to_photo, (S, S), flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
                                      borderMode=cv2.BORDER_REFLECT)

        n = int(rng.integers(self.min_movers, self.max_movers + 1))
        tracks = np.zeros((T, S, S), dtype=np.int64)
        out = video.astype(np.float32)
        yy, xx = np.mgrid[0:S, 0:S].astype(np.float32) + 0.5
        t = np.arange(T, dtype=np.float32)
        for j in range(n):
            sprite_rng = np.random.default_rng([self.seed, index, j + 1])
            source = self._photos[(scene + 1 + int(sprite_rng.integers(len(PHOTOS) - 1))) % len(PHOTOS)]
            size = sprite_rng.uniform(*self.mover_size_px)
            a = size / 2 * sprite_rng.uniform(0.8, 1.25)
            b = size * size / 4 / a  # semi-axes of an ellipse of the area of a disc of diameter ``size``
            angle = sprite_rng.uniform(0, math.pi)
            reach = max(a, b)
            speed, heading = sprite_rng.uniform(*SPEED_PX), sprite_rng.uniform(0, 2 * math.pi)
            start = sprite_rng.uniform(reach, S - reach, size=2)
            x = reflect(start[0] + speed * math.cos(heading) * t, reach, S - reach)
            y = reflect(start[1] + speed * math.sin(heading) * t, reach, S - reach)
            if sprite_rng.random() < self.enter_fraction:  # enter from the left or the top border
                t_in = sprite_rng.uniform(2, REFERENCE_FRAMES // 2)
                inward = -reach + speed * (t - t_in)
                inward = np.where(inward < reach, inward, reflect(inward, reach, S - reach))
                if sprite_rng.random() < 0.5:
                    x = inward
                else:
                    y = inward
            patch_side = int(2 * reach) + 4
            py, px = sprite_rng.integers(0, source.shape[0] - patch_side), sprite_rng.integers(0, source.shape[1] - patch_side)
            patch = source[py:py + patch_side, px:px + patch_side].astype(np.float32)
            cos, sin = math.cos(angle), math.sin(angle)
            for f in range(T):
                dx, dy = xx - x[f], yy - y[f]
                r = np.sqrt(((dx * cos + dy * sin) / a) ** 2 + ((-dx * sin + dy * cos) / b) ** 2)
                alpha = np.clip((1 - r) * min(a, b) + 0.5, 0, 1)  # one-pixel soft edge
                if not alpha.any():
                    continue
                iy = np.clip((dy + patch_side / 2).astype(np.int64), 0, patch_side - 1)
                ix = np.clip((dx + patch_side / 2).astype(np.int64), 0, patch_side - 1)
                out[f] = out[f] * (1 - alpha[..., None]) + patch[iy, ix] * alpha[..., None]
                tracks[f][alpha >= 0.5] = j + 1
        return np.clip(out.round(), 0, 255).astype(np.uint8), tracks, n

