"""Image datamodules. Every dataset yields dicts ``{"image": (C, H, W) in [-1, 1], "label": int64, ...}``.

- :class:`ShapesDataModule` — procedural coloured shapes, generated on the fly (no files).
- :class:`FashionMNISTDataModule` — Fashion-MNIST from Debian's ``dataset-fashion-mnist`` or a download.
- :class:`ImageFolderDataModule` — any folder of images, optionally with class subfolders.
- :class:`TokenShardDataModule` — codes written by ``tokgen tokenize`` (generator training).
"""

from .base import ImageDataModule
from .fmnist import FashionMNISTDataModule
from .folder import ImageFolderDataModule
from .shapes import ShapesDataModule, ShapesDataset
from .tokens import TokenShardDataModule

__all__ = [
    "ImageDataModule",
    "ShapesDataset",
    "ShapesDataModule",
    "FashionMNISTDataModule",
    "ImageFolderDataModule",
    "TokenShardDataModule",
]
