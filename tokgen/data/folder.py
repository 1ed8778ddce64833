"""A folder of image files (ImageNet-style class subfolders, or any tree of images) as a datamodule.

Layout with ``class_subfolders=True`` (labels = index of the first-level subfolder, names sorted)::

    root/
      n01440764/ a.JPEG, b.JPEG, ...      -> label 0
      n01443537/ ...                       -> label 1

With ``class_subfolders=False`` every image under ``root`` (searched recursively) gets label 0.

Transform: RGB, resize the shorter side to ``image_size`` (bicubic, antialiased), center crop to
``image_size`` x ``image_size``, scale to [-1, 1]; random horizontal flip on the training split only.

Validation comes from ``val_root`` (same layout and class names) or, when it is None, from a
deterministic ``val_fraction`` split of ``root`` drawn with ``seed``. Test = validation.

Paths are only checked in ``setup()``, so recipes that point at e.g. /data/imagenet can be built on
machines without the data. ``num_classes`` is known right after ``__init__`` when it is passed
explicitly, when ``class_subfolders=False`` (1), or when ``root`` already exists (its subfolders are
counted); otherwise it is None until ``setup()``.
"""

from __future__ import annotations

import os

import numpy as np
import torch
import torchvision.transforms.functional as TF
from PIL import Image
from torch.utils.data import Dataset
from torchvision.transforms import InterpolationMode

from .base import ImageDataModule, check_int

DEFAULT_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp")


def load_image_uint8(path: str, image_size: int) -> torch.Tensor:
    """One image file -> (3, S, S) uint8: RGB, shorter side resized to S (bicubic, antialiased), center crop.
    The one transform shared by :class:`ImageFileDataset` and ``tokgen prepare-data`` (streaming chunks), so
    both give the same pixels for the same file."""
    with Image.open(path) as img:
        img = img.convert("RGB")
    img = TF.resize(img, image_size, interpolation=InterpolationMode.BICUBIC, antialias=True)
    img = TF.center_crop(img, [image_size, image_size])
    return TF.pil_to_tensor(img)


class ImageFileDataset(Dataset):
    """List of (path, label) -> {"image": (3, S, S) in [-1, 1], "label": int64}."""

    def __init__(self, samples: list[tuple[str, int]], image_size: int, random_flip: bool = False) -> None:
        self.samples = samples
        self.image_size = image_size
        self.random_flip = random_flip

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        path, label = self.samples[index]
        image = load_image_uint8(path, self.image_size).float().div_(127.5).sub_(1.0)  # (3, S, S) in [-1, 1]
        if self.random_flip and torch.rand(()) < 0.5:
            image = image.flip(-1)
        return {"image": image, "label": torch.tensor(label, dtype=torch.int64)}


def _class_names(root: str) -> list[str]:
    return sorted(e.name for e in os.scandir(root) if e.is_dir() and not e.name.startswith("."))


def _find_images(folder: str, extensions: tuple[str, ...]) -> list[str]:
    """All files under ``folder`` (recursive, symlinks followed) whose extension is accepted, sorted."""
    found = []
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=True):
        dirnames.sort()
        found.extend(os.path.join(dirpath, f) for f in sorted(filenames) if f.lower().endswith(extensions))
    return found


