"""Streaming data for many GPUs and nodes: image folders and token shards as litdata chunks.

``tokgen prepare-data`` (see :mod:`tokgen.commands.prepare_data`) writes one folder::

    tokgen.json          format, kind ("images" or "tokens"), sizes, classes / tokenizer identity, split counts
    train/               litdata chunks (index.json + chunk-*.bin) of the training samples
    val/                 litdata chunks of the held-out validation samples (absent when there are none)

Images are stored already resized and center-cropped (the transform of
:class:`~tokgen.data.folder.ImageFolderDataModule`), as uint8 pixels (``raw``) or as PNG/JPEG bytes; token
samples hold the codes, length and label of one example of a ``tokgen tokenize`` shard folder.

:class:`StreamingImageDataModule` and :class:`StreamingTokenDataModule` read them with litdata's
``StreamingDataset`` / ``StreamingDataLoader``: each rank and each DataLoader worker is assigned its own chunks,
so they see disjoint samples, and the loader's position inside an epoch is part of every checkpoint, so
``tokgen fit ... --ckpt_path last`` continues the epoch with the batches the killed run had not trained on.
The samples are the same dicts the other datamodules yield.
"""
from __future__ import annotations

import functools
import json
import multiprocessing
import os
import shutil
import sys
from typing import Any, Callable, Iterable, Iterator

import torch
from litdata import StreamingDataLoader, StreamingDataset
from litdata.streaming import Cache
from tqdm import tqdm
from torchvision.io import ImageReadMode, decode_image, encode_jpeg, encode_png

from .base import ImageDataModule, check_choice, check_int
from .folder import DEFAULT_EXTENSIONS, ImageFolderDataModule, load_image_uint8
from .tokens import TokenShardDataModule

META_NAME = "tokgen.json"
FORMAT = "tokgen-streaming"
FORMAT_VERSION = 1
KINDS = ("images", "tokens")
ENCODINGS = ("raw", "png", "jpeg")
SPLITS = ("train", "val")


# ----------------------------------------------------------------------------------------------------
# Writing (tokgen prepare-data)
# ----------------------------------------------------------------------------------------------------


class EncodeImage:
    """(path, label) -> ``(pixels, label)``: uint8 (3, S, S) pixels as a numpy array, or their PNG / JPEG bytes.
    A class (not a closure) so writer processes can receive it; numpy and bytes (not tensors) cross the pipe."""

    def __init__(self, image_size: int, encoding: str, jpeg_quality: int = 95) -> None:
        self.image_size, self.encoding, self.jpeg_quality = image_size, encoding, jpeg_quality

    def __call__(self, sample: tuple[str, int]) -> tuple[Any, int]:
        path, label = sample
        try:
            image = load_image_uint8(path, self.image_size)
        except (OSError, ValueError) as err:
            raise ValueError(f"cannot read image {path!r} ({err}); remove or replace the file") from None
        if self.encoding == "png":
            return bytes(encode_png(image).numpy()), label
        if self.encoding == "jpeg":
            return bytes(encode_jpeg(image, quality=self.jpeg_quality).numpy()), label
        return image.numpy(), label


def image_item(encoded: tuple[Any, int]) -> dict[str, Any]:
    """Stored image item: ``{"image": uint8 (3, S, S) or encoded bytes as a 1-D uint8 tensor, "label": int}``."""
    image, label = encoded
    image = torch.frombuffer(bytearray(image), dtype=torch.uint8) if isinstance(image, bytes) else torch.from_numpy(image)
    return {"image": image, "label": int(label)}


def token_items(codes: torch.Tensor, lengths: torch.Tensor, labels: torch.Tensor):
    """Stored token items ``{"codes": (K,) int16/int32, "length": int, "label": int}``, in order."""
    for i in range(len(codes)):
        yield {"codes": codes[i].clone(), "length": int(lengths[i]), "label": int(labels[i])}


