"""A flat folder of small photo crops, to try tokgen on natural images as a user with their own photos would.

    python benchmarks/make_photo_crops.py --out data/photo_crops --num 5000            # training photos
    python benchmarks/make_photo_crops.py --out data/photo_crops_heldout --num 1000 --photos heldout

The photos are scikit-image's sample images (shipped in its wheel, no download; public-domain or freely
licensed, see skimage.data): ``train`` = astronaut, coffee, chelsea, rocket, hubble_deep_field,
immunohistochemistry, camera, brick, grass; ``heldout`` = stereo_motorcycle, retina, coins, gravel (never in the
training folder, to check that a tokenizer generalises beyond the photos it saw). Grey photos are written as RGB.

Each crop is a random square of side uniform in [size, min(side / 3, 5 * size)] at a random place, resized to
``size`` x ``size`` (bicubic, antialiased). Files are named ``<photo>_<index>.png``, so sorted file names come
photo by photo (as in many real folders). The last line printed is one JSON object.
"""
from __future__ import annotations

import argparse
import json
import os

import numpy as np
from PIL import Image

PHOTOS = {
    "train": ("astronaut", "coffee", "chelsea", "rocket", "hubble_deep_field", "immunohistochemistry", "camera",
              "brick", "grass"),
    "heldout": ("stereo_motorcycle", "retina", "coins", "gravel"),
}


def load_photo(name: str) -> np.ndarray:
    """(H, W, 3) uint8 RGB of one skimage sample image."""
    import skimage.data

    image = getattr(skimage.data, name)()
    if isinstance(image, tuple):  # stereo pairs: the left view
        image = image[0]
    if image.ndim == 2:
        image = np.repeat(image[..., None], 3, axis=2)
    return np.ascontiguousarray(image[..., :3])


def write_photo_crops(out: str, num: int, size: int = 32, photos: tuple[str, ...] = PHOTOS["train"],
                      seed: int = 0) -> list[str]:
    """Write ``num`` crops (spread evenly over ``photos``) as PNGs into ``out``; returns the paths."""
    if num < 1 or size < 8:
        raise ValueError(f"num must be >= 1 and size >= 8, got num={num}, size={size}")
    if os.path.isdir(out) and os.listdir(out):
        raise ValueError(f"--out {out} is not empty; choose a new folder")
    os.makedirs(out, exist_ok=True)
    rng = np.random.default_rng(seed)
    images = {name: load_photo(name) for name in photos}
    paths = []
    for i in range(num):
        name = photos[i % len(photos)]
        image = images[name]
        h, w = image.shape[:2]
        side = int(rng.integers(size, max(size, min(min(h, w) // 3, 5 * size)) + 1))
        y, x = int(rng.integers(0, h - side + 1)), int(rng.integers(0, w - side + 1))
        crop = Image.fromarray(image[y:y + side, x:x + side]).resize((size, size), Image.BICUBIC, reducing_gap=None)
        path = os.path.join(out, f"{name}_{i:05d}.png")
        crop.save(path)
        paths.append(path)
    return paths


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", required=True, help="new (or empty) folder")
    p.add_argument("--num", type=int, default=5000)
    p.add_argument("--size", type=int, default=32)
    p.add_argument("--photos", default="train", help="train, heldout, or comma-separated skimage.data names")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    photos = PHOTOS.get(args.photos) or tuple(n for n in args.photos.split(",") if n)
    paths = write_photo_crops(args.out, args.num, args.size, photos, args.seed)
    result = {"out": args.out, "num": len(paths), "size": args.size, "photos": list(photos), "seed": args.seed}
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
