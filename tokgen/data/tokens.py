"""Token shards: a dataset encoded once by a tokenizer (``tokgen tokenize``), read back for generator training.

On disk (one folder per split)::

    index.json                  format, tokenizer identity, data spec, counts, list of shards, complete flag
    shard_00000.safetensors     codes (n, K) int16/int32, lengths (n,) int32, labels (n,) int64
    shard_00001.safetensors     ...

Shard ``i`` holds dataset items ``[i * shard_size, (i + 1) * shard_size)`` in order, so an interrupted
``tokgen tokenize`` resumes by skipping the shards already written (each is written atomically).
``lengths`` is K for fixed-length tokenizers and the halting length for adaptive ones; codes past a length
are padding (0).
"""
from __future__ import annotations

import json
import os

import torch
from safetensors.torch import load_file
from torch.utils.data import DataLoader, Dataset

from .base import ImageDataModule, check_int

INDEX_NAME = "index.json"
FORMAT = "tokgen-token-shards"
FORMAT_VERSION = 1


def shard_name(i: int) -> str:
    return f"shard_{i:05d}.safetensors"


def code_dtype(codebook_size: int) -> torch.dtype:
    """Smallest signed integer type that holds every code (and an EOS id one above)."""
    return torch.int16 if codebook_size + 1 <= torch.iinfo(torch.int16).max else torch.int32


def read_index(path: str, require_complete: bool = True) -> dict:
    """Read ``<path>/index.json`` with clear errors for a missing, foreign or unfinished folder."""
    index_path = os.path.join(path, INDEX_NAME)
    if not os.path.isfile(index_path):
        raise FileNotFoundError(
            f"token shards not found: {index_path} does not exist; create them with "
            f"`tokgen tokenize --ckpt <tokenizer.ckpt> --data <data> --split <split> --out {path}`"
        )
    try:
        with open(index_path) as f:
            index = json.load(f)
    except json.JSONDecodeError as err:
        raise ValueError(f"{index_path} is not valid JSON ({err}); re-run `tokgen tokenize` into a new folder") from None
    if not isinstance(index, dict) or index.get("format") != FORMAT:
        raise ValueError(f"{index_path} is not a tokgen token-shard index "
                         f"(format={index.get('format') if isinstance(index, dict) else None!r})")
    if require_complete and not index.get("complete"):
        done = sum(s["num_examples"] for s in index.get("shards", []))
        raise ValueError(
            f"token shards in {path} are unfinished ({done} of {index.get('num_examples')} examples); "
            f"rerun the same `tokgen tokenize` command to resume"
        )
    return index


def load_token_shards(path: str) -> tuple[dict, torch.Tensor, torch.Tensor, torch.Tensor]:
    """All shards of a finished folder -> (index, codes (N, K), lengths (N,), labels (N,)), codes kept small."""
    index = read_index(path)
    codes, lengths, labels = [], [], []
    for shard in index["shards"]:
        shard_path = os.path.join(path, shard["file"])
        try:
            tensors = load_file(shard_path)
        except Exception as err:  # missing, truncated or overwritten file: safetensors raises its own error types
            raise ValueError(f"token shard {shard_path} is unreadable ({type(err).__name__}: {str(err)[:160]}); "
                             f"re-run the same `tokgen tokenize` command to rewrite it") from None
        missing = [k for k in ("codes", "lengths", "labels") if k not in tensors]
        if missing:
            raise ValueError(f"token shard {shard_path} has no {', '.join(missing)}; re-run the same "
                             f"`tokgen tokenize` command to rewrite it")
        if tensors["codes"].shape[0] != shard["num_examples"]:
            raise ValueError(f"shard {shard['file']} in {path} holds {tensors['codes'].shape[0]} examples, "
                             f"index says {shard['num_examples']}; re-run `tokgen tokenize`")
        codes.append(tensors["codes"])
        lengths.append(tensors["lengths"])
        labels.append(tensors["labels"])
    K = index["num_tokens"]
    empty = torch.empty(0, K, dtype=code_dtype(index["codebook_size"]))
    return (index, torch.cat(codes) if codes else empty,
            torch.cat(lengths) if lengths else torch.empty(0, dtype=torch.int32),
            torch.cat(labels) if labels else torch.empty(0, dtype=torch.int64))


