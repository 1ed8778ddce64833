"""``tokgen tokenize``: encode a dataset split once into token shards for generator training.

    tokgen tokenize --ckpt runs/fmnist_small/checkpoints/last.ckpt --data fmnist --split train \\
        --out tokens/fmnist_small/train

``--data`` is a name (``shapes``, ``fmnist``, ``folder:PATH``), a YAML/JSON file holding a datamodule spec
(``{class_path, init_args}``, or a whole training recipe whose ``data:`` section is used), or that spec
inline (:mod:`tokgen.data.spec`). Image size and channels come from the tokenizer. Items are encoded in dataset order with
augmentation off; shard i holds items [i * shard_size, (i + 1) * shard_size). Re-running the same command
skips the shards already written, so an interrupted run resumes.

With a halting tokenizer, ``--target-error EPS`` keeps per image the prefix its halting head chooses for target
error EPS (one encoder pass per batch): ``lengths`` holds each image's length and codes past it are 0.

With a video tokenizer checkpoint (discrete quantizer), ``--data`` is ``moving_shapes``, ``folder:PATH`` (a folder
of videos) or a video recipe / VideoDataModule spec; clips get the tokenizer's frame count and size, and
trajectories are extracted with the checkpoint's extraction settings. A trajectory tokenizer writes ``lengths`` =
the number of trajectories of each clip (slots are ordered largest first, so they are a prefix; codes past the
length are 0), and labels 0 (moving_shapes has no class: the generator is unconditional). With a group quantizer
(``groups: G``, G codes per trajectory) a trajectory is G consecutive codes: a clip is K * G codes (``num_tokens``
in the index), its length is G times its number of trajectories, and ``codes_per_token`` in the index is G.

Once the folder is complete, ``index.json`` also holds the length distribution (mean, histogram, mean per class)
and ``lengths.png`` beside the shards plots it.

    tokgen tokenize --ckpt runs/video_moving_shapes_fsq_tiny/checkpoints/last.ckpt --data moving_shapes \\
        --split train --out runs/tokens/moving_shapes_traj_tiny/train
"""
from __future__ import annotations

import argparse
import json
import os

import torch
from safetensors.torch import save_file
from torch.utils.data import DataLoader, Subset
from tqdm import tqdm

from ..checkpoint import checkpoint_kind
from ..data.base import check_int
from ..data.spec import DATA_ACCEPTED, build_datamodule, data_accepted, resolve_data_spec
from ..data.tokens import FORMAT, FORMAT_VERSION, INDEX_NAME, code_dtype, load_token_shards, shard_name
from ..generator.compat import tokenizer_identity
from ..metrics.lengths import length_summary, plot_length_comparison
from .checks import CommandParser, check_device, check_output_path

LENGTHS_PLOT = "lengths.png"  # written beside the shards once the folder is complete

SPLITS = ("train", "val", "test")


def build_parser() -> argparse.ArgumentParser:
    p = CommandParser(prog="tokgen tokenize", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ckpt", required=True, help="tokenizer checkpoint written by `tokgen fit`")
    p.add_argument("--data", required=True,
                   help=f"{DATA_ACCEPTED}; video tokenizers: {data_accepted(video=True)}")
    p.add_argument("--split", default="train", help=f"one of {', '.join(SPLITS)} (default train)")
    p.add_argument("--out", required=True, help="output folder (index.json + shard_*.safetensors)")
    p.add_argument("--batch-size", type=int, default=256, help="images per encoder batch (default 256)")
    p.add_argument("--shard-size", type=int, default=10000, help="examples per shard file (default 10000)")
    p.add_argument("--num-workers", type=int, default=0, help="DataLoader workers (default 0)")
    p.add_argument("--limit", type=int, default=None, help="encode only the first N items (smoke tests)")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N (default auto)")
    p.add_argument("--no-ema", action="store_true", help="use the raw weights instead of the EMA weights")
    p.add_argument("--target-error", type=float, metavar="EPS", help="halting tokenizer: keep per image the prefix "
                   "its halting head chooses for target error EPS (shards hold codes zero-padded past each length)")
    p.add_argument("--halt-threshold", type=float, help="with --target-error: halting probability threshold "
                   "(default: the checkpoint's halt_threshold)")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    return p


# ---------------------------------------------------------------------------------------------------- data
def build_split(spec: dict, split: str):
    """Instantiate the datamodule and return (dataset of the split, datamodule)."""
    dm = build_datamodule(spec)
    dm.prepare_data()
    dm.setup("fit" if split in ("train", "val") else "test")
    dataset = getattr(dm, f"{split}_set", None)
    if dataset is None:
        raise ValueError(f"datamodule {spec['class_path']} has no {split} split")
    if getattr(dataset, "random_flip", False):  # tokens must be a pure function of the item index
        dataset.random_flip = False
    return dataset, dm


# ---------------------------------------------------------------------------------------------------- shards
def _write_json(path: str, obj: dict) -> None:
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=1)
    os.replace(tmp, path)


