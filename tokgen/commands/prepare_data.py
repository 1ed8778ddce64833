"""``tokgen prepare-data``: write an image folder or token shards as streaming chunks (litdata) for
``tokgen.data.streaming.StreamingImageDataModule`` / ``StreamingTokenDataModule``.

    tokgen prepare-data images --input /data/imagenet/train --val-input /data/imagenet/val \\
        --image-size 256 --out /data/imagenet_256_chunks --workers 16
    tokgen prepare-data tokens --input runs/tokens/imagenet_flextok_d18/train \\
        --val-input runs/tokens/imagenet_flextok_d18/val --out runs/tokens/imagenet_flextok_d18/streaming

Images: the layout and split rules of ImageFolderDataModule (class subfolders, or a flat folder: detected when
images lie directly in it, forced with ``--flat``; validation from
``--val-input`` or a seeded ``--val-fraction`` of ``--input``), each image stored resized and center-cropped to
``--image-size`` (uint8 pixels with ``--encoding raw``, or PNG / JPEG bytes). Tokens: the codes, length and label
of every example of a ``tokgen tokenize`` folder (validation from ``--val-input`` or the last ``--val-size``).
The output folder is written under a temporary name and renamed when complete; it must not hold other data.
"""
from __future__ import annotations

import argparse

from ..data.folder import DEFAULT_EXTENSIONS
from ..data.streaming import ENCODINGS, prepare_images, prepare_tokens


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="tokgen prepare-data", description=__doc__.split("\n\n")[0])
    kinds = p.add_subparsers(dest="kind", required=True, metavar="{images,tokens}")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--out", required=True, help="new (or empty) folder to write")
    common.add_argument("--chunk-bytes", default="64MB", help="chunk size in bytes, e.g. 64MB (default)")
    common.add_argument("--chunk-size", type=int, help="samples per chunk (instead of --chunk-bytes)")

    images = kinds.add_parser("images", parents=[common], help="an image folder (ImageFolderDataModule layout)")
    images.add_argument("--input", required=True, help="training images: class subfolders, or a flat folder (detected; or --flat)")
    images.add_argument("--val-input", help="validation images (same class subfolders); default: split --input")
    images.add_argument("--val-fraction", type=float, default=0.01,
                        help="fraction of --input held out when --val-input is not given (default 0.01)")
    images.add_argument("--image-size", type=int, required=True, help="side S of the stored S x S images")
    images.add_argument("--flat", action="store_true", help="no class subfolders, whatever the folder holds: every image found (recursively), label 0")
    images.add_argument("--extensions", default=",".join(DEFAULT_EXTENSIONS),
                        help=f"accepted file extensions (default {','.join(DEFAULT_EXTENSIONS)})")
    images.add_argument("--encoding", default="png", choices=ENCODINGS,
                        help="raw uint8 pixels, PNG (lossless, default) or JPEG (quality 95) bytes")
    images.add_argument("--workers", type=int, default=4,
                        help="processes that decode and resize images (default 4; 1 = in this process)")
    images.add_argument("--seed", type=int, default=0, help="seed of the --val-fraction split (default 0)")

    tokens = kinds.add_parser("tokens", parents=[common], help="token shards written by `tokgen tokenize`")
    tokens.add_argument("--input", required=True, help="token-shard folder (index.json inside)")
    tokens.add_argument("--val-input", help="validation token shards; default: hold out the last --val-size")
    tokens.add_argument("--val-size", type=int, default=512,
                        help="examples held out when --val-input is not given (default 512, 0 = none)")
    return p


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    if getattr(args, "workers", 1) < 1:
        raise ValueError(f"--workers must be a positive int, got {args.workers}")
    if args.chunk_size is not None and args.chunk_size < 1:
        raise ValueError(f"--chunk-size must be a positive int, got {args.chunk_size}")
    common = dict(chunk_bytes=args.chunk_bytes, chunk_size=args.chunk_size)
    if args.kind == "images":
        extensions = tuple(e.strip() for e in args.extensions.split(",") if e.strip())
        meta = prepare_images(args.input, args.out, args.image_size, val_input=args.val_input,
                              val_fraction=args.val_fraction, class_subfolders=False if args.flat else None,
                              extensions=extensions, encoding=args.encoding, seed=args.seed, workers=args.workers,
                              **common)
    else:
        meta = prepare_tokens(args.input, args.out, val_input=args.val_input, val_size=args.val_size, **common)
    counts = ", ".join(f"{n} {name}" for name, n in meta["splits"].items())
    print(f"wrote {meta['kind']} ({counts}) to {args.out}")