def check_output_folder(out: str) -> None:
    """Raise a ValueError unless ``out`` can be created (or is an empty folder) and its parent is writable."""
    if os.path.exists(out):
        if not os.path.isdir(out):
            raise ValueError(f"--out {out!r} is an existing file; give a new (or empty) folder")
        held = sorted(os.listdir(out))
        if held:
            shown = ", ".join(held[:3]) + (", ..." if len(held) > 3 else "")
            raise ValueError(f"--out {out!r} already holds data ({shown}); give a new (or empty) folder "
                             f"or delete it first")
    parent = os.path.dirname(os.path.abspath(out))
    try:
        os.makedirs(parent, exist_ok=True)
        probe = os.path.join(parent, f".tokgen-write-test-{os.getpid()}")
        os.mkdir(probe)
        os.rmdir(probe)
    except OSError as err:
        raise ValueError(f"--out {out!r} cannot be written ({err.strerror or err}); give a writable folder") from None


def write_chunks(items: Iterable[dict], total: int, folder: str, chunk_bytes: str, chunk_size: int | None,
                 desc: str) -> None:
    """Write ``items`` (in order: sample i of the folder is item i) as litdata chunks + ``index.json`` in
    ``folder``, with a progress bar."""
    os.makedirs(folder)
    try:
        cache = Cache(folder, chunk_bytes=None if chunk_size else chunk_bytes, chunk_size=chunk_size)
    except ValueError as err:
        raise ValueError(f"--chunk-bytes {chunk_bytes!r} is not a size like 64MB ({err})") from None
    for i, item in enumerate(tqdm(items, total=total, desc=desc, unit="sample", dynamic_ncols=True)):
        cache[i] = item
    cache.done()
    cache.merge()


def encoded_images(encode: EncodeImage, samples: list[tuple[str, int]], workers: int) -> Iterator[dict]:
    """Stored items of ``samples`` in order; images decoded, resized and encoded by ``workers`` processes."""
    if workers <= 1 or len(samples) < 2:
        yield from map(image_item, map(encode, samples))
        return
    method = "fork" if sys.platform.startswith("linux") else "spawn"
    with multiprocessing.get_context(method).Pool(workers) as pool:  # terminated on any error
        for encoded in pool.imap(encode, samples, chunksize=16):
            yield image_item(encoded)


def write_dataset(out: str, meta: dict, splits: dict[str, tuple[Callable[[], Iterable[dict]], int]],
                  chunk_bytes: str, chunk_size: int | None) -> dict:
    """Write every split's chunks and ``tokgen.json`` into a temporary sibling of ``out``, then move it to ``out``
    in one rename: a failed or interrupted run leaves no partial ``out`` behind."""
    check_output_folder(out)
    tmp = os.path.abspath(out).rstrip(os.sep) + ".tokgen-partial"
    shutil.rmtree(tmp, ignore_errors=True)  # left by an earlier run that was killed
    try:
        os.makedirs(tmp)
        meta = {"format": FORMAT, "version": FORMAT_VERSION, **meta,
                "splits": {name: total for name, (_, total) in splits.items() if total}}
        for name, (items, total) in splits.items():
            if total:
                write_chunks(items(), total, os.path.join(tmp, name), chunk_bytes, chunk_size, desc=name)
        with open(os.path.join(tmp, META_NAME), "w") as f:
            json.dump(meta, f, indent=1)
        if os.path.isdir(out):
            os.rmdir(out)  # empty (checked above)
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return meta