def _shard_ok(path: str, expected: int) -> bool:
    from safetensors import safe_open

    try:
        with safe_open(path, framework="pt") as f:
            return f.get_slice("codes").get_shape()[0] == expected
    except Exception:
        return False


def _encode(tokenizer, images: torch.Tensor, target_error: float | None = None,
            threshold: float | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """-> codes (B, K) int64 and lengths (B,): halting tokenizers may return fewer tokens per image."""
    if target_error is not None:
        return tokenizer.encode(images, target_error=target_error, threshold=threshold)
    if hasattr(tokenizer, "encode_with_lengths"):
        return tokenizer.encode_with_lengths(images)
    codes = tokenizer.encode(images)
    return codes, torch.full((codes.shape[0],), codes.shape[1], dtype=torch.long, device=codes.device)


def _video_setup(args: argparse.Namespace, device: torch.device):
    """A video tokenizer checkpoint -> (tokenizer, data spec, encode(batch) -> (codes (B, K), lengths (B,)))."""
    from ..video import VideoTokenizer

    if getattr(args, "target_error", None) is not None or getattr(args, "halt_threshold", None) is not None:
        raise ValueError(f"--target-error / --halt-threshold need a halting tokenizer; {args.ckpt} holds a video "
                         f"tokenizer (its token count is the number of trajectories): drop them")
    tokenizer = VideoTokenizer.from_checkpoint(args.ckpt, use_ema=not args.no_ema).to(device)
    c = tokenizer.config
    trajectory = tokenizer.needs_trajectories
    fixed = {"num_frames": c.num_frames, "trajectories": trajectory}
    if trajectory:
        fixed["extraction"] = tokenizer.extraction_settings()
    spec = resolve_data_spec(args.data, c.image_size, c.channels, video=fixed, expected_by="tokenizer")
    slots = torch.arange(tokenizer.num_tokens, device=device)
    group = tokenizer.quantizer.codes_per_token

    def encode(batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
        """-> codes (B, K * G) (a token's G codes consecutive, 0 past the length), lengths (B,) in codes."""
        ids = batch["traj_ids"].to(device) if trajectory else None
        _, codes, token_mask, _ = tokenizer.encode(batch["video"].to(device), ids)
        lengths = token_mask.sum(1)
        if not torch.equal(token_mask, slots < lengths[:, None]):  # extraction numbers trajectories 0..N-1
            raise ValueError("trajectory slots of a clip are not a prefix; its id map skips an id")
        codes = codes.reshape(*token_mask.shape, group)  # (B, K, G); G = 1 without groups
        return codes.masked_fill(~token_mask[..., None], 0).flatten(1), lengths * group

    return tokenizer, spec, encode


def _image_setup(args: argparse.Namespace, device: torch.device):
    """An image tokenizer checkpoint -> (tokenizer, data spec, encode(batch) -> (codes (B, K), lengths (B,)))."""
    from ..tokenizers import HaltingTokenizer, load_tokenizer

    tokenizer = load_tokenizer(args.ckpt, use_ema=not args.no_ema).to(device)
    if tokenizer.quantizer.codes_per_token > 1:
        raise ValueError(f"tokenizer {args.ckpt} has {tokenizer.quantizer.codes_per_token} codes per token (quantizer "
                         f"groups); token shards of grouped codes are written for video tokenizers only: train the "
                         f"image tokenizer with groups: 1")
    target_error = getattr(args, "target_error", None)
    threshold = getattr(args, "halt_threshold", None)
    if target_error is not None:
        if not isinstance(tokenizer, HaltingTokenizer):
            raise ValueError(f"--target-error needs a halting tokenizer checkpoint (tokgen.lit.HaltingModule); "
                             f"{args.ckpt} holds a fixed-length tokenizer (drop --target-error)")
        tokenizer.condition_index(target_error, 1)  # outside the trained range: fail before encoding
    elif threshold is not None:
        raise ValueError("--halt-threshold only applies with --target-error")
    spec = resolve_data_spec(args.data, tokenizer.config.image_size, tokenizer.config.channels,
                             expected_by="tokenizer")
    return tokenizer, spec, lambda batch: _encode(tokenizer, batch["image"].to(device), target_error, threshold)


def remove_unfinished(folder: str) -> None:
    """Remove what a failed first run wrote into the ``folder`` it created (the index and temporary shard files),
    then the folder itself if that leaves it empty; anything else in it is kept."""
    for name in os.listdir(folder):
        if name == INDEX_NAME or name.startswith(INDEX_NAME + ".tmp") or name.endswith(".safetensors.tmp"):
            os.remove(os.path.join(folder, name))
    if not os.listdir(folder):
        os.rmdir(folder)


def tokenize(args: argparse.Namespace) -> dict:
    if args.split not in SPLITS:
        raise ValueError(f"--split {args.split!r} is not accepted; use one of {', '.join(SPLITS)}")
    for name in ("batch_size", "shard_size"):
        if getattr(args, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be a positive integer, got {getattr(args, name)}")
    if args.limit is not None and args.limit < 1:
        raise ValueError(f"--limit must be a positive integer (items to encode), got {args.limit}")
    check_int("--num-workers", args.num_workers, minimum=0)
    check_output_path("--out", args.out, folder=True)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" \
        else check_device("--device", args.device)
    video = checkpoint_kind(args.ckpt) == "video_tokenizer"
    tokenizer, spec, encode = (_video_setup if video else _image_setup)(args, device)
    if tokenizer.quantizer.codebook_size is None:
        raise ValueError(f"tokenizer {args.ckpt} has continuous tokens (identity quantizer); token shards need codes"
                         + ("; train the video tokenizer with a discrete quantizer (e.g. "
                            "configs/video/moving_shapes_fsq_tiny.yaml)" if video else ""))
    target_error = getattr(args, "target_error", None)
    dataset, dm = build_split(spec, args.split)
    n = len(dataset) if args.limit is None else min(args.limit, len(dataset))
    if n < 1:
        raise ValueError(f"the {args.split} split of {args.data!r} is empty")

    identity = tokenizer_identity(tokenizer, args.ckpt, target_error, getattr(args, "halt_threshold", None))
    meta = {
        "format": FORMAT, "version": FORMAT_VERSION, "split": args.split, "data": json.loads(json.dumps(spec)),
        "num_examples": n,
        "shard_size": args.shard_size, "num_shards": -(-n // args.shard_size),
        "num_tokens": tokenizer.num_tokens * tokenizer.quantizer.codes_per_token,  # codes per sequence
        "codes_per_token": tokenizer.quantizer.codes_per_token,
        "codebook_size": tokenizer.quantizer.codebook_size,
        "num_classes": int(getattr(dm, "num_classes", 0) or 0), "code_dtype": str(code_dtype(tokenizer.quantizer.codebook_size)),
        "tokenizer": identity, "target_error": target_error,
    }
    created = not os.path.exists(args.out)
    os.makedirs(args.out, exist_ok=True)
    index_path = os.path.join(args.out, INDEX_NAME)
    if os.path.isfile(index_path):  # resume: the folder must hold tokens of the same tokenizer, data and sharding
        with open(index_path) as f:
            old = json.load(f)
        for key in ("format", "split", "data", "num_examples", "shard_size", "num_tokens", "codebook_size",
                    "target_error"):
            if old.get(key) != meta[key]:
                raise ValueError(f"{args.out} holds token shards made with another {key} ({old.get(key)!r}, now "
                                 f"{meta[key]!r}); use a new --out folder or delete it")
        if old.get("tokenizer", {}).get("fingerprint") != identity["fingerprint"]:
            raise ValueError(f"{args.out} holds token shards of another tokenizer (fingerprint "
                             f"{old.get('tokenizer', {}).get('fingerprint')}, now {identity['fingerprint']}); "
                             f"use a new --out folder or delete it")
    shards, todo = [], []
    for i in range(meta["num_shards"]):
        start, end = i * args.shard_size, min(n, (i + 1) * args.shard_size)
        path = os.path.join(args.out, shard_name(i))
        (shards if _shard_ok(path, end - start) else todo).append({"file": shard_name(i), "num_examples": end - start,
                                                                   "start": start})
    meta["shards"], meta["complete"] = sorted(shards, key=lambda s: s["file"]), not todo
    _write_json(index_path, meta)

    dtype = code_dtype(tokenizer.quantizer.codebook_size)
    bar = tqdm(total=n, initial=sum(s["num_examples"] for s in shards), unit="clip" if video else "img",
               desc=f"tokenize {args.split}",
               disable=args.no_progress)
    try:
        with torch.inference_mode():
            for shard in todo:
                items = range(shard["start"], shard["start"] + shard["num_examples"])
                loader = DataLoader(Subset(dataset, items), batch_size=args.batch_size, shuffle=False,
                                    num_workers=args.num_workers)
                codes, lengths, labels = [], [], []
                for batch in loader:
                    c, l = encode(batch)
                    codes.append(c.cpu().to(dtype))
                    lengths.append(l.cpu().to(torch.int32))
                    label = batch["label"] if "label" in batch else torch.zeros(len(c))  # video clips: no class
                    labels.append(label.to(torch.int64))
                    bar.update(len(c))
                path = os.path.join(args.out, shard["file"])
                save_file({"codes": torch.cat(codes).contiguous(), "lengths": torch.cat(lengths),
                           "labels": torch.cat(labels)}, f"{path}.tmp", metadata={"start": str(shard["start"])})
                os.replace(f"{path}.tmp", path)
                meta["shards"] = sorted(meta["shards"] + [shard], key=lambda s: s["file"])
                meta["complete"] = len(meta["shards"]) == meta["num_shards"]
                _write_json(index_path, meta)
    except Exception:
        if created and not meta["shards"]:  # nothing finished: leave no folder behind (an unreadable image, ...)
            remove_unfinished(args.out)
        raise
    finally:
        bar.close()
    if meta["complete"]:  # the length distribution, for adaptive tokenizers the point of the shards
        _, _, lengths, labels = load_token_shards(args.out)
        meta["lengths"] = length_summary(lengths, meta["num_tokens"], labels if meta["num_classes"] else None)
        plot_length_comparison({args.split: meta["lengths"]}, os.path.join(args.out, LENGTHS_PLOT),
                               title="tokens per " + ("clip" if video else "image"))
        _write_json(index_path, meta)
    return meta


def main(argv: list[str]) -> None:
    args = build_parser().parse_args(argv)
    meta = tokenize(args)
    print(f"wrote {meta['num_examples']} x {meta['num_tokens']} codes ({meta['num_shards']} shards, "
          f"codebook {meta['codebook_size']}) to {args.out}; mean length {meta['lengths']['mean']:.2f} "
          f"(histogram {os.path.join(args.out, LENGTHS_PLOT)})")
