"""Evaluation data from a ``--data`` spec, and folders of generated samples.

``--data`` is resolved by :func:`tokgen.data.spec.resolve_data_spec` (one vocabulary for every command); for
evaluation the names mean:

- ``shapes``: the built-in procedural shapes (test split 1000 images, or ``num_images``),
- ``fmnist``: Fashion-MNIST (test split = the official 10,000 test images),
- ``folder:PATH``: every image under PATH (recursive; labels from class subfolders for train-features),
  resized (shorter side, bicubic, antialiased) and center-cropped to the image size,

and a YAML/JSON file or inline spec is used as written (a recipe's ``data:`` section, so ``--data
configs/tokenizer/fmnist_small.yaml`` evaluates on the data the tokenizer was trained on).
"""
from __future__ import annotations

import hashlib
import importlib
import os
from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Subset

from ..data.folder import DEFAULT_EXTENSIONS, find_images, open_image
from ..data.spec import DATA_ACCEPTED, build_datamodule, resolve_data_spec

SPLITS = ("test", "val", "train")


@dataclass
class EvalData:
    """One split of a data set, ready to iterate in a fixed order."""

    dataset: Dataset
    image_size: int
    channels: int
    num_classes: int | None
    key: dict  # identity of the images (for the real-statistics cache)

    def __len__(self) -> int:
        return len(self.dataset)

    def loader(self, batch_size: int, num_workers: int = 0, shuffle: bool = False, seed: int = 0,
               shard: tuple[int, int] = (0, 1)) -> DataLoader:
        """Batches in a fixed order; ``shard=(rank, world)`` keeps images rank, rank + world, ..."""
        rank, world = shard
        dataset = self.dataset if world == 1 else Subset(self.dataset, range(rank, len(self.dataset), world))
        generator = torch.Generator().manual_seed(seed) if shuffle else None
        return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, num_workers=num_workers,
                          generator=generator, drop_last=False)


def _folder_fingerprint(paths: list[str]) -> str:
    """Hash of the file list with sizes and modification times: a changed folder gets new cached statistics."""
    digest = hashlib.sha256()
    for p in paths:
        st = os.stat(p)
        digest.update(f"{os.path.abspath(p)}|{st.st_size}|{st.st_mtime_ns}\n".encode())
    return digest.hexdigest()[:16]


def build_data(spec: str, split: str = "test", image_size: int | None = None, channels: int | None = None,
               num_images: int | None = None, labelled: bool = False, root: str = "data") -> EvalData:
    """Resolve a ``--data`` spec to one split. ``image_size``/``channels`` are what the consumer expects
    (e.g. the tokenizer's): filled into the datamodule, and a spec that sets something else is an error."""
    if split not in SPLITS:
        raise ValueError(f"split {split!r} is not accepted; use one of {', '.join(SPLITS)}")
    if num_images is not None and (not isinstance(num_images, int) or num_images < 1):
        raise ValueError(f"num_images must be a positive integer, got {num_images!r}")
    size = 32 if image_size is None else image_size
    kind, _, path = spec.partition(":")
    # what evaluation means by each name: the split asked for, every image of a folder, no augmentation
    named_args = {
        "shapes": {"image_size": size, **({f"{split}_size": num_images} if num_images is not None else {})},
        "fmnist": {"root": root, "image_size": size},
        "folder": {"image_size": size, "random_flip": False, **(
            {"class_subfolders": True, "val_fraction": 0.1} if labelled
            else {"val_root": path, "class_subfolders": False})},
    }
    resolved = resolve_data_spec(spec, image_size, channels, named_args=named_args)
    dm = build_datamodule(resolved)
    if kind == "shapes":
        desc = {"spec": "shapes", **{k: v for k, v in dm.hparams.items() if k not in ("batch_size", "num_workers", "val_batch_size")}}
    elif kind == "fmnist":
        desc = {"spec": "fmnist", "image_size": size, "channels": dm.channels}
    elif kind == "folder" and path:
        desc = {"spec": "folder", "image_size": size, "labelled": labelled}
    else:
        desc = resolved

    for name, want in (("image size", image_size), ("channels", channels)):
        have = getattr(dm, "image_size" if name == "image size" else "channels", None)
        if want is not None and have is not None and have != want:
            raise ValueError(
                f"mismatched {name}: --data {spec} yields {have} but the model expects {want}; accepted: a data "
                f"set with {name} {want} (set it in the datamodule's init_args)"
            )

    dm.setup({"train": "fit", "val": "validate", "test": "test"}[split])
    dataset = getattr(dm, f"{split}_set", None)
    if dataset is None:
        dataset = getattr(dm, f"{split}_dataloader")().dataset
    if spec.startswith("folder:"):
        desc["files"] = _folder_fingerprint([p for p, _ in dataset.samples])
    available = len(dataset)
    if num_images is not None:
        if num_images > available:
            raise ValueError(f"--num-images {num_images} exceeds the {available} images of the {split} split of "
                             f"--data {spec}; accepted: 1..{available}")
        dataset = Subset(dataset, range(num_images))
    image = dataset[0]
    if not isinstance(image, dict) or "image" not in image:
        raise ValueError(f"--data {spec}: items must be dicts with an 'image' entry (tokgen datamodules), got {type(image).__name__}")
    c, h, w = image["image"].shape
    for name, want, have in (("image size", image_size, h), ("image size", image_size, w), ("channels", channels, c)):
        if want is not None and have != want:
            raise ValueError(f"mismatched {name}: --data {spec} yields {c}x{h}x{w} images but the model expects "
                             f"{channels or c}x{image_size or h}x{image_size or w}")
    key = {"data": desc, "class": type(dm).__qualname__, "split": split, "num_images": len(dataset),
           "image_shape": [c, h, w]}
    return EvalData(dataset, image_size=h, channels=c, num_classes=getattr(dm, "num_classes", None), key=key)


class SampleFolder(Dataset):
    """Generated samples for gFID: every image file under ``folder`` (recursive, sorted) as uint8 (C, S, S).

    Images are not resized: each must be ``image_size`` x ``image_size`` (the real set's size), and is
    converted to ``channels`` (RGB, or grey "L").
    """

    def __init__(self, folder: str, image_size: int, channels: int, num_images: int | None = None):
        if not os.path.isdir(folder):
            raise FileNotFoundError(f"--samples {folder} does not exist or is not a folder")
        self.paths = find_images(folder, DEFAULT_EXTENSIONS)
        if not self.paths:
            raise FileNotFoundError(f"no images found under --samples {folder}; accepted extensions: {', '.join(DEFAULT_EXTENSIONS)}")
        if num_images is not None:
            if num_images > len(self.paths):
                raise ValueError(f"--num-images {num_images} exceeds the {len(self.paths)} images in --samples {folder}")
            self.paths = self.paths[:num_images]
        self.folder, self.image_size, self.channels = folder, image_size, channels
        self[0]  # fail now on a wrong size rather than mid-run

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        path = self.paths[index]
        img = open_image(path, "RGB" if self.channels == 3 else "L")
        if img.size != (self.image_size, self.image_size):
            raise ValueError(
                f"mismatched image size: sample {path} is {img.size[0]}x{img.size[1]} but the real images are "
                f"{self.image_size}x{self.image_size}; save samples at the real set's size"
            )
        x = torch.from_numpy(np.asarray(img).copy())
        x = x.permute(2, 0, 1) if x.dim() == 3 else x[None]  # (C, S, S) uint8
        return {"image_uint8": x}
