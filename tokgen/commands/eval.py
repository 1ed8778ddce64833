"""``tokgen eval``: score a tokenizer at several token budgets (rFID, PSNR, SSIM, LPIPS), or sample folders (gFID).

    tokgen eval --ckpt runs/fmnist_small/checkpoints/last.ckpt --data fmnist --budgets 1,2,4,8,16,32 \
        --metrics psnr,ssim --feature-extractor features_fmnist.safetensors --out runs/fmnist_small/eval/fmnist.json
    tokgen eval --samples k32=samples/k32 --data fmnist --feature-extractor features_fmnist.safetensors --out gfid.json
    tokgen eval --ckpt runs/shapes_halting/checkpoints/last.ckpt --data shapes --target-errors 0.05,0.08,0.12
    tokgen eval --ckpt runs/fmnist_flow_small/checkpoints/last.ckpt --data fmnist --budgets 1,2,4,32 --flow-steps 25

Writes the JSON report, a Markdown table (also printed), a plot of each metric against k and a grid of
reconstructions next to ``--out``. The protocol is in ``tokgen.metrics.evaluate``. With ``--target-errors`` (a
halting tokenizer) it writes the adaptive report instead: mean tokens, achieved error, fraction meeting eps,
the search baseline and a histogram of lengths per eps (``tokgen.metrics.adaptive``).
"""
from __future__ import annotations

import argparse
import os
import sys

import torch

from ..data.base import check_int
from ..metrics.datasets import DATA_ACCEPTED, SampleFolder, build_data
from ..metrics.evaluate import PAIRED_METRICS, evaluate_samples, evaluate_tokenizer, write_report
from ..metrics.features import FeatureExtractor
from ..metrics.fid import InceptionFeatures, RealStatsCache, default_cache_dir
from ..tokenizers.nested_dropout import power_of_two_budgets
from .checks import CommandParser, check_device, check_output_path
from .flow_options import FLOW_OPTIONS, add_flow_arguments, apply_flow_arguments

METRICS = ("fid", *PAIRED_METRICS)


