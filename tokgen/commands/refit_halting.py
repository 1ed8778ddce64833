"""``tokgen refit-halting``: refit a trained halting tokenizer's halting head to the search minimum (see
``tokgen.tokenizers.halting_refit``) and write it as a new checkpoint; codes are unchanged, only lengths move.

Given a plain nested tokenizer instead (a ``tokgen.lit.TokenizerModule`` checkpoint trained with nested dropout),
it adds halting to it: a new halting head is fit on the unchanged encoder
(``tokgen.tokenizers.halting.halting_from_tokenizer``); ``--eps-range`` is then the range of target errors it
accepts. The default head (``--head error-model``) models each prefix's error per image from ``--prefixes``
decoded prefixes per image; ``--head classifier`` is fit to the search minimum at drawn eps.

    tokgen refit-halting --ckpt runs/fmnist_small/checkpoints/last.ckpt --data fmnist --eps-range 0.04,0.12 \
        --num-images 8192 --calibrate 0.85 --target-errors 0.05,0.06,0.08,0.1 --out runs/fmnist_halting/halting.ckpt

    tokgen refit-halting --ckpt runs/shapes_halting_gpu/checkpoints/last.ckpt \\
        --data configs/tokenizer/shapes_halting_gpu.yaml --num-images 8192 --eps-range 0.03,0.2 \\
        --calibrate 0.85 --target-errors 0.07,0.08,0.1,0.12 --out runs/shapes_halting_gpu/refit.ckpt

Labels come from the training split (never the val split used for threshold calibration, nor the test split
that is scored). With ``--calibrate MIN_MET`` the halting threshold is then chosen on the val split
(``tokgen.metrics.adaptive.calibrate_threshold``: the smallest that meets every eps of ``--target-errors`` on
MIN_MET of those images) and stored as the new checkpoint's ``halt_threshold``; with the error-model head, one
threshold per eps is stored instead (``halt_thresholds``: for each eps of ``--target-errors`` the smallest meeting
it on MIN_MET, never rising with eps, interpolated in log eps between them), so ``encode(images,
target_error=eps)``, ``tokgen tokenize --target-error`` and ``tokgen eval --target-errors`` use it by default.
The summary (held-out head BCE and exact-length rate before and after, the calibration) is printed as JSON (the
last line of stdout) and stored in the new checkpoint's metadata; a short reading of it goes to stderr.
"""
from __future__ import annotations

import argparse
import json
import sys
import os
import time

import torch

from ..data.base import check_int, check_number
from ..metrics.adaptive import calibrate_threshold
from .checks import CommandParser, check_device, check_output_path
from .eval import parse_target_errors
from ..metrics.datasets import DATA_ACCEPTED, build_data
from ..checkpoint import checkpoint_kind, checkpoint_nested_dropout
from ..tokenizers.halting import ERROR_METRICS, SEARCH_METHODS, HaltingTokenizer, halting_from_tokenizer
from ..tokenizers.tokenizer1d import Tokenizer1D
from ..tokenizers.halting_refit import refit_checkpoint, refit_halting_head