class TokenDataset(Dataset):
    """In-memory codes -> {"codes": (K,) int64, "length": int64, "label": int64}."""

    def __init__(self, codes: torch.Tensor, lengths: torch.Tensor, labels: torch.Tensor, max_tokens: int | None = None):
        assert len(codes) == len(lengths) == len(labels)
        if max_tokens is not None:  # a prefix of coarse-to-fine codes is itself a valid sequence
            codes, lengths = codes[:, :max_tokens], lengths.clamp(max=max_tokens)
        self.codes, self.lengths, self.labels = codes, lengths, labels

    def __len__(self) -> int:
        return len(self.codes)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"codes": self.codes[i].long(), "length": self.lengths[i].long(), "label": self.labels[i].long()}


class TokenShardDataModule(ImageDataModule):
    """Generator training data from token shards written by ``tokgen tokenize``.

    Batches are ``{"codes": (B, K) int64, "length": (B,), "label": (B,)}``.

    Args:
        path: folder of the training shards (``index.json`` inside).
        val_path: folder of validation shards (e.g. the tokenized val/test split); None = hold out the last
            ``val_size`` examples of ``path`` (they are then not trained on).
        val_size: examples held out when ``val_path`` is None (0 = no validation).
        max_tokens: train on the first ``max_tokens`` codes only (None = all K).

    ``codebook_size``, ``num_tokens``, ``num_classes`` and ``tokenizer`` (the identity of the tokenizer that
    wrote the shards) are read from the index as soon as it exists (at the latest in ``setup``).
    """

    def __init__(
        self,
        path: str,
        val_path: str | None = None,
        val_size: int = 512,
        max_tokens: int | None = None,
        batch_size: int = 64,
        num_workers: int = 0,
        val_batch_size: int | None = None,
        seed: int = 0,
    ) -> None:
        super().__init__(batch_size=batch_size, num_workers=num_workers, val_batch_size=val_batch_size, seed=seed)
        self.path = str(path)
        self.val_path = None if val_path is None else str(val_path)
        self.val_size = check_int("val_size", val_size, minimum=0)
        self.max_tokens = None if max_tokens is None else check_int("max_tokens", max_tokens, minimum=1)
        self.index: dict | None = None
        self.codebook_size = self.num_tokens = self.num_classes = self.image_size = self.channels = None
        self.tokenizer: dict | None = None
        if os.path.isfile(os.path.join(self.path, INDEX_NAME)):
            self._read_meta(read_index(self.path))
        self.save_hyperparameters()

    def _read_meta(self, index: dict) -> None:
        self.index = index
        self.codebook_size = index["codebook_size"]
        self.num_tokens = index["num_tokens"] if self.max_tokens is None else min(self.max_tokens, index["num_tokens"])
        self.num_classes = index["num_classes"]
        self.tokenizer = index["tokenizer"]
        config = self.tokenizer.get("config") or {}
        self.image_size, self.channels = config.get("image_size"), config.get("channels")

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is not None:
            return
        index, codes, lengths, labels = load_token_shards(self.path)
        self._read_meta(index)
        if self.val_path is not None:
            val_index, v_codes, v_lengths, v_labels = load_token_shards(self.val_path)
            for key in ("codebook_size", "num_tokens"):
                if val_index[key] != index[key]:
                    raise ValueError(f"val shards {self.val_path} have {key}={val_index[key]} but train shards "
                                     f"{self.path} have {key}={index[key]}; tokenize both with the same tokenizer")
            if val_index["tokenizer"].get("fingerprint") != index["tokenizer"].get("fingerprint"):
                raise ValueError(f"val shards {self.val_path} and train shards {self.path} were made by different "
                                 f"tokenizer weights; tokenize both with the same checkpoint")
            self.val_set = TokenDataset(v_codes, v_lengths, v_labels, self.max_tokens)
            self.train_set = TokenDataset(codes, lengths, labels, self.max_tokens)
        else:
            n_train = len(codes) - self.val_size
            if n_train < 1:
                raise ValueError(f"val_size={self.val_size} leaves no training examples out of {len(codes)} in {self.path}")
            self.train_set = TokenDataset(codes[:n_train], lengths[:n_train], labels[:n_train], self.max_tokens)
            if self.val_size:
                self.val_set = TokenDataset(codes[n_train:], lengths[n_train:], labels[n_train:], self.max_tokens)
        self.test_set = self.val_set

    def val_dataloader(self) -> DataLoader | list:
        if self.train_set is None:
            self.setup("fit")
        return [] if self.val_set is None else super().val_dataloader()

    def test_dataloader(self) -> DataLoader | list:
        return self.val_dataloader()
