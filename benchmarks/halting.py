"""Acceptance numbers of halting on held-out images, from a trained halting checkpoint (shapes or Fashion-MNIST).

    python benchmarks/halting.py --ckpt runs/shapes_halting_gpu/refit.ckpt --data configs/tokenizer/shapes_halting_gpu.yaml \\
        --num-images 2000 --target-errors 0.07,0.08,0.1,0.12 --rho-eps 0.08 --calibrate 0.85
    python benchmarks/halting.py --ckpt runs/fmnist_halting/halting.ckpt --data fmnist --num-images 2000 \\
        --target-errors 0.05,0.06,0.08,0.1 --calibrate 0.85 --json benchmarks/halting_fmnist.json

Protocol: the test split of ``--data`` (never trained on; for shapes the seed offset 2_000_003), the first
``--num-images`` images. With ``--calibrate MIN_MET`` the halting threshold is first chosen on the val split
(``tokgen.metrics.adaptive.calibrate_threshold``: the smallest threshold meeting every eps on MIN_MET of those
images), then the test split is scored with it.
For each eps (``tokgen.metrics.adaptive.evaluate_adaptive``): one conditioned encoder pass, the halting
lengths, one decoder pass for the achieved error (per-pixel L1 on [0, 1] images); the search baseline on the
same codes (linear: exact smallest k meeting eps; binary: bisection) with its decoder passes per image.

Checks: per eps the fraction meeting eps >= ``--min-met`` (default 0.85), mean tokens <= 1.3x the search
minimum, decoder passes <= 1/5 of the binary search's; mean tokens never fewer at lower eps; at ``--rho-eps``
Spearman rho of the length against the content measure >= 0.6 (the number of shapes on shapes data, else edge
density, ``tokgen.metrics.adaptive.edge_density``), and against the search minimum reported per eps.
With ``--json`` also the length histograms and a grid whose tiles carry their token counts. The last line
printed is one JSON object.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from tokgen.metrics.adaptive import (adaptive_markdown, calibrate_threshold, evaluate_adaptive,  # noqa: E402
                                     plot_length_histograms)
from tokgen.images import save_labelled_grid  # noqa: E402
from tokgen.metrics.datasets import build_data  # noqa: E402
from tokgen.tokenizers import HaltingTokenizer  # noqa: E402


@torch.no_grad()
def save_halting_grid(tok, data, target_errors, threshold, n, path) -> None:
    """Rows: the first n scored images, then their reconstruction at each eps from the tokens halting kept
    (the count in each tile's corner)."""
    device = next(tok.parameters()).device
    x = next(iter(data.loader(n, 0)))["image"][:n].to(device)
    rows, captions = [("real", (x.cpu() + 1) / 2)], [None]
    for eps in target_errors:
        _, lengths, z_q = tok.encode_adaptive(x, eps, threshold=threshold)
        rows.append((f"eps {eps:g}", (tok.decode_latents(z_q, keep=lengths).cpu().clamp(-1, 1) + 1) / 2))
        captions.append([str(int(k)) for k in lengths])
    save_labelled_grid(rows, path, captions=captions)


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--ckpt", required=True, help="halting tokenizer checkpoint (tokgen.lit.HaltingModule)")
    p.add_argument("--num-images", type=int, default=1000)
    p.add_argument("--target-errors", default="0.02,0.03,0.04,0.06")
    p.add_argument("--min-met", type=float, default=0.85, help="fraction of images that must meet each eps")
    p.add_argument("--rho-eps", type=float, default=None, help="eps of the Spearman check (default: the median eps)")
    p.add_argument("--halt-threshold", type=float, default=None, help="default: the checkpoint's (or --calibrate's)")
    p.add_argument("--calibrate", type=float, default=None, metavar="MIN_MET",
                   help="choose the threshold on --calibrate-images images of the val split (never the scored split) "
                        "as the smallest that meets every eps on MIN_MET of them (e.g. 0.85)")
    p.add_argument("--calibrate-images", type=int, default=256)
    p.add_argument("--data", default="configs/tokenizer/shapes_halting.yaml",
                   help="'shapes' or a YAML recipe / datamodule (default: the halting recipe's data, plain background)")
    p.add_argument("--split", default="test", choices=("test", "val"))
    p.add_argument("--batch-size", type=int, default=200)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--device", default="cpu", help="e.g. cuda (scores in fp32 on that device)")
    p.add_argument("--json", help="also write the JSON here, the length histograms next to it (<stem>_lengths.png) "
                                  "and a grid of halting reconstructions (<stem>_grid.png)")
    p.add_argument("--grid-images", type=int, default=12, help="images in the grid (default 12)")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)

    tok = HaltingTokenizer.from_checkpoint(args.ckpt).to(args.device)
    target_errors = sorted(float(e) for e in args.target_errors.split(","))
    rho_eps = target_errors[len(target_errors) // 2] if args.rho_eps is None else args.rho_eps
    if rho_eps not in target_errors:
        target_errors = sorted(target_errors + [rho_eps])
    calibration = None
    if args.calibrate is not None:
        if args.split == "val":
            raise ValueError("--calibrate uses the val split; score the test split (--split test)")
        cal_data = build_data(args.data, split="val", image_size=tok.config.image_size, channels=tok.config.channels,
                              num_images=args.calibrate_images)
        calibration = calibrate_threshold(tok, cal_data, target_errors, min_met=args.calibrate,
                                          batch_size=args.batch_size, progress=False)
        if args.halt_threshold is None:
            args.halt_threshold = calibration["threshold"]
        print(f"calibrated threshold {calibration['threshold']} on {calibration['num_images']} val images "
              f"(reached {args.calibrate:.0%}: {calibration['reached']})", file=sys.stderr)
    data = build_data(args.data, split=args.split, image_size=tok.config.image_size, channels=tok.config.channels,
                      num_images=args.num_images)
    start = time.perf_counter()
    report = evaluate_adaptive(tok, data, target_errors, batch_size=args.batch_size, threshold=args.halt_threshold,
                               progress=False)
    seconds = time.perf_counter() - start
    rows = {r["eps"]: r for r in report["results"]}
    content = "num_shapes" if "spearman_length_vs_num_shapes" in rows[rho_eps] else "edge_density"
    rho = rows[rho_eps][f"spearman_length_vs_{content}"]
    checks = {
        "spearman_rho": {"eps": rho_eps, "against": content, "value": rho, "target": ">= 0.6", "ok": rho >= 0.6},
        "per_eps": [{
            "eps": r["eps"],
            "fraction_met": r["fraction_met"], "fraction_met_ok": r["fraction_met"] >= args.min_met,
            "mean_tokens": r["mean_tokens"], "search_min_tokens": r["search_linear"]["mean_tokens"],
            "tokens_vs_search": r["tokens_vs_search"], "tokens_ok": r["tokens_vs_search"] <= 1.3,
            "decoder_passes": r["decoder_passes"], "binary_search_passes": r["search_binary"]["decoder_passes"],
            "linear_search_passes": r["search_linear"]["decoder_passes"],
            "passes_vs_binary_search": r["passes_vs_binary_search"], "passes_ok": r["passes_vs_binary_search"] <= 0.2,
            "spearman_rho": r[f"spearman_length_vs_{content}"],
            "spearman_vs_search_min": r["spearman_length_vs_search_min"],
            "spearman_vs_edge_density": r["spearman_length_vs_edge_density"],
        } for r in report["results"]],
        "monotone_mean_tokens": report["monotone_mean_tokens"],
        "monotone_images": report["monotone_images"],
    }
    out = {
        "benchmark": "halting", "min_met": args.min_met, "checkpoint": os.path.abspath(args.ckpt), "split": args.split,
        "num_images": report["num_images"], "num_tokens": report["num_tokens"], "error_metric": report["error_metric"],
        "trained_range": report["trained_range"], "halt_threshold": report["halt_threshold"],
        "halt_thresholds": report["halt_thresholds"], "data": args.data,
        "calibration": calibration,
        "eval_seconds": seconds, "threads": args.threads, "device": args.device, "checks": checks,
        "results": [{k: v for k, v in r.items()} for r in report["results"]],
    }
    print(adaptive_markdown(report), file=sys.stderr)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=1)
        stem = os.path.splitext(args.json)[0]
        plot_length_histograms(report, f"{stem}_lengths.png")
        save_halting_grid(tok, data, target_errors, args.halt_threshold, args.grid_images, f"{stem}_grid.png")
    print(json.dumps(out))
    return out


if __name__ == "__main__":
    main()
