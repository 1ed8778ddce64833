"""Trajectory tokens against space-time patch tokens at equal token counts and equal training compute (issue 7).

    python benchmarks/video_equal_compute.py --train          # trains the patch baselines (~25 CPU minutes), scores
    python benchmarks/video_equal_compute.py                  # scores existing runs only

Compute is training FLOPs: one training step of each recipe (forward + backward of the loss on the first train
batch) is counted with ``torch.utils.flop_counter.FlopCounterMode`` (matmuls and convolutions; element-wise work
is not counted, which favours nothing here: the trajectory decoder has more of it). The trajectory recipe trains
its own ``max_steps``; every patch baseline trains ``ceil(trajectory FLOPs / patch FLOPs)`` as many steps, so it
gets at least the trajectory tokenizer's training FLOPs. Trajectory extraction (superpixels + optical flow, ~0.03
s per clip, done once per clip and cached) is data preparation and not counted.

Token counts: a patch baseline with tubelet (t, h, w) has (T/t)(H/h)(W/w) tokens; the trajectory tokenizer is
scored with k slots (the first k trajectories, largest first), so it uses at most k tokens, fewer when a clip
has fewer trajectories ("tokens used"). Both are scored by ``tokgen video-eval`` on the same validation clips.
The last line printed is one JSON object.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys

import torch
import yaml

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import ROOT, emit, log  # noqa: E402

DEFAULT_TUBELETS = "2:8,64,32;4:8,32,32;8:4,32,32"


def train_step_flops(config_path: str, overrides: dict | None = None) -> tuple[float, int]:
    """(training FLOPs of one step on the recipe's first train batch, parameters) of a video recipe."""
    from torch.utils.flop_counter import FlopCounterMode

    from tokgen.data import VideoDataModule
    from tokgen.lit.tokenizer import OptimConfig
    from tokgen.lit.video import VideoTokenizerModule
    from tokgen.video.tokenizer import VideoTokenizerConfig

    cfg = yaml.safe_load(open(config_path))
    args = cfg["model"]["init_args"]
    tok = dict(args["tokenizer"], **(overrides or {}))
    torch.manual_seed(0)
    module = VideoTokenizerModule(VideoTokenizerConfig.from_dict(tok), OptimConfig(**args["optim"]),
                                  alpha_weight=args.get("alpha_weight", 0.1),
                                  geometry_weight=args.get("geometry_weight", 0.1))
    dm = VideoDataModule(**dict(cfg["data"]["init_args"], train_size=cfg["data"]["init_args"]["batch_size"]))
    batch = next(iter(dm.train_dataloader()))
    with FlopCounterMode(display=False) as counter:
        loss, _ = module.compute_loss(module.tokenizer, batch)
        loss.backward()
    return float(counter.get_total_flops()), sum(p.numel() for p in module.tokenizer.parameters())


def run(cmd: list[str], log_path: str) -> None:
    log("$ " + " ".join(cmd))
    with open(log_path, "a") as f:
        subprocess.run(cmd, check=True, stdout=f, stderr=subprocess.STDOUT, cwd=ROOT)


def video_eval(ckpt: str, budgets: list[int], num_clips: int, out: str, log_path: str) -> dict:
    run(["tokgen", "video-eval", "--ckpt", ckpt, "--budgets", ",".join(map(str, budgets)), "--num-clips",
         str(num_clips), "--out", out], log_path)
    with open(out) as f:
        return json.load(f)


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--traj-config", default="configs/video/moving_shapes_tiny.yaml")
    p.add_argument("--patch-config", default="configs/video/moving_shapes_patch_tiny.yaml")
    p.add_argument("--traj-ckpt", default=None, help="default: <recipe default_root_dir>/checkpoints/last.ckpt")
    p.add_argument("--tubelets", default=DEFAULT_TUBELETS, help="TOKENS:t,h,w;... patch baselines to compare")
    p.add_argument("--runs", default="runs/video_eqflops", help="where the patch baselines are trained")
    p.add_argument("--num-clips", type=int, default=128)
    p.add_argument("--train", action="store_true", help="train the patch baselines (and the trajectory recipe when "
                                                        "its checkpoint is missing); otherwise score existing runs")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--json", default=None, help="also write the JSON here")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
    os.makedirs(os.path.join(ROOT, args.runs), exist_ok=True)
    log_path = os.path.join(ROOT, args.runs, "log.txt")

    traj_cfg = yaml.safe_load(open(os.path.join(ROOT, args.traj_config)))
    traj_steps = int(traj_cfg["trainer"]["max_steps"])
    traj_ckpt = args.traj_ckpt or os.path.join(traj_cfg["trainer"]["default_root_dir"], "checkpoints", "last.ckpt")
    traj_flops, traj_params = train_step_flops(os.path.join(ROOT, args.traj_config))
    log(f"trajectory: {traj_flops / 1e9:.2f} GFLOP per training step, {traj_steps} steps")
    if not os.path.isfile(os.path.join(ROOT, traj_ckpt)):
        if not args.train:
            raise SystemExit(f"trajectory checkpoint {traj_ckpt} not found; train it (--train) or pass --traj-ckpt")
        run(["tokgen", "fit", "--config", args.traj_config], log_path)

    variants = []
    for item in args.tubelets.split(";"):
        tokens, tubelet = item.split(":")
        variants.append((int(tokens), [int(v) for v in tubelet.split(",")]))
    budgets = sorted({t for t, _ in variants})
    traj_eval = video_eval(traj_ckpt, budgets, args.num_clips, os.path.join(ROOT, args.runs, "trajectory_eval.json"),
                           log_path)

    rows = []
    for tokens, tubelet in variants:
        flops, params = train_step_flops(os.path.join(ROOT, args.patch_config), {"tubelet": tubelet})
        steps = math.ceil(traj_steps * traj_flops / flops)
        root = os.path.join(args.runs, f"patch{tokens}")
        ckpt = os.path.join(root, "checkpoints", "last.ckpt")
        if args.train:
            interval = max(1, steps // 2)
            run(["tokgen", "fit", "--config", args.patch_config, "--model.init_args.tokenizer.tubelet", json.dumps(tubelet),
                 "--trainer.max_steps", str(steps), "--trainer.val_check_interval", str(interval),
                 "--checkpoint.every_n_train_steps", str(interval), "--trainer.default_root_dir", root], log_path)
        if not os.path.isfile(os.path.join(ROOT, ckpt)):
            raise SystemExit(f"patch baseline {ckpt} not found; run with --train")
        ev = video_eval(ckpt, [tokens], args.num_clips, os.path.join(ROOT, root, "eval.json"), log_path)
        if ev["num_tokens"] != tokens:
            raise SystemExit(f"tubelet {tubelet} gives {ev['num_tokens']} tokens, not {tokens}")
        traj_psnr, used = traj_eval["psnr"][str(tokens)], traj_eval["tokens_used"][str(tokens)]
        rows.append({
            "tokens": tokens, "tubelet": tubelet, "patch_params": params,
            "patch_gflop_per_step": flops / 1e9, "patch_steps": steps, "patch_train_gflop": steps * flops / 1e9,
            "patch_psnr": ev["psnr"][str(tokens)], "patch_ssim": ev["ssim"][str(tokens)],
            "trajectory_slots": tokens, "trajectory_tokens_used": used, "trajectory_psnr": traj_psnr,
            "trajectory_ssim": traj_eval["ssim"][str(tokens)],
            "trajectory_minus_patch_db": traj_psnr - ev["psnr"][str(tokens)],
            "trajectory_wins": traj_psnr > ev["psnr"][str(tokens)] and used <= tokens,
        })
        log(f"{tokens} tokens: trajectory {traj_psnr:.2f} dB ({used:.2f} used) vs patch {rows[-1]['patch_psnr']:.2f} dB "
            f"({steps} steps, {steps * flops / 1e12:.2f} TFLOP)")
    result = {
        "benchmark": "video_equal_compute", "num_clips": args.num_clips, "trajectory_ckpt": traj_ckpt,
        "trajectory_params": traj_params, "trajectory_gflop_per_step": traj_flops / 1e9,
        "trajectory_steps": traj_steps, "trajectory_train_gflop": traj_steps * traj_flops / 1e9,
        "rows": rows, "trajectory_wins_at_every_count": all(r["trajectory_wins"] for r in rows),
    }
    return emit(result, args.json)


if __name__ == "__main__":
    main()