def prepare_images(input: str, out: str, image_size: int, val_input: str | None = None, val_fraction: float = 0.01,
                   class_subfolders: bool | None = None, extensions: tuple[str, ...] = DEFAULT_EXTENSIONS,
                   encoding: str = "png", seed: int = 0, workers: int = 1, chunk_bytes: str = "64MB",
                   chunk_size: int | None = None) -> dict:
    """An image folder (the layout and split rules of :class:`ImageFolderDataModule`: ``class_subfolders`` None
    detects a flat folder) -> streaming chunks in ``out``. Returns the written ``tokgen.json`` content."""
    check_choice("encoding", encoding, ENCODINGS)
    for name, path in (("--input", input), ("--val-input", val_input)):
        if path is not None and not os.path.isdir(path):
            raise FileNotFoundError(f"{name} {path!r} does not exist or is not a folder")
    folder = ImageFolderDataModule(root=input, image_size=image_size, val_root=val_input, val_fraction=val_fraction,
                                   class_subfolders=class_subfolders, extensions=extensions, random_flip=False,
                                   seed=seed)
    check_output_folder(out)
    folder.setup("fit")  # scans (with its errors for empty folders and unknown classes) and splits
    encode = EncodeImage(image_size, encoding)
    meta = {"kind": "images", "source": os.path.abspath(input), "image_size": image_size, "channels": 3,
            "encoding": encoding, "num_classes": folder.num_classes, "classes": folder.classes}
    splits = {name: (functools.partial(encoded_images, encode, data.samples, workers), len(data.samples))
              for name, data in (("train", folder.train_set), ("val", folder.val_set))}
    return write_dataset(out, meta, splits, chunk_bytes, chunk_size)


def prepare_tokens(input: str, out: str, val_input: str | None = None, val_size: int = 512,
                   chunk_bytes: str = "64MB", chunk_size: int | None = None) -> dict:
    """A token-shard folder written by ``tokgen tokenize`` (validation: ``val_input`` or the last ``val_size``
    examples, as in :class:`TokenShardDataModule`) -> streaming chunks in ``out``."""
    shards = TokenShardDataModule(path=input, val_path=val_input, val_size=val_size)
    check_output_folder(out)
    shards.setup("fit")  # reads every shard, checks train/val agree
    index = shards.index
    meta = {"kind": "tokens", "source": os.path.abspath(input), "codebook_size": index["codebook_size"],
            "num_tokens": index["num_tokens"], "num_classes": index["num_classes"], "tokenizer": index["tokenizer"]}
    splits = {name: (functools.partial(token_items, data.codes, data.lengths, data.labels), len(data))
              for name, data in (("train", shards.train_set), ("val", shards.val_set)) if data is not None}
    return write_dataset(out, meta, splits, chunk_bytes, chunk_size)


def read_meta(path: str, kind: str) -> dict:
    """``<path>/tokgen.json`` with clear errors for a missing folder, other data or the other kind."""
    meta_path = os.path.join(path, META_NAME)
    if not os.path.isfile(meta_path):
        raise FileNotFoundError(f"streaming data not found: {meta_path} does not exist; write it with "
                                f"`tokgen prepare-data {kind} --input <folder> --out {path}`")
    with open(meta_path) as f:
        meta = json.load(f)
    if meta.get("format") != FORMAT:
        raise ValueError(f"{meta_path} is not a tokgen streaming dataset (format={meta.get('format')!r})")
    if meta.get("kind") != kind:
        raise ValueError(f"{path} holds streamed {meta.get('kind')}, not {kind}; use the "
                         f"Streaming{'Image' if meta.get('kind') == 'images' else 'Token'}DataModule for it")
    return meta


# ----------------------------------------------------------------------------------------------------
# Reading
# ----------------------------------------------------------------------------------------------------


class DecodeImage:
    """Chunk item -> ``{"image": float (3, S, S) in [-1, 1], "label": int64}`` (+ random horizontal flip)."""

    def __init__(self, encoding: str, random_flip: bool) -> None:
        self.encoding, self.random_flip = encoding, random_flip

    def __call__(self, item: dict) -> dict[str, torch.Tensor]:
        image = item["image"]
        if self.encoding != "raw":
            image = decode_image(image, mode=ImageReadMode.RGB)
        image = image.float().div_(127.5).sub_(1.0)
        if self.random_flip and torch.rand(()) < 0.5:
            image = image.flip(-1)
        return {"image": image, "label": torch.tensor(item["label"], dtype=torch.int64)}


