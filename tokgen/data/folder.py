"""A folder of image files (a flat folder of your own photos, ImageNet-style class subfolders, or any tree of
images) as a datamodule.

Layout with ``class_subfolders=True`` (labels = index of the first-level subfolder, names sorted)::

    root/
      n01440764/ a.JPEG, b.JPEG, ...      -> label 0
      n01443537/ ...                       -> label 1

With ``class_subfolders=False`` every image under ``root`` (searched recursively) gets label 0. The default
(None) decides from the folder: image files directly in ``root`` -> one class (flat folder, recursive);
otherwise class subfolders.

Transform: RGB (or grey with ``channels=1``), resize the shorter side to ``image_size`` (bicubic, antialiased),
center crop to ``image_size`` x ``image_size``, scale to [-1, 1]; random horizontal flip on the training split only.

Validation comes from ``val_root`` (same layout and class names) or, when it is None, from a deterministic
split of ``root`` by file (``val_size`` files, or a ``val_fraction`` of them) drawn with ``seed``; the held-out
files are kept in that random order, so the first validation images (the grid) come from all over the folder
rather than from the first few file names. Test = validation.

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


SIXTEEN_BIT_MODES = ("I;16", "I;16B", "I;16L", "I;16N")


def open_image(path: str, mode: str = "RGB") -> Image.Image:
    """Read an image file completely and convert it to ``mode`` ("RGB" or "L").

    16-bit greyscale files (PIL modes I;16*, and mode I holding values above 255) are scaled to 8 bit (v / 257)
    first: PIL's own conversion clips them, so a 16-bit PNG would read as nearly white. A truncated, corrupt or
    non-image file raises one ValueError naming the file, instead of a PIL traceback from deep inside a loader."""
    try:
        with Image.open(path) as img:
            img.load()
            if img.mode in SIXTEEN_BIT_MODES or img.mode == "I":
                values = np.asarray(img, dtype=np.float64)
                if img.mode in SIXTEEN_BIT_MODES or values.max(initial=0) > 255:
                    values = values / 257.0
                img = Image.fromarray(np.clip(np.rint(values), 0, 255).astype(np.uint8), mode="L")
            return img.convert(mode)
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as err:
        raise ValueError(f"image file {path} is unreadable ({type(err).__name__}: {str(err)[:160]}); accepted: "
                         f"complete PNG/JPEG/BMP/WebP files (8- or 16-bit); delete or replace this file") from None


def load_image_uint8(path: str, image_size: int, mode: str = "RGB") -> torch.Tensor:
    """One image file -> (C, S, S) uint8 (C = 3 for "RGB", 1 for "L"): read by :func:`open_image`, shorter side
    resized to S (bicubic, antialiased), center crop. The one transform shared by :class:`ImageFileDataset` and
    ``tokgen prepare-data`` (streaming chunks), so both give the same pixels for the same file."""
    img = open_image(path, mode)
    img = TF.resize(img, image_size, interpolation=InterpolationMode.BICUBIC, antialias=True)
    img = TF.center_crop(img, [image_size, image_size])
    return TF.pil_to_tensor(img)


class ImageFileDataset(Dataset):
    """List of (path, label) -> {"image": (C, S, S) in [-1, 1], "label": int64}; C = 3 (RGB) or 1 (grey)."""

    def __init__(self, samples: list[tuple[str, int]], image_size: int, random_flip: bool = False,
                 channels: int = 3) -> None:
        self.samples = samples
        self.image_size = image_size
        self.random_flip = random_flip
        self.channels = channels

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        path, label = self.samples[index]
        image = load_image_uint8(path, self.image_size, "RGB" if self.channels == 3 else "L")
        image = image.float().div_(127.5).sub_(1.0)  # (C, S, S) in [-1, 1]
        if self.random_flip and torch.rand(()) < 0.5:
            image = image.flip(-1)
        return {"image": image, "label": torch.tensor(label, dtype=torch.int64)}


def has_top_level_images(root: str, extensions: tuple[str, ...]) -> bool:
    """Whether ``root`` holds accepted image files directly (a flat folder rather than class subfolders)."""
    return any(e.is_file() and e.name.lower().endswith(extensions) for e in os.scandir(root))


def _class_names(root: str) -> list[str]:
    return sorted(e.name for e in os.scandir(root) if e.is_dir() and not e.name.startswith("."))


def find_images(folder: str, extensions: tuple[str, ...]) -> list[str]:
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
        val_fraction: fraction of ``root``'s files held out for validation when ``val_root`` is None (0 < f < 1).
        val_size: number of ``root``'s files held out instead of a fraction (takes precedence over val_fraction).
        class_subfolders: labels from first-level subfolders; False -> label 0, images found recursively;
            None (default) -> False when ``root`` holds image files directly, else True.
        channels: 3 (RGB) or 1 (grey).
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
        val_size: int | None = None,
        class_subfolders: bool | None = None,
        channels: int = 3,
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
        if channels not in (1, 3):
            raise ValueError(f"channels must be 1 (grey) or 3 (RGB), got {channels!r}")
        self.channels = channels
        if not (isinstance(val_fraction, (int, float)) and not isinstance(val_fraction, bool) and 0 < val_fraction < 1):
            raise ValueError(f"val_fraction must be a float in (0, 1), got {val_fraction!r}")
        self.val_fraction = float(val_fraction)
        self.val_size = None if val_size is None else check_int("val_size", val_size, minimum=1)
        if class_subfolders is None and os.path.isdir(self.root):
            class_subfolders = not has_top_level_images(self.root, self.extensions_of(extensions))
        self.class_subfolders = class_subfolders if class_subfolders is None else bool(class_subfolders)
        if isinstance(extensions, str) or not extensions or not all(isinstance(e, str) and e for e in extensions):
            raise ValueError(f"extensions must be a non-empty list of file extensions like '.png', got {extensions!r}")
        self.extensions = self.extensions_of(extensions)
        self.random_flip = bool(random_flip)
        if num_classes is not None:
            check_int("num_classes", num_classes, minimum=1)
        if self.class_subfolders is False:
            if num_classes not in (None, 1):
                raise ValueError(f"num_classes must be 1 (or None) when class_subfolders is false, got {num_classes!r}")
            num_classes = 1
        elif num_classes is None and os.path.isdir(self.root):
            num_classes = len(_class_names(self.root)) or None
        self.num_classes = num_classes
        self.classes: list[str] | None = None
        self.save_hyperparameters()

    @staticmethod
    def extensions_of(extensions) -> tuple[str, ...]:
        """Accepted extensions, lower case with a leading dot."""
        return tuple("." + e.lower().lstrip(".") for e in extensions)

    # ------------------------------------------------------------------------------------------------
    def _check_dir(self, path: str, name: str) -> None:
        if not os.path.isdir(path):
            raise FileNotFoundError(f"{name} {path!r} does not exist or is not a folder")

    def _scan(self, root: str, name: str, class_to_idx: dict[str, int] | None) -> list[tuple[str, int]]:
        """(path, label) pairs under ``root``; ``class_to_idx`` None -> single class 0."""
        self._check_dir(root, name)
        if class_to_idx is None:
            samples = [(p, 0) for p in find_images(root, self.extensions)]
        else:
            samples = []
            for cls in _class_names(root):
                if cls not in class_to_idx:
                    raise ValueError(
                        f"class subfolder {cls!r} of {name} {root!r} is not among the {len(class_to_idx)} "
                        f"classes of root {self.root!r}"
                    )
                samples += [(p, class_to_idx[cls]) for p in find_images(os.path.join(root, cls), self.extensions)]
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
        self._check_dir(self.root, "root")
        if self.class_subfolders is None:  # decided now that root exists
            self.class_subfolders = not has_top_level_images(self.root, self.extensions)
            if not self.class_subfolders and self.num_classes not in (None, 1):
                raise ValueError(f"num_classes={self.num_classes} but root {self.root!r} holds images directly "
                                 f"(one class); put them in one subfolder per class or drop num_classes")
            self.num_classes = 1 if not self.class_subfolders else self.num_classes
        if self.class_subfolders:
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
            if self.val_size is not None and self.val_size >= len(samples):
                raise ValueError(f"val_size={self.val_size} leaves no training image: root {self.root!r} holds "
                                 f"{len(samples)} images; accepted 1..{len(samples) - 1}")
            n_val = self.val_size or min(max(1, round(self.val_fraction * len(samples))), len(samples) - 1)
            val_idx, train_idx = order[:n_val], np.sort(order[n_val:])  # validation in random order: varied grids
            train_samples = [samples[i] for i in train_idx]
            val_samples = [samples[i] for i in val_idx]

        self.train_set = ImageFileDataset(train_samples, self.image_size, random_flip=self.random_flip,
                                          channels=self.channels)
        self.val_set = ImageFileDataset(val_samples, self.image_size, random_flip=False, channels=self.channels)
        self.test_set = self.val_set
