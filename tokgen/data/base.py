"""Base class shared by all image datamodules, plus small argument checkers.

Every dataset in ``tokgen.data`` returns dict samples::

    {"image": FloatTensor (C, H, W) in [-1, 1], "label": int64 scalar tensor, ...extra keys}

so the default collate turns a batch into a dict of stacked tensors, e.g.
``batch["image"]: (B, C, H, W)`` and ``batch["label"]: (B,)``.

Subclasses set ``image_size``, ``channels`` and ``num_classes`` in ``__init__`` (so a model can check
them before any data is touched) and build ``train_set``, ``val_set`` and ``test_set`` in ``setup``.
"""

from __future__ import annotations

import difflib
import inspect
import os
from typing import Any

import lightning as L
import torch
import torch.distributed as dist
import yaml
from torch.utils.data import DataLoader, Dataset, DistributedSampler

# the argument checks live in tokgen.values (no torch, no Lightning: commands check options before heavy imports)
from ..values import check_choice, check_int, check_number, describe_range  # noqa: F401

# ----------------------------------------------------------------------------------------------------
# Training order that a resumed run re-enters mid-epoch.
# ----------------------------------------------------------------------------------------------------


class ResumableSampler(DistributedSampler):
    """Shuffled training order whose epoch ``e`` is a pure function of ``(seed, e)`` (torch's DistributedSampler
    order: one process, or this rank's share under DDP, so Lightning injects no sampler of its own), and which
    can start its next pass ``start`` samples into the epoch: a run resumed from a checkpoint written mid-epoch
    sees exactly the samples the interrupted run had not reached yet, in the same order."""

    def __init__(self, dataset: Dataset, seed: int) -> None:
        distributed = dist.is_available() and dist.is_initialized()
        super().__init__(dataset, num_replicas=dist.get_world_size() if distributed else 1,
                         rank=dist.get_rank() if distributed else 0, shuffle=True, seed=seed)
        self.start = 0

    def set_epoch(self, epoch: int) -> None:
        """Lightning calls this at every epoch start; a pending mid-epoch start only holds for its own epoch."""
        if epoch != self.epoch:
            self.start = 0
        super().set_epoch(epoch)

    def __iter__(self):
        indices = list(super().__iter__())
        start, self.start = self.start, 0
        return iter(indices[start:])


class ResumableLoader(DataLoader):
    """Training DataLoader over a :class:`ResumableSampler` (last incomplete batch dropped) that reports its
    position to Lightning: ``state_dict()`` = ``{"epoch", "batches"}`` (batches handed out in the current epoch)
    goes into every checkpoint, and ``load_state_dict`` makes the next pass skip those batches, so
    ``--ckpt_path`` resumes the data order mid-epoch instead of restarting the epoch. The count is taken where the
    batches leave the loader, so worker prefetching does not shift it. Other DataLoader arguments pass through
    (Lightning rebuilds the loader with another sampler for ``overfit_batches``; it then has no position)."""

    def __init__(self, dataset: Dataset, batch_size: int = 1, seed: int = 0, num_workers: int = 0, **kwargs) -> None:
        kwargs.setdefault("sampler", ResumableSampler(dataset, seed))
        kwargs.setdefault("drop_last", True)
        kwargs.setdefault("generator", torch.Generator().manual_seed(seed))  # worker seeds, not the global RNG
        kwargs.setdefault("persistent_workers", num_workers > 0)
        kwargs.setdefault("pin_memory", torch.cuda.is_available())
        super().__init__(dataset, batch_size=batch_size, num_workers=num_workers, **kwargs)
        self.seed = seed
        self.batches = 0

    def __iter__(self):
        resumable = isinstance(self.sampler, ResumableSampler)
        self.batches = self.sampler.start // self.batch_size if resumable else 0
        for batch in super().__iter__():
            self.batches += 1
            yield batch

    def state_dict(self) -> dict[str, int]:
        if not isinstance(self.sampler, ResumableSampler):
            return {}
        return {"epoch": self.sampler.epoch, "batches": self.batches}

    def load_state_dict(self, state: dict[str, int]) -> None:
        if not state or not isinstance(self.sampler, ResumableSampler):
            return
        epoch, batches = int(state["epoch"]), int(state["batches"])
        if batches >= len(self):  # saved after the epoch's last batch: the next pass is the next epoch
            epoch, batches = epoch + 1, 0
        self.sampler.set_epoch(epoch)
        self.sampler.start = batches * self.batch_size
        self.batches = batches


def check_init_args(cls: type, init_args: dict, where: str) -> dict:
    """Return ``init_args`` if every key is a parameter of ``cls.__init__``, else raise a ValueError naming the
    unknown keys, ``where`` they came from (e.g. a --data file) and the accepted keys (a typo in a YAML spec)."""
    params = inspect.signature(cls.__init__).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return init_args
    accepted = [n for n, p in params.items() if n != "self" and p.kind is not inspect.Parameter.VAR_POSITIONAL]
    unknown = [k for k in init_args if k not in accepted]
    if unknown:
        hints = [f"{k!r} (did you mean {close[0]!r}?)" if (close := difflib.get_close_matches(k, accepted, 1))
                 else repr(k) for k in unknown]
        raise ValueError(f"{where}: unknown init_args {', '.join(hints)} for {cls.__name__}; accepted: "
                         f"{', '.join(accepted)}")
    return init_args


def read_yaml(path: str, where: str) -> Any:
    """``yaml.safe_load`` of a file (or, for an inline spec, of the text itself when ``path`` is not a file),
    turning a syntax error into one ValueError naming ``where`` and the line."""
    try:
        if os.path.isfile(path):
            with open(path) as f:
                return yaml.safe_load(f)
        return yaml.safe_load(path)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise ValueError(f"{where} is not valid YAML{at}: {problem}; accepted: a YAML/JSON mapping") from None


class ImageDataModule(L.LightningDataModule):
    """Common loaders for image datamodules: the training loader is a :class:`ResumableLoader` (order seeded
    by ``seed`` and the epoch, resumable mid-epoch), validation and test loaders keep the dataset order.

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
        if shuffle:
            return ResumableLoader(dataset, batch_size, self.seed, self.num_workers)
        return DataLoader(
            dataset,
            batch_size=batch_size,
            drop_last=drop_last,
            generator=torch.Generator().manual_seed(self.seed),  # worker seeds, not drawn from the training RNG
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