def build_parser() -> argparse.ArgumentParser:
    p = CommandParser(prog="tokgen eval", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    src = p.add_argument_group("what to score (one of)")
    src.add_argument("--ckpt", help="tokenizer checkpoint (tokgen fit's .ckpt): reconstruction metrics per budget")
    src.add_argument("--samples", action="append", metavar="[LABEL=]DIR",
                     help="folder of generated images scored against --data (gFID); repeat for several sets")
    p.add_argument("--data", required=True, help=f"real images: {DATA_ACCEPTED}")
    p.add_argument("--split", default="test", choices=("test", "val", "train"), help="split of --data (default test)")
    p.add_argument("--image-size", type=int, help="side of shapes/fmnist/folder images (default: the tokenizer's; "
                   "32 with --samples); must match the tokenizer")
    p.add_argument("--data-root", default="data", help="root folder of fmnist (default ./data)")
    p.add_argument("--budgets", help="comma-separated token budgets, e.g. 1,2,4,8 (default: powers of 2 up to K, and K)")
    p.add_argument("--target-errors", metavar="EPS,...", help="adaptive mode (halting tokenizer): comma-separated "
                   "target errors; reports mean tokens, achieved error, fraction meeting eps, the search baseline and "
                   "a histogram of lengths instead of per-budget metrics")
    p.add_argument("--halt-threshold", type=float, help="adaptive mode: halting probability threshold (default: "
                   "the checkpoint's halt_threshold)")
    p.add_argument("--metrics", help="comma-separated, from fid,psnr,ssim,lpips (default fid,psnr,ssim,lpips; with "
                   "--feature-extractor psnr,ssim,lpips; with --samples fid). Each --feature-extractor always adds "
                   "its own Fréchet metric (e.g. fid_fmnist)")
    p.add_argument("--feature-extractor", action="append", default=[], metavar="FILE",
                   help="feature extractor file (safetensors, from tokgen train-features): Fréchet distance in its "
                   "feature space, reported under its own name")
    p.add_argument("--trust-torchscript", action="store_true", help="also accept TorchScript --feature-extractor "
                   "files (deprecated); TorchScript runs code stored in the file, so only for files you trust")
    p.add_argument("--inception-weights", metavar="FILE", help="torch-fidelity Inception weights for fid (default: the "
                   "torch hub cache)")
    p.add_argument("--lpips-net", default="alex", choices=("alex", "vgg", "squeeze"), help="LPIPS backbone (default alex)")
    p.add_argument("--num-images", type=int, help="first N images of the split (default: all)")
    p.add_argument("--floors", action="store_true", help="also report two PSNR floors on the same images: the mean "
                   "image and 4x4 block means (a second pass over the data)")
    p.add_argument("--batch-size", type=int, default=100)
    p.add_argument("--num-workers", type=int, default=0)
    p.add_argument("--out", help="report JSON path (default: <run>/eval/<data>_<split>.json for --ckpt, "
                   "./gfid_<data>_<split>.json for --samples)")
    p.add_argument("--stats-cache", default=None, help=f"folder of cached real-image statistics (default "
                   f"$TOKGEN_CACHE/fid_stats or {default_cache_dir()})")
    p.add_argument("--no-stats-cache", action="store_true", help="always recompute the real-image statistics")
    p.add_argument("--grid-images", type=int, default=8, help="images per row in the reconstruction grid")
    p.add_argument("--no-ema", action="store_true", help="use the raw weights instead of the EMA weights")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--no-progress", action="store_true")
    add_flow_arguments(p)
    return p


def parse_list(text: str, name: str) -> list[str]:
    items = [t.strip() for t in text.split(",") if t.strip()]
    if not items:
        raise ValueError(f"--{name} is empty; give a comma-separated list")
    return items


def parse_budgets(text: str | None, K: int) -> list[int]:
    if text is None:
        return power_of_two_budgets(K)
    budgets = []
    for item in parse_list(text, "budgets"):
        if not item.isdigit() or not 1 <= int(item) <= K:
            raise ValueError(f"--budgets: {item!r} is not an accepted token budget; this tokenizer accepts integers 1..{K}")
        budgets.append(int(item))
    return sorted(set(budgets))


def parse_samples(items: list[str]) -> dict[str, str]:
    sets = {}
    for item in items:
        label, sep, folder = item.partition("=")
        if not sep:
            label, folder = os.path.basename(os.path.normpath(item)) or item, item
        if label in sets:
            raise ValueError(f"--samples label {label!r} is used twice; name the sets LABEL=DIR")
        sets[label] = folder
    return sets


def data_name(spec: str) -> str:
    if spec.startswith("folder:"):
        return "folder_" + (os.path.basename(os.path.normpath(spec[len("folder:"):])) or "root")
    return os.path.splitext(os.path.basename(spec))[0]


def default_out(args) -> str:
    # a folder is scored whole (--split does not apply to it), so its name alone names the report
    name = data_name(args.data) if args.data.startswith("folder:") else f"{data_name(args.data)}_{args.split}"
    if args.ckpt:
        folder = os.path.dirname(os.path.abspath(args.ckpt))
        run = os.path.dirname(folder) if os.path.basename(folder) == "checkpoints" else folder
        return os.path.join(run, "eval", f"{name}.json")
    return f"gfid_{name}.json"


def main(argv: list[str]) -> None:
    args = build_parser().parse_args(argv)
    if bool(args.ckpt) == bool(args.samples):
        raise ValueError("give exactly one of --ckpt (reconstructions per budget) or --samples (generated images)")
    if args.samples and any(getattr(args, flag) is not None for flag in FLOW_OPTIONS):
        raise ValueError("--flow-steps/--flow-cfg/--flow-seed decode a flow tokenizer checkpoint (--ckpt); "
                         "--samples scores images that are already decoded")
    if args.out is not None and (os.path.isdir(args.out) or not args.out.endswith(".json")):
        raise ValueError(f"--out {args.out} must be a .json file path (the Markdown table and PNGs are written "
                         f"next to it), not a folder")
    check_device("--device", args.device)
    for flag, value, minimum in (("--batch-size", args.batch_size, 1), ("--num-workers", args.num_workers, 0),
                                 ("--grid-images", args.grid_images, 1)):
        check_int(flag, value, minimum=minimum)
    if args.target_errors is not None:
        return main_adaptive(args, argv)
    if args.num_images is not None and args.num_images < 2:
        raise ValueError(f"--num-images must be >= 2 (a covariance needs two images), got {args.num_images}")
    out = check_output_path("--out", args.out or default_out(args), suffixes=(".json",))

    if args.metrics is None:
        if args.samples:
            metrics = [] if args.feature_extractor else ["fid"]
        else:
            metrics = (["psnr", "ssim", "lpips"] if args.feature_extractor else list(METRICS))
    else:
        metrics = parse_list(args.metrics, "metrics")
    extractor_names_ok = set()

    # Load the model first (missing/corrupt checkpoint, budgets), then metric networks, then data.
    tokenizer = None
    if args.ckpt:
        from ..tokenizers import load_tokenizer

        tokenizer = load_tokenizer(args.ckpt, use_ema=not args.no_ema).to(args.device)
        flow_sampling = apply_flow_arguments(tokenizer, args, args.ckpt)
        budgets = parse_budgets(args.budgets, tokenizer.num_tokens)
        image_size, channels = tokenizer.config.image_size, tokenizer.config.channels
        if args.image_size is not None and args.image_size != image_size:
            raise ValueError(f"mismatched image size: --image-size {args.image_size} but checkpoint {args.ckpt} "
                             f"encodes {image_size}x{image_size} images; accepted: --image-size {image_size} or none")
    else:
        image_size, channels = args.image_size, None

    extractors = []
    probe = (channels or 3, image_size or 32)
    for path in args.feature_extractor:
        extractor = FeatureExtractor(path, probe=probe, trust_torchscript=args.trust_torchscript,
                                     what="--feature-extractor")
        extractor_names_ok.add(extractor.metric_name)
        extractors.append(extractor)
    accepted = (*METRICS, *sorted(extractor_names_ok))
    bad = [m for m in metrics if m not in accepted]
    if bad:
        raise ValueError(f"--metrics: {', '.join(map(repr, bad))} not accepted; accepted: {', '.join(accepted)}")
    if args.samples:
        paired = [m for m in metrics if m in PAIRED_METRICS]
        if paired:
            raise ValueError(f"--metrics {','.join(paired)} compare image pairs and need --ckpt; with --samples "
                             f"accepted: fid, {', '.join(sorted(extractor_names_ok)) or '(feature extractor names)'}")
    if "fid" in metrics:
        extractors.insert(0, InceptionFeatures(args.inception_weights))
    lpips_model = None
    if "lpips" in metrics:
        from ..lit.losses import build_lpips

        lpips_model = build_lpips(args.lpips_net).to(args.device)

    cache = None if args.no_stats_cache else RealStatsCache(args.stats_cache or default_cache_dir())
    data = build_data(args.data, split=args.split, image_size=image_size, channels=channels,
                      num_images=args.num_images, root=args.data_root)
    if lpips_model is not None and args.lpips_net != "vgg" and data.image_size < 32:
        raise ValueError(f"LPIPS-{args.lpips_net} needs images of at least 32x32, got {data.image_size}x{data.image_size}; "
                         "use --lpips-net vgg for smaller images")
    progress = not args.no_progress

    if tokenizer is not None:
        paired = [m for m in metrics if m in PAIRED_METRICS]
        report, grid = evaluate_tokenizer(tokenizer, data, budgets, paired, extractors, lpips_model,
                                          batch_size=args.batch_size, num_workers=args.num_workers, cache=cache,
                                          grid_images=args.grid_images, progress=progress, floors=args.floors)
        note = fixed_length_note(args.ckpt, budgets, tokenizer.num_tokens)
        if note:
            report.info["note"] = note
        report.info["checkpoint"] = os.path.abspath(args.ckpt)
        report.info["weights"] = "raw" if args.no_ema else "ema (when present)"
        if flow_sampling is not None:
            report.info["flow_sampling"] = flow_sampling
    else:
        sets = {}
        for label, folder in parse_samples(args.samples).items():
            sets[label] = SampleFolder(folder, data.image_size, data.channels)
        report = evaluate_samples(sets, data, extractors, batch_size=args.batch_size, num_workers=args.num_workers,
                                  cache=cache, progress=progress, device=args.device)
        grid = None
    if "lpips" in metrics:
        report.info["lpips_net"] = args.lpips_net
    report.info["data_spec"] = args.data
    report.info["split"] = args.split
    report.info["command"] = "tokgen eval " + " ".join(argv)
    paths = write_report(report, out, grid)
    print(report.markdown())
    sys.stdout.flush()
    enc = report.info.get("encode")
    if enc:
        print(f"\nencode: {enc['images/s']:.0f} images/s ({enc['tokens/s']:.0f} tokens/s); {report.info['num_images']} images")
    print("wrote " + ", ".join(paths.values()), file=sys.stderr)


def fixed_length_note(path: str, budgets: list[int], K: int) -> str | None:
    """A note when a checkpoint trained without nested dropout is scored at k < K (its prefixes are untrained)."""
    from ..checkpoint import checkpoint_nested_dropout

    nested = checkpoint_nested_dropout(path)  # None: not recorded
    if nested != "none" or min(budgets) >= K:
        return None
    note = (f"{path} was trained fixed-length (nested_dropout: none): only k = {K} is a trained budget; its "
            f"shorter prefixes decode untrained and can score below the mean-image floor. Train a nested recipe "
            f"(e.g. configs/tokenizer/folder_small.yaml) for any-prefix decoding.")
    print(f"tokgen eval: note: {note}", file=sys.stderr)
    return note


def parse_target_errors(text: str) -> list[float]:
    values = []
    for item in parse_list(text, "target-errors"):
        try:
            value = float(item)
        except ValueError:
            raise ValueError(f"--target-errors: {item!r} is not a number; give e.g. 0.05,0.08,0.12") from None
        if not 0 < value < float("inf"):
            raise ValueError(f"--target-errors: {item!r} is not accepted; target errors are numbers > 0, "
                             f"e.g. 0.05,0.08,0.12")
        values.append(value)
    return sorted(set(values))


def main_adaptive(args, argv: list[str]) -> None:
    """``--target-errors``: halting evaluation (tokgen.metrics.adaptive) of a halting tokenizer checkpoint."""
    from ..metrics.adaptive import adaptive_markdown, evaluate_adaptive, write_adaptive_report
    from ..tokenizers import HaltingTokenizer, load_tokenizer

    if not args.ckpt:
        raise ValueError("--target-errors scores a halting tokenizer: give --ckpt, not --samples")
    for flag, value in (("--budgets", args.budgets), ("--metrics", args.metrics),
                        ("--feature-extractor", args.feature_extractor or None)):
        if value:
            raise ValueError(f"{flag} does not apply with --target-errors (adaptive mode); drop one of them")
    target_errors = parse_target_errors(args.target_errors)
    out = check_output_path("--out", args.out or default_out(args).replace(".json", "_adaptive.json"),
                            suffixes=(".json",))
    tokenizer = load_tokenizer(args.ckpt, use_ema=not args.no_ema).to(args.device)
    if not isinstance(tokenizer, HaltingTokenizer):
        raise ValueError(f"--target-errors needs a halting tokenizer checkpoint (tokgen.lit.HaltingModule); "
                         f"{args.ckpt} holds a fixed-length tokenizer: score it per budget with --budgets")
    for eps in target_errors:
        tokenizer.condition_index(eps, 1)  # out of the trained range: fail before reading data
    image_size = tokenizer.config.image_size
    if args.image_size is not None and args.image_size != image_size:
        raise ValueError(f"mismatched image size: --image-size {args.image_size} but checkpoint {args.ckpt} "
                         f"encodes {image_size}x{image_size} images; accepted: --image-size {image_size} or none")
    data = build_data(args.data, split=args.split, image_size=image_size, channels=tokenizer.config.channels,
                      num_images=args.num_images, root=args.data_root)
    report = evaluate_adaptive(tokenizer, data, target_errors, batch_size=args.batch_size,
                               num_workers=args.num_workers, threshold=args.halt_threshold,
                               progress=not args.no_progress)
    report.update(checkpoint=os.path.abspath(args.ckpt), data_spec=args.data, split=args.split,
                  weights="raw" if args.no_ema else "ema (when present)", command="tokgen eval " + " ".join(argv))
    paths = write_adaptive_report(report, out)
    print(adaptive_markdown(report))
    print(f"\nmonotone mean tokens (lower eps never fewer): {report['monotone_mean_tokens']}")
    sys.stdout.flush()
    print("wrote " + ", ".join(paths.values()), file=sys.stderr)
