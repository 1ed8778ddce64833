"""Base class shared by all image datamodules, plus small argument checkers.

Every dataset in ``tokgen.data`` returns dict samples::

    {"image": FloatTensor (C, H, W) in [-1, 1], "label": int64 scalar tensor, ...extra keys}

so the default collate turns a batch into a dict of stacked tensors, e.g.
``batch["image"]: (B, C, H, W)`` and ``batch["label"]: (B,)``.

Subclasses set ``image_size``, ``channels`` and ``num_classes`` in ``__init__`` (so a model can check
them before any data is touched) and build ``train_set``, ``val_set`` and ``test_set`` in ``setup``.
"""

from __future__ import annotations

from typing import Any

import lightning as L
import torch
from torch.utils.data import DataLoader, Dataset

# ----------------------------------------------------------------------------------------------------
# Argument checks: each raises ValueError naming the argument, the value and what would be accepted.
# ----------------------------------------------------------------------------------------------------


def check_int(name: str, value: Any, minimum: int | None = None, maximum: int | None = None) -> int:
    """Return ``value`` if it is an int within [minimum, maximum], else raise a ValueError."""
    ok = isinstance(value, int) and not isinstance(value, bool)
    ok = ok and (minimum is None or value >= minimum) and (maximum is None or value <= maximum)
    if not ok:
        if minimum == 1 and maximum is None:
            accepted = "a positive int"
        elif minimum == 0 and maximum is None:
            accepted = "a non-negative int"
        elif maximum is None:
            accepted = f"an int >= {minimum}"
        elif minimum is None:
            accepted = f"an int <= {maximum}"
        else:
            accepted = f"an int in [{minimum}, {maximum}]"
        raise ValueError(f"{name} must be {accepted}, got {value!r}")
    return value


def check_choice(name: str, value: Any, choices: tuple) -> Any:
    """Return ``value`` if it is one of ``choices``, else raise a ValueError listing them."""
    if value not in choices:
        raise ValueError(f"{name} must be one of {', '.join(map(repr, choices))}, got {value!r}")
    return value


class ImageDataModule(L.LightningDataModule):
    """Common loaders for image datamodules.

    Args:
        batch_size: training batch size; the last incomplete training batch is dropped.
        num_workers: DataLoader worker processes (0 = load in the main process).
        val_batch_size: batch size for validation and test (defaults to ``batch_size``).
        seed: seeds the training shuffle order (and, in subclasses, any data split or generation).
    """

    # Set by every subclass in __init__.
    image_size: int
    channels: int
    num_classes: int

    def __init__(
        self,
        batch_size: int = 32,
        num_workers: int = 0,
        val_batch_size: int | None = None,
        seed: int = 0,
    ) -> None:
        super().__init__()
        self.batch_size = check_int("batch_size", batch_size, minimum=1)
        self.num_workers = check_int("num_workers", num_workers, minimum=0)
        if val_batch_size is not None:
            check_int("val_batch_size", val_batch_size, minimum=1)
        self.val_batch_size = batch_size if val_batch_size is None else val_batch_size
        self.seed = check_int("seed", seed, minimum=0)
        self.train_set: Dataset | None = None
        self.val_set: Dataset | None = None
        self.test_set: Dataset | None = None

    # ------------------------------------------------------------------------------------------------
    def _loader(self, split: str, batch_size: int, shuffle: bool, drop_last: bool) -> DataLoader:
        dataset = getattr(self, f"{split}_set")
        if dataset is None:  # used outside a Trainer without calling setup() first
            self.setup("fit" if split in ("train", "val") else "test")
            dataset = getattr(self, f"{split}_set")
        if drop_last and len(dataset) < batch_size:
            # drop_last would silently give zero batches; fail loudly instead.
            raise ValueError(
                f"batch_size={batch_size} is larger than the {split} set ({len(dataset)} images); "
                f"use a batch_size <= {len(dataset)}"
            )
        generator = torch.Generator().manual_seed(self.seed) if shuffle else None
        return DataLoader(
            dataset,
            batch_size=batch_size,
            shuffle=shuffle,
            drop_last=drop_last,
            generator=generator,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
            pin_memory=torch.cuda.is_available(),
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", self.batch_size, shuffle=True, drop_last=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", self.val_batch_size, shuffle=False, drop_last=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", self.val_batch_size, shuffle=False, drop_last=False)