class ImageFolderDataModule(ImageDataModule):
    """Images from a folder, labelled by class subfolder (see the module docstring).

    Args:
        root: training images.
        image_size: output side S; images are resized (shorter side) and center-cropped to S x S.
        val_root: validation images with the same class subfolders; None -> split ``root``.
        val_fraction: fraction of ``root`` held out for validation when ``val_root`` is None (0 < f < 1).
        class_subfolders: labels from first-level subfolders; False -> label 0, images found recursively.
        extensions: accepted file extensions (case-insensitive).
        random_flip: random horizontal flips of training images.
        num_classes: optional; checked against the subfolders in ``setup()``. Needed to know the number
            of classes before ``setup()`` when ``root`` does not exist yet.
    """

    def __init__(
        self,
        root: str,
        image_size: int = 256,
        val_root: str | None = None,
        val_fraction: float = 0.01,
        class_subfolders: bool = True,
        extensions: tuple[str, ...] = DEFAULT_EXTENSIONS,
        random_flip: bool = True,
        num_classes: int | None = None,
        batch_size: int = 32,
        num_workers: int = 0,
        val_batch_size: int | None = None,
        seed: int = 0,
    ) -> None:
        super().__init__(batch_size=batch_size, num_workers=num_workers, val_batch_size=val_batch_size, seed=seed)
        self.root = str(root)
        self.val_root = None if val_root is None else str(val_root)
        self.image_size = check_int("image_size", image_size, minimum=8)
        self.channels = 3
        if not (isinstance(val_fraction, (int, float)) and not isinstance(val_fraction, bool) and 0 < val_fraction < 1):
            raise ValueError(f"val_fraction must be a float in (0, 1), got {val_fraction!r}")
        self.val_fraction = float(val_fraction)
        self.class_subfolders = bool(class_subfolders)
        if isinstance(extensions, str) or not extensions or not all(isinstance(e, str) and e for e in extensions):
            raise ValueError(f"extensions must be a non-empty list of file extensions like '.png', got {extensions!r}")
        self.extensions = tuple("." + e.lower().lstrip(".") for e in extensions)
        self.random_flip = bool(random_flip)
        if num_classes is not None:
            check_int("num_classes", num_classes, minimum=1)
        if not self.class_subfolders:
            if num_classes not in (None, 1):
                raise ValueError(f"num_classes must be 1 (or None) when class_subfolders is false, got {num_classes!r}")
            num_classes = 1
        elif num_classes is None and os.path.isdir(self.root):
            num_classes = len(_class_names(self.root)) or None
        self.num_classes = num_classes
        self.classes: list[str] | None = None
        self.save_hyperparameters()

    # ------------------------------------------------------------------------------------------------
    def _check_dir(self, path: str, name: str) -> None:
        if not os.path.isdir(path):
            raise FileNotFoundError(f"{name} {path!r} does not exist or is not a folder")

    def _scan(self, root: str, name: str, class_to_idx: dict[str, int] | None) -> list[tuple[str, int]]:
        """(path, label) pairs under ``root``; ``class_to_idx`` None -> single class 0."""
        self._check_dir(root, name)
        if class_to_idx is None:
            samples = [(p, 0) for p in _find_images(root, self.extensions)]
        else:
            samples = []
            for cls in _class_names(root):
                if cls not in class_to_idx:
                    raise ValueError(
                        f"class subfolder {cls!r} of {name} {root!r} is not among the {len(class_to_idx)} "
                        f"classes of root {self.root!r}"
                    )
                samples += [(p, class_to_idx[cls]) for p in _find_images(os.path.join(root, cls), self.extensions)]
        if not samples:
            where = "in its class subfolders" if class_to_idx is not None else "under it"
            raise FileNotFoundError(
                f"no images found in {name} {root!r} ({where}); accepted extensions: {', '.join(self.extensions)}"
            )
        return samples

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is not None:
            return
        class_to_idx = None
        if self.class_subfolders:
            self._check_dir(self.root, "root")
            self.classes = _class_names(self.root)
            if not self.classes:
                raise FileNotFoundError(
                    f"root {self.root!r} has no class subfolders; put images in one subfolder per class "
                    f"or pass class_subfolders: false"
                )
            if self.num_classes is not None and self.num_classes != len(self.classes):
                raise ValueError(
                    f"num_classes={self.num_classes} but root {self.root!r} has {len(self.classes)} class subfolders"
                )
            self.num_classes = len(self.classes)
            class_to_idx = {c: i for i, c in enumerate(self.classes)}
        samples = self._scan(self.root, "root", class_to_idx)

        if self.val_root is not None:
            train_samples, val_samples = samples, self._scan(self.val_root, "val_root", class_to_idx)
        else:
            if len(samples) < 2:
                raise ValueError(f"root {self.root!r} holds {len(samples)} image; need >= 2 to split off validation")
            order = np.random.default_rng(self.seed).permutation(len(samples))
            n_val = min(max(1, round(self.val_fraction * len(samples))), len(samples) - 1)
            val_idx, train_idx = np.sort(order[:n_val]), np.sort(order[n_val:])
            train_samples = [samples[i] for i in train_idx]
            val_samples = [samples[i] for i in val_idx]

        self.train_set = ImageFileDataset(train_samples, self.image_size, random_flip=self.random_flip)
        self.val_set = ImageFileDataset(val_samples, self.image_size, random_flip=False)
        self.test_set = self.val_set
