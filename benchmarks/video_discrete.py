"""Discrete trajectory tokens against continuous ones at equal training FLOPs (issue 19, item 3).

    python benchmarks/video_discrete.py --train --json benchmarks/video_discrete.json   # trains both recipes, scores
    python benchmarks/video_discrete.py                                                 # scores existing runs only

Both recipes are scored by ``tokgen video-eval`` on the same validation clips at budgets k (the first k
trajectories, largest first). Compute is counted as in ``video_equal_compute.py``: one training step (forward +
backward of the loss on the first train batch) under ``torch.utils.flop_counter.FlopCounterMode``, times the
recipe's ``max_steps``. The quantizer's rounding is element-wise work and not counted, so the two recipes have
equal FLOPs when their encoders, decoders and token widths match. The last line printed is one JSON object.
"""
from __future__ import annotations

import argparse
import os
import sys

import torch
import yaml

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import ROOT, emit, log  # noqa: E402
from video_equal_compute import run, train_step_flops, video_eval  # noqa: E402


def recipe(config: str, ckpt: str | None) -> tuple[int, str]:
    """(max_steps, checkpoint path) of a video recipe."""
    cfg = yaml.safe_load(open(os.path.join(ROOT, config)))
    return int(cfg["trainer"]["max_steps"]), ckpt or os.path.join(cfg["trainer"]["default_root_dir"], "checkpoints",
                                                                   "last.ckpt")


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--continuous-config", default="configs/video/moving_shapes_tiny.yaml")
    p.add_argument("--discrete-config", default="configs/video/moving_shapes_fsq_tiny.yaml")
    p.add_argument("--continuous-ckpt", default=None, help="default: <recipe default_root_dir>/checkpoints/last.ckpt")
    p.add_argument("--discrete-ckpt", default=None, help="default: <recipe default_root_dir>/checkpoints/last.ckpt")
    p.add_argument("--budgets", default="1,2,4,8")
    p.add_argument("--num-clips", type=int, default=128)
    p.add_argument("--train", action="store_true", help="train a recipe whose checkpoint is missing")
    p.add_argument("--runs", default="runs/video_discrete", help="where the eval JSON and the log go")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--json", default=None, help="also write the JSON here")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
    budgets = [int(b) for b in args.budgets.split(",")]
    os.makedirs(os.path.join(ROOT, args.runs), exist_ok=True)
    log_path = os.path.join(ROOT, args.runs, "log.txt")

    result = {"benchmark": "video_discrete", "num_clips": args.num_clips, "budgets": budgets}
    for name, config, ckpt in (("continuous", args.continuous_config, args.continuous_ckpt),
                               ("discrete", args.discrete_config, args.discrete_ckpt)):
        steps, ckpt = recipe(config, ckpt)
        flops, params = train_step_flops(os.path.join(ROOT, config))
        log(f"{name}: {flops / 1e9:.3f} GFLOP per training step, {steps} steps, {params} parameters")
        if not os.path.isfile(os.path.join(ROOT, ckpt)):
            if not args.train:
                raise SystemExit(f"{name} checkpoint {ckpt} not found; train it (--train) or pass --{name}-ckpt")
            run(["tokgen", "fit", "--config", config], log_path)
        ev = video_eval(ckpt, budgets, args.num_clips, os.path.join(ROOT, args.runs, f"{name}_eval.json"), log_path)
        quantizer = yaml.safe_load(open(os.path.join(ROOT, config)))["model"]["init_args"]["tokenizer"]["quantizer"]
        result[name] = {"config": config, "ckpt": ckpt, "quantizer": quantizer, "params": params,
                        "gflop_per_step": flops / 1e9, "steps": steps, "train_gflop": steps * flops / 1e9,
                        "psnr": ev["psnr"], "ssim": ev["ssim"], "tokens_used": ev["tokens_used"]}
    cont, disc = result["continuous"], result["discrete"]
    result["discrete_minus_continuous_db"] = {k: disc["psnr"][k] - cont["psnr"][k] for k in cont["psnr"]}
    result["flop_ratio"] = disc["train_gflop"] / cont["train_gflop"]
    result["within_1db_at_every_k"] = all(d > -1.0 for d in result["discrete_minus_continuous_db"].values())
    for k, d in result["discrete_minus_continuous_db"].items():
        log(f"k={k}: continuous {cont['psnr'][k]:.2f} dB, discrete {disc['psnr'][k]:.2f} dB ({d:+.2f} dB)")
    return emit(result, args.json)


if __name__ == "__main__":
    main()
