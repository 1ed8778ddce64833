"""Fashion-MNIST as a datamodule of dict samples in [-1, 1].

Data is read by ``torchvision.datasets.FashionMNIST``, which looks for the *un-gzipped* idx files in
``<root>/FashionMNIST/raw/`` (it only checks that they exist). Offline machines get them from Debian's
``dataset-fashion-mnist`` package, which installs the four ``*.gz`` files in
``/usr/share/datasets/fashion-mnist``: when ``raw/`` lacks them, they are gunzipped from ``raw_source``
into ``raw/`` first. Online users can pass ``download=True`` instead.

Images: 28x28 grey -> zero-padded to ``image_size`` (black border, -1 after scaling) when the difference
is even and non-negative, otherwise resized bilinearly with antialiasing; grey is replicated to 3
channels when ``channels=3``. The uint8 arrays are padded / resized once in ``setup`` and kept as
uint8 (N, S, S) (4x less memory than float); each item is scaled to float [-1, 1] on access, which is
a few microseconds, with no PIL round trip.

Splits: train = the 60k official train split; val = the first ``val_size`` images of the official
test split; test = the full 10k official test split.
"""

from __future__ import annotations

import gzip
import os
import shutil

import torch
import torch.nn.functional as F
from torch.utils.data import Dataset
from torchvision.datasets import FashionMNIST

from .base import ImageDataModule, check_choice, check_int

RAW_FILES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)
TEST_SPLIT_SIZE = 10000
NATIVE_SIZE = 28


class GreyImageDataset(Dataset):
    """In-memory grey images: uint8 (N, H, W) + int64 labels (N,) -> {"image": (C, H, W) in [-1, 1], "label"}."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, channels: int) -> None:
        assert images.dtype == torch.uint8 and images.ndim == 3 and len(images) == len(labels)
        self.images = images  # (N, H, W) uint8
        self.labels = labels.to(torch.int64)  # (N,)
        self.channels = channels

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        image = self.images[index].float().div_(127.5).sub_(1.0)  # (H, W) in [-1, 1]
        return {"image": image.expand(self.channels, -1, -1).contiguous(), "label": self.labels[index]}


def resize_uint8(images: torch.Tensor, size: int, chunk: int = 10000) -> torch.Tensor:
    """uint8 (N, h, w) -> uint8 (N, size, size): zero-pad when possible, else antialiased bilinear resize."""
    pad = size - images.shape[-1]
    if pad >= 0 and pad % 2 == 0:
        p = pad // 2
        return F.pad(images, (p, p, p, p), value=0)
    out = []
    for start in range(0, len(images), chunk):
        x = images[start : start + chunk, None].float()  # (n, 1, h, w)
        x = F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
        out.append(x[:, 0].round_().clamp_(0, 255).to(torch.uint8))
    return torch.cat(out) if out else images.new_zeros((0, size, size))


class FashionMNISTDataModule(ImageDataModule):
    """Fashion-MNIST (10 classes) at ``image_size`` with 1 or 3 channels. See the module docstring.

    Args:
        root: torchvision root; the files live in ``<root>/FashionMNIST/raw/``.
        image_size: output side (28 -> 32 pads by 2 black pixels on each side).
        channels: 1 (grey) or 3 (grey replicated).
        download: let torchvision download the files when they are missing.
        raw_source: folder holding the idx files (``*.gz`` or un-gzipped) to copy into ``raw/`` when
            missing; None disables this.
        val_size: number of leading official-test images used for validation (1..10000).
    """

    def __init__(
        self,
        root: str = "data",
        image_size: int = 32,
        channels: int = 3,
        download: bool = False,
        raw_source: str | None = "/usr/share/datasets/fashion-mnist",
        val_size: int = 10000,
        batch_size: int = 32,
        num_workers: int = 0,
        val_batch_size: int | None = None,
        seed: int = 0,
    ) -> None:
        super().__init__(batch_size=batch_size, num_workers=num_workers, val_batch_size=val_batch_size, seed=seed)
        self.root = str(root)
        self.image_size = check_int("image_size", image_size, minimum=8)
        self.channels = check_choice("channels", channels, (1, 3))
        self.num_classes = 10
        self.download = bool(download)
        self.raw_source = None if raw_source is None else str(raw_source)
        self.val_size = check_int("val_size", val_size, minimum=1, maximum=TEST_SPLIT_SIZE)
        self.save_hyperparameters()

    @property
    def raw_folder(self) -> str:
        return os.path.join(self.root, "FashionMNIST", "raw")

    def _missing_raw_files(self) -> list[str]:
        return [f for f in RAW_FILES if not os.path.isfile(os.path.join(self.raw_folder, f))]

    def _ensure_raw_files(self) -> None:
        """Fill ``raw/`` from ``raw_source`` if needed; raise FileNotFoundError if that cannot work."""
        missing = self._missing_raw_files()
        if not missing:
            return
        if self.raw_source is not None and os.path.isdir(self.raw_source):
            for name in missing:
                plain, gz = os.path.join(self.raw_source, name), os.path.join(self.raw_source, name + ".gz")
                if os.path.isfile(plain):
                    _atomic_copy(plain, os.path.join(self.raw_folder, name), decompress=False)
                elif os.path.isfile(gz):
                    _atomic_copy(gz, os.path.join(self.raw_folder, name), decompress=True)
            missing = self._missing_raw_files()
        if missing and not self.download:
            raise FileNotFoundError(
                f"Fashion-MNIST not found: {self.raw_folder!r} (under root {self.root!r}) lacks "
                f"{', '.join(missing)}, and raw_source {self.raw_source!r} does not hold them (as .gz or "
                f"un-gzipped). Install Debian's `dataset-fashion-mnist` package (it puts the files in "
                f"/usr/share/datasets/fashion-mnist) or pass `download: true`."
            )

    def prepare_data(self) -> None:
        # Runs on one process per node before setup(): copy or download once.
        self._ensure_raw_files()
        if self.download:
            FashionMNIST(self.root, train=True, download=True)
            FashionMNIST(self.root, train=False, download=True)

    def _load(self, train: bool) -> GreyImageDataset:
        split = FashionMNIST(self.root, train=train, download=self.download)
        images = resize_uint8(split.data, self.image_size)  # (N, S, S) uint8
        return GreyImageDataset(images, split.targets, self.channels)

    def setup(self, stage: str | None = None) -> None:
        self._ensure_raw_files()  # no-op when prepare_data already ran
        if stage in (None, "fit") and self.train_set is None:
            self.train_set = self._load(train=True)
        if self.test_set is None:
            self.test_set = self._load(train=False)
            self.val_set = GreyImageDataset(
                self.test_set.images[: self.val_size], self.test_set.labels[: self.val_size], self.channels
            )


def _atomic_copy(src: str, dst: str, decompress: bool) -> None:
    """Copy (or gunzip) src to dst through a temporary file, so concurrent readers never see half a file."""
    os.makedirs(os.path.dirname(dst), exist_ok=True)
    tmp = f"{dst}.tmp{os.getpid()}"
    opener = gzip.open if decompress else open
    with opener(src, "rb") as fin, open(tmp, "wb") as fout:
        shutil.copyfileobj(fin, fout, length=1 << 20)
    os.replace(tmp, dst)
