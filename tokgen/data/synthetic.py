"""Synthetic data for throughput checks (``benchmarks/gpu_check.py``): no files, no decoding, the same batches
a recipe's real datamodule hands to its model, so a training step through the Lightning Trainer measures the
model and not the disk.

Both sets are a fixed pool of ``num_examples`` items drawn once from ``seed`` and cycled through (shuffled per
epoch): small enough to build in a moment, structured enough that the training loss falls within a few dozen
steps (smooth images made of a few random low-frequency waves; codes that follow the class and position).
"""
from __future__ import annotations

import math

import lightning as L
import torch
from torch.utils.data import DataLoader, Dataset

from ..images import to_uint8
from .base import check_int


class DictDataset(Dataset):
    """Rows of equal-length tensors as dicts, e.g. {"image": ..., "label": ...}."""

    def __init__(self, **tensors: torch.Tensor):
        self.tensors = tensors
        self.length = len(next(iter(tensors.values())))

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, i: int) -> dict:
        return {k: v[i] for k, v in self.tensors.items()}


def smooth_images(n: int, channels: int, size: int, generator: torch.Generator, waves: int = 4) -> torch.Tensor:
    """n images (n, C, size, size) in [-1, 1], uint8-quantised: per channel a sum of ``waves`` random 2D cosines
    of low frequency (1-4 periods per image)."""
    coords = torch.linspace(0, 2 * math.pi, size)
    yy, xx = torch.meshgrid(coords, coords, indexing="ij")
    freq = torch.randint(1, 5, (n, channels, waves, 2), generator=generator).float()
    phase = torch.rand(n, channels, waves, 1, 1, generator=generator) * 2 * math.pi
    amp = torch.rand(n, channels, waves, 1, 1, generator=generator)
    arg = freq[..., 0, None, None] * yy + freq[..., 1, None, None] * xx + phase
    x = (amp * torch.cos(arg)).sum(2) / waves ** 0.5
    x = x / x.abs().amax(dim=(-2, -1), keepdim=True).clamp(min=1e-6)
    return to_uint8(x)


class SyntheticDataModule(L.LightningDataModule):
    """Shared loaders: a shuffled training loader (last incomplete batch dropped) and a fixed validation loader,
    pinned memory when CUDA is available."""

    def __init__(self, batch_size: int, num_examples: int, num_workers: int, seed: int):
        super().__init__()
        self.batch_size = check_int("batch_size", batch_size, minimum=1)
        self.num_examples = check_int("num_examples", num_examples, minimum=1)
        if self.num_examples < self.batch_size:
            raise ValueError(f"num_examples={num_examples} must be >= batch_size={batch_size}")
        self.num_workers = check_int("num_workers", num_workers, minimum=0)
        self.seed = check_int("seed", seed, minimum=0)
        self.dataset: Dataset | None = None

    def build(self, generator: torch.Generator) -> Dataset:
        """The synthetic data set, drawn from ``generator``. Abstract: implemented by
        :class:`SyntheticImageDataModule` and :class:`SyntheticTokenDataModule`."""
        raise NotImplementedError(f"{type(self).__name__} must define build(generator)")

    def setup(self, stage: str) -> None:
        if self.dataset is None:
            self.dataset = self.build(torch.Generator().manual_seed(self.seed))

    def loader(self, shuffle: bool) -> DataLoader:
        self.setup("fit")
        return DataLoader(self.dataset, batch_size=self.batch_size, shuffle=shuffle, drop_last=shuffle,
                          generator=torch.Generator().manual_seed(self.seed), num_workers=self.num_workers,
                          persistent_workers=self.num_workers > 0, pin_memory=torch.cuda.is_available())

    def train_dataloader(self) -> DataLoader:
        return self.loader(shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self.loader(shuffle=False)


class SyntheticImageDataModule(SyntheticDataModule):
    """Images in [-1, 1] (batch key ``image``, float32) with class labels (``label``) for tokenizer recipes.

    Args:
        image_size, channels: image shape (must match the tokenizer).
        num_examples: size of the fixed pool (kept as uint8 in memory).
        num_classes: labels are drawn uniformly from 0..num_classes-1.
    """

    def __init__(self, image_size: int = 256, channels: int = 3, batch_size: int = 32, num_examples: int = 512,
                 num_classes: int = 1000, num_workers: int = 0, seed: int = 0):
        super().__init__(batch_size, num_examples, num_workers, seed)
        self.image_size = check_int("image_size", image_size, minimum=1)
        self.channels = check_int("channels", channels, minimum=1)
        self.num_classes = check_int("num_classes", num_classes, minimum=1)

    def build(self, generator: torch.Generator) -> Dataset:
        images = smooth_images(self.num_examples, self.channels, self.image_size, generator)
        labels = torch.randint(self.num_classes, (self.num_examples,), generator=generator)
        return ImageRows(images, labels)


class ImageRows(Dataset):
    """uint8 images -> float images in [-1, 1] per item (the pool stays 4x smaller than float)."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor):
        self.images, self.labels = images, labels

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> dict:
        return {"image": self.images[i].float() / 127.5 - 1, "label": self.labels[i]}


class SyntheticTokenDataModule(SyntheticDataModule):
    """Code sequences for generator recipes: batch keys ``codes`` (num_tokens,), ``label`` and ``length``, with
    the attributes TokenShardDataModule gives the GeneratorModule (codebook_size, num_tokens, num_classes,
    tokenizer = None). Code t of an example is a fixed function of its class and t, replaced by a random code with
    probability ``noise``, so a generator learns it quickly.
    """

    def __init__(self, codebook_size: int = 64000, num_tokens: int = 256, num_classes: int = 1000,
                 batch_size: int = 32, num_examples: int = 4096, noise: float = 0.1, num_workers: int = 0,
                 seed: int = 0):
        super().__init__(batch_size, num_examples, num_workers, seed)
        self.codebook_size = check_int("codebook_size", codebook_size, minimum=2)
        self.num_tokens = check_int("num_tokens", num_tokens, minimum=1)
        self.num_classes = check_int("num_classes", num_classes, minimum=0)
        if not 0.0 <= noise <= 1.0:
            raise ValueError(f"noise={noise} must be in [0, 1]")
        self.noise = noise
        self.tokenizer = None

    def build(self, generator: torch.Generator) -> Dataset:
        n, K, V = self.num_examples, self.num_tokens, self.codebook_size
        labels = torch.randint(max(self.num_classes, 1), (n,), generator=generator)
        pos = torch.arange(K)
        codes = (labels[:, None] * 7919 + pos[None] * 104729) % V
        noisy = torch.rand(n, K, generator=generator) < self.noise
        codes = torch.where(noisy, torch.randint(V, (n, K), generator=generator), codes)
        return DictDataset(codes=codes, label=labels, length=torch.full((n,), K))
