"""Image datamodules. Every dataset yields dicts ``{"image": (C, H, W) in [-1, 1], "label": int64, ...}``.

- :class:`ShapesDataModule` — procedural coloured shapes, generated on the fly (no files).
- :class:`FashionMNISTDataModule` — Fashion-MNIST from Debian's ``dataset-fashion-mnist`` or a download.
- :class:`ImageFolderDataModule` — any folder of images, optionally with class subfolders.
"""

from .base import ImageDataModule
from .fmnist import FashionMNISTDataModule
from .folder import ImageFolderDataModule
from .shapes import ShapesDataModule, ShapesDataset

__all__ = [
    "ImageDataModule",
    "ShapesDataset",
    "ShapesDataModule",
    "FashionMNISTDataModule",
    "ImageFolderDataModule",
]