class TokenSample:
    """Chunk item -> ``{"codes": (K,) int64, "length": int64, "label": int64}`` (the TokenDataset sample),
    cut to the first ``max_tokens`` codes when set."""

    def __init__(self, max_tokens: int | None) -> None:
        self.max_tokens = max_tokens

    def __call__(self, item: dict) -> dict[str, torch.Tensor]:
        codes, length = item["codes"].long(), int(item["length"])
        if self.max_tokens is not None:
            codes, length = codes[: self.max_tokens], min(length, self.max_tokens)
        return {"codes": codes, "length": torch.tensor(length, dtype=torch.int64),
                "label": torch.tensor(item["label"], dtype=torch.int64)}


class StreamingDataModule(ImageDataModule):
    """Shared part of the streaming datamodules: ``path`` is a folder written by ``tokgen prepare-data``;
    subclasses set ``kind`` and turn stored items into samples (``transform``).

    Training batches are shuffled (by ``seed`` and the epoch) with the last incomplete batch dropped; under DDP
    each rank reads its own chunks and litdata evens the ranks out by dropping the few samples that would give
    one rank more. Validation and test read ``path/val`` in order.

    Resume: ``state_dict`` holds the training loader's position (epoch and samples yielded, from which litdata
    rebuilds each rank's and worker's place in the shuffled chunk order) and Lightning stores it in every
    checkpoint; ``load_state_dict`` hands it to the loader when it is built, so the resumed epoch yields exactly
    the batches the interrupted one had not. (Lightning does not fetch ahead from a loader with a length, and
    its fit loop also restores the same state into the loader, which changes nothing.)
    """

    kind: str

    def __init__(self, path: str, batch_size: int = 32, num_workers: int = 0, val_batch_size: int | None = None,
                 seed: int = 0) -> None:
        super().__init__(batch_size=batch_size, num_workers=num_workers, val_batch_size=val_batch_size, seed=seed)
        self.path = str(path)
        self.meta: dict | None = None
        self.train_loader = None
        self._loader_state: dict | None = None  # restored from a checkpoint before the loader exists
        if os.path.isfile(os.path.join(self.path, META_NAME)):
            self.read_meta(read_meta(self.path, self.kind))

    def read_meta(self, meta: dict) -> None:
        self.meta = meta

    def transform(self, train: bool):
        """Item bytes -> sample dict for the training (``train``) or validation split. Abstract: implemented by
        :class:`StreamingImageDataModule` and :class:`StreamingTokenDataModule`."""
        raise NotImplementedError(f"{type(self).__name__} must define transform(train)")

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is not None:
            return
        self.read_meta(read_meta(self.path, self.kind))
        self.train_set = StreamingDataset(os.path.join(self.path, "train"), shuffle=True, drop_last=True,
                                          seed=self.seed, transform=self.transform(train=True))
        if self.meta["splits"].get("val"):
            self.val_set = StreamingDataset(os.path.join(self.path, "val"), shuffle=False,
                                            transform=self.transform(train=False))
        self.test_set = self.val_set

    def train_dataloader(self):
        if self.train_set is None:
            self.setup("fit")
        if len(self.train_set) < self.batch_size:
            raise ValueError(f"batch_size={self.batch_size} is larger than the training samples of this rank "
                             f"({len(self.train_set)} in {self.path}); use a batch_size <= {len(self.train_set)}")
        self.train_loader = StreamingDataLoader(self.train_set, batch_size=self.batch_size, drop_last=True,
                                                num_workers=self.num_workers, pin_memory=torch.cuda.is_available())
        if self._loader_state is not None:
            self.train_loader.load_state_dict(self._loader_state)
            self._loader_state = None
        return self.train_loader

    def val_dataloader(self):
        if self.train_set is None:
            self.setup("fit")
        if self.val_set is None:
            return []
        return StreamingDataLoader(self.val_set, batch_size=self.val_batch_size, num_workers=self.num_workers,
                                   pin_memory=torch.cuda.is_available())

    def test_dataloader(self):
        return self.val_dataloader()

    def state_dict(self) -> dict[str, Any]:
        """The training loader's position (saved in every checkpoint): epoch, samples used, shuffle seed."""
        if self.train_loader is None:
            return {}
        return {"train_loader": self.train_loader.state_dict()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore the position; applied to the training loader when it is (re)built."""
        state = state_dict.get("train_loader")
        if state is None:
            return
        if self.train_loader is not None:
            self.train_loader.load_state_dict(state)
        else:
            self._loader_state = state


class StreamingImageDataModule(StreamingDataModule):
    """Images streamed from ``tokgen prepare-data images`` chunks.

    Batches are ``{"image": (B, 3, S, S) in [-1, 1], "label": (B,)}``, the samples of ImageFolderDataModule.

    Args:
        path: folder written by ``tokgen prepare-data images`` (``tokgen.json``, ``train/``, ``val/``).
        image_size: optional; checked against the stored size (lets a recipe state it before the data exists).
        num_classes: optional; checked against the stored class count.
        random_flip: random horizontal flips of training images.
    """

    kind = "images"

    def __init__(self, path: str, image_size: int | None = None, num_classes: int | None = None,
                 random_flip: bool = True, batch_size: int = 32, num_workers: int = 0,
                 val_batch_size: int | None = None, seed: int = 0) -> None:
        self.image_size = None if image_size is None else check_int("image_size", image_size, minimum=8)
        self.num_classes = None if num_classes is None else check_int("num_classes", num_classes, minimum=1)
        self.channels = 3
        self.classes: list[str] | None = None  # class subfolder names, from tokgen.json
        self.random_flip = bool(random_flip)
        super().__init__(path, batch_size=batch_size, num_workers=num_workers, val_batch_size=val_batch_size,
                         seed=seed)
        self.save_hyperparameters()

    def read_meta(self, meta: dict) -> None:
        for name in ("image_size", "num_classes"):
            want = getattr(self, name)
            if want is not None and want != meta[name]:
                raise ValueError(f"{name}={want} but the streamed images in {self.path} have {name}={meta[name]}; "
                                 f"set data.init_args.{name}: {meta[name]} or prepare the data again")
        super().read_meta(meta)
        self.image_size, self.num_classes, self.classes = meta["image_size"], meta["num_classes"], meta["classes"]

    def transform(self, train: bool) -> DecodeImage:
        return DecodeImage(self.meta["encoding"], random_flip=train and self.random_flip)


class StreamingTokenDataModule(StreamingDataModule):
    """Generator training data streamed from ``tokgen prepare-data tokens`` chunks.

    Batches are ``{"codes": (B, K) int64, "length": (B,), "label": (B,)}``, those of TokenShardDataModule;
    ``codebook_size``, ``num_tokens``, ``num_classes`` and ``tokenizer`` come from ``tokgen.json``.

    Args:
        path: folder written by ``tokgen prepare-data tokens``.
        max_tokens: train on the first ``max_tokens`` codes only (None = all K).
    """

    kind = "tokens"

    def __init__(self, path: str, max_tokens: int | None = None, batch_size: int = 64, num_workers: int = 0,
                 val_batch_size: int | None = None, seed: int = 0) -> None:
        self.max_tokens = None if max_tokens is None else check_int("max_tokens", max_tokens, minimum=1)
        self.codebook_size = self.num_tokens = self.num_classes = self.image_size = self.channels = None
        self.tokenizer: dict | None = None
        super().__init__(path, batch_size=batch_size, num_workers=num_workers, val_batch_size=val_batch_size,
                         seed=seed)
        self.save_hyperparameters()

    def read_meta(self, meta: dict) -> None:
        super().read_meta(meta)
        self.codebook_size, self.num_classes, self.tokenizer = meta["codebook_size"], meta["num_classes"], meta["tokenizer"]
        K = meta["num_tokens"]
        self.num_tokens = K if self.max_tokens is None else min(self.max_tokens, K)
        config = self.tokenizer.get("config") or {}
        self.image_size, self.channels = config.get("image_size"), config.get("channels")

    def transform(self, train: bool) -> TokenSample:
        return TokenSample(self.max_tokens)
