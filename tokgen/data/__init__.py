"""Image datamodules. Every dataset yields dicts ``{"image": (C, H, W) in [-1, 1], "label": int64, ...}``.

- :class:`ShapesDataModule` — procedural coloured shapes, generated on the fly (no files).
- :class:`FashionMNISTDataModule` — Fashion-MNIST from Debian's ``dataset-fashion-mnist`` or a download.
- :class:`ImageFolderDataModule` — any folder of images, optionally with class subfolders.
- :class:`TokenShardDataModule` — codes written by ``tokgen tokenize`` (generator training).
- :class:`VideoDataModule` — video clips: ``moving_shapes`` (synthetic, ground-truth tracks) or a video folder,
  optionally with extracted trajectories (see :mod:`tokgen.data.video`).
- :mod:`tokgen.data.streaming` — ``StreamingImageDataModule`` / ``StreamingTokenDataModule``: litdata chunks written
  by ``tokgen prepare-data``, for many ranks and mid-epoch resume (imported on use; it loads litdata).
"""

from .base import ImageDataModule
from .fmnist import FashionMNISTDataModule
from .folder import ImageFolderDataModule
from .shapes import ShapesDataModule, ShapesDataset
from .tokens import TokenShardDataModule
from .video import MovingShapesDataset, VideoDataModule, VideoFolderDataset

__all__ = [
    "ImageDataModule",
    "ShapesDataset",
    "ShapesDataModule",
    "FashionMNISTDataModule",
    "ImageFolderDataModule",
    "TokenShardDataModule",
    "MovingShapesDataset",
    "VideoFolderDataset",
    "VideoDataModule",
]