def build_parser() -> argparse.ArgumentParser:
    p = CommandParser(prog="tokgen refit-halting", description=__doc__.split("\n\n")[0])
    p.add_argument("--ckpt", required=True, help="halting tokenizer checkpoint (tokgen.lit.HaltingModule), or a nested "
                                                 "tokenizer's (tokgen.lit.TokenizerModule) to add halting to")
    p.add_argument("--data", required=True, help=f"training images: {DATA_ACCEPTED}")
    p.add_argument("--out", required=True, help="checkpoint to write (must differ from --ckpt)")
    p.add_argument("--num-images", type=int, default=4096, help="training-split images to label (default 4096)")
    p.add_argument("--reps", type=int, default=2, help="target errors drawn per image (default 2)")
    p.add_argument("--eps-range", help="lo,hi of the drawn target errors (default: the trained range)")
    p.add_argument("--error-metric", default=None, choices=ERROR_METRICS,
                   help="with a nested tokenizer: the per-pixel error eps measures on [0, 1] images (default l1)")
    p.add_argument("--head-hidden", type=int, default=None,
                   help="with a nested tokenizer: width of the new halting head's MLP (default 128)")
    p.add_argument("--head", default=None, choices=("error-model", "classifier"),
                   help="with a nested tokenizer: the new halting head. error-model (default): models every prefix's "
                        "error per image, so one threshold serves every eps and lengths never fall as eps falls; "
                        "classifier: a halting logit per register from the register state and eps, fit to the search "
                        "minimum at drawn eps")
    p.add_argument("--prefixes", type=int, default=8,
                   help="error-model head: prefix lengths decoded per image as labels (default 8; K-1 = all)")
    p.add_argument("--steps", type=int, default=3000)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--search", default="binary", choices=SEARCH_METHODS,
                   help="how k* is found: binary (~log2 K decodes) or linear (exact first k, up to K decodes)")
    p.add_argument("--calibrate", type=float, metavar="MIN_MET",
                   help="then choose the halting threshold on the val split (smallest meeting every --target-errors "
                        "eps on MIN_MET of the images, e.g. 0.85) and store it in the checkpoint")
    p.add_argument("--target-errors", metavar="EPS,...", help="with --calibrate: the eps values to calibrate for")
    p.add_argument("--calibrate-images", type=int, default=512, help="val images for --calibrate (default 512)")
    p.add_argument("--single-threshold", action="store_true",
                   help="error-model head: calibrate one threshold for every eps instead of one per --target-errors "
                        "eps (interpolated between them; a classifier head always gets one)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, help="torch CPU threads")
    p.add_argument("--device", default="cpu")
    p.add_argument("--no-progress", action="store_true")
    return p


def parse_range(text: str | None) -> tuple[float, float] | None:
    if text is None:
        return None
    try:
        lo, hi = (float(v) for v in text.split(","))
    except ValueError:
        raise ValueError(f"--eps-range {text!r} must be two numbers 'lo,hi', e.g. 0.04,0.16") from None
    return lo, hi


# the new head of a nested tokenizer when --head / --head-hidden / --error-metric are not given
NEW_HEAD_DEFAULTS = {"head": "error-model", "head_hidden": 128, "error_metric": "l1"}


def main(argv: list[str] | None = None) -> dict:
    args = build_parser().parse_args(argv)
    # everything that can be checked before the long part: outputs, device, numbers
    if os.path.abspath(args.out) == os.path.abspath(args.ckpt):
        raise ValueError(f"--out {args.out} is the input checkpoint; write the refit head to a new file")
    check_output_path("--out", args.out)
    device = check_device("--device", args.device)
    for flag, value in (("--num-images", args.num_images), ("--reps", args.reps), ("--steps", args.steps),
                        ("--batch-size", args.batch_size), ("--calibrate-images", args.calibrate_images),
                        ("--prefixes", args.prefixes)):
        check_int(flag, value, minimum=1)
    check_number("--lr", args.lr, 0, low_open=True)
    if args.calibrate is not None:
        check_number("--calibrate", args.calibrate, 0, 1, low_open=True)
    if args.threads is not None:
        torch.set_num_threads(check_int("--threads", args.threads, minimum=1))
    eps_range = parse_range(args.eps_range)
    if (args.calibrate is None) != (args.target_errors is None):
        raise ValueError("--calibrate MIN_MET and --target-errors EPS,... go together (the eps values to calibrate for)")
    if checkpoint_kind(args.ckpt) == "tokenizer1d":  # add halting to a nested tokenizer
        nested = checkpoint_nested_dropout(args.ckpt)
        if nested == "none":
            raise ValueError(f"--ckpt {args.ckpt} is a fixed-length tokenizer (nested_dropout: none): its short "
                             f"prefixes are not trained, so there is nothing to halt on; train a nested one "
                             f"(e.g. configs/tokenizer/fmnist_small.yaml)")
        if eps_range is None:
            raise ValueError(f"--ckpt {args.ckpt} is a plain tokenizer: give --eps-range lo,hi, the range of target "
                             f"errors ({args.error_metric} on [0, 1] images) the new halting head is trained for")
        for key, value in NEW_HEAD_DEFAULTS.items():
            if getattr(args, key) is None:
                setattr(args, key, value)
        check_int("--head-hidden", args.head_hidden, minimum=1)
        tok = halting_from_tokenizer(Tokenizer1D.from_checkpoint(args.ckpt), eps_range[0], eps_range[1],
                                     error_metric=args.error_metric, halt_head_hidden=args.head_hidden,
                                     halt_head=args.head.replace("-", "_")).to(device)
    else:
        tok = HaltingTokenizer.from_checkpoint(args.ckpt).to(device)
        c = tok.config
        for flag, given, key in (("--head", args.head and args.head.replace("-", "_"), "halt_head"),
                                 ("--head-hidden", args.head_hidden, "halt_head_hidden"),
                                 ("--error-metric", args.error_metric, "error_metric")):
            if given is not None and given != getattr(c, key):  # a refit keeps the head's kind and shape
                raise ValueError(f"{flag} {given}: --ckpt {args.ckpt} is a halting tokenizer with {key}="
                                 f"{getattr(c, key)}, which a refit keeps; {flag} applies when adding halting to a "
                                 f"nested tokenizer (drop it, or pass that tokenizer's checkpoint)")
    target_errors = None
    if args.target_errors is not None:
        target_errors = parse_target_errors(args.target_errors)
        for eps in target_errors:  # fail before the long part
            tok.condition_index(eps, 1)
    data = build_data(args.data, split="train", image_size=tok.config.image_size, channels=tok.config.channels,
                      num_images=args.num_images)
    start = time.perf_counter()
    summary = refit_halting_head(tok, data, eps_range=eps_range, reps=args.reps, steps=args.steps, lr=args.lr,
                                 batch_size=args.batch_size, search=args.search, seed=args.seed,
                                 progress=not args.no_progress, prefixes=args.prefixes)
    summary["seconds"] = time.perf_counter() - start
    summary["data"] = args.data
    if args.calibrate is not None:
        cal_data = build_data(args.data, split="val", image_size=tok.config.image_size, channels=tok.config.channels,
                              num_images=args.calibrate_images)
        calibration = calibrate_threshold(tok, cal_data, target_errors, min_met=args.calibrate,
                                          progress=not args.no_progress)
        tok.config.halt_threshold = calibration["threshold"]
        if tok.config.halt_head == "error_model" and not args.single_threshold:
            tok.config.halt_thresholds = calibration["table"]
        summary["calibration"] = {k: v for k, v in calibration.items() if k != "per_eps"}
        summary["calibration"]["per_eps"] = {f"{e:g}": v for e, v in calibration["per_eps"].items()}
    refit_checkpoint(args.ckpt, args.out, tok, summary)
    for line in summary_lines(summary, args):
        print(line, file=sys.stderr)
    print(json.dumps(summary))
    return summary


def summary_lines(summary: dict, args: argparse.Namespace) -> list[str]:
    """What a person reads (stderr; the JSON line on stdout is for programs): the fit, each calibrated eps with its
    threshold and the share of images that met it, a warning where MIN_MET was not reached, the file written."""
    def scores(d: dict) -> str:
        return ", ".join(f"{k} {v:.3g}" for k, v in d.items() if isinstance(v, (int, float)))

    lines = [f"refit-halting: {summary['head'].replace('_', '-')} head fit on {summary['examples']} images, "
             f"{summary['steps']} steps, {summary['seconds']:.0f} s; held-out {scores(summary['holdout_before'])} -> "
             f"{scores(summary['holdout_after'])}"]
    cal = summary.get("calibration")
    if cal:
        grid, table = cal["grid"], cal.get("table") or [[eps, cal["threshold"]] for eps in map(float, cal["per_eps"])]
        for eps, threshold in table:
            met = cal["per_eps"][f"{eps:g}"]["fraction_met"]
            share = met[grid.index(threshold)] if threshold in grid else float("nan")
            lines.append(f"  eps {eps:g}: threshold {threshold:g}, met on {share:.1%} of {cal['num_images']} val images")
        if not cal.get("table_reached", cal.get("reached", True)):
            lines.append(f"warning: no threshold met every eps on {args.calibrate:.0%} of the val images (the "
                         f"thresholds above are the strictest tried); more --steps / --num-images, or larger eps")
    lines.append(f"wrote {args.out}")
    return lines
