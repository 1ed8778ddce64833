"""Trajectory extraction on moving_shapes: time per clip, recall / purity against the ground-truth tracks, and how
the token count changes when the clip length doubles (trajectories vs space-time patches).

    OMP_NUM_THREADS=1 python benchmarks/trajectory_extraction.py --clips 20

Time is measured per 16-frame 128x128 clip (``--frames``, ``--size``), wall clock and process CPU time (the CPU
time is what the clip costs on a machine shared with other jobs), for the rendered clips and for the same clips
read back from MP4 files (decoding included). ``--startup-runs`` fresh ``tokgen video-tokenize clip.mp4``
processes time the command's start-up: seconds from launching the process to the first open of the clip
(interpreter start and every import), the whole call, and the process's CPU time. The last line printed is one
JSON object.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from tokgen.data.video import MovingShapesDataset  # noqa: E402
from tokgen.video import ExtractionConfig, extract_trajectories, track_scores  # noqa: E402
from tokgen.video.io import read_clip, to_uint8_frames, write_video  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Runs ``tokgen video-tokenize`` (tokgen.cli.main on argv[2:]) and prints on stderr the seconds from argv[1] (the
# parent's time.time() at launch) to the first open of a video file.
STARTUP_CHILD = """import sys, time
t0 = float(sys.argv[1])
import tokgen.video.io as vio
real_open, seen = vio._open, []
def first_open(path):
    if not seen:
        seen.append(path)
        sys.stderr.write(f"FIRST_OPEN_S {time.time() - t0:.4f}\\n")
    return real_open(path)
vio._open = first_open
from tokgen.cli import main
main(sys.argv[2:])
"""


def startup(clip: str, out: str, runs: int, threads: int) -> dict:
    """Median over ``runs`` fresh processes of ``tokgen video-tokenize clip --out out``: seconds to the first open
    of the clip, seconds for the whole call, CPU seconds of the process (user + system)."""
    env = {**os.environ, "PYTHONPATH": ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""),
           "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    first, total, cpu = [], [], []
    for _ in range(runs):
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        t0 = time.time()
        proc = subprocess.run([sys.executable, "-c", STARTUP_CHILD, repr(t0), "video-tokenize", clip, "--out", out],
                              env=env, capture_output=True, text=True, timeout=300)
        total.append(time.time() - t0)
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        if proc.returncode != 0:
            raise RuntimeError(f"tokgen video-tokenize {clip} failed ({proc.returncode}): {proc.stderr[-2000:]}")
        first.append(float(proc.stderr.split("FIRST_OPEN_S ")[1].split()[0]))
        cpu.append(after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime)
    return {"runs": runs, "first_open_s_median": round(statistics.median(first), 3),
            "total_s_median": round(statistics.median(total), 3), "cpu_s_median": round(statistics.median(cpu), 3),
            "command": f"tokgen video-tokenize <{os.path.basename(clip)}: 16x128x128 MP4> --out <gif>"}


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--clips", type=int, default=20)
    p.add_argument("--frames", type=int, default=16)
    p.add_argument("--size", type=int, default=128)
    p.add_argument("--seed", type=int, default=123)
    p.add_argument("--tubelet", default="2,16,16", help="space-time patch t,h,w for the patch-count comparison")
    p.add_argument("--extraction", default="{}", help="JSON object of ExtractionConfig fields")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--startup-runs", type=int, default=3, help="fresh video-tokenize processes to time (0: none)")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    import cv2

    cv2.setNumThreads(args.threads)
    cfg = ExtractionConfig.from_dict(json.loads(args.extraction))
    short = MovingShapesDataset(args.clips, args.frames, args.size, seed=args.seed)
    long = MovingShapesDataset(args.clips, 2 * args.frames, args.size, seed=args.seed)
    extract_trajectories(to_uint8_frames(short[0]["video"]), cfg)  # warm-up (imports, OpenCV init)

    wall, cpu, recall, purity, n_short, n_long = [], [], [], [], [], []
    stages: dict[str, float] = {}
    for i in range(args.clips):
        item = short[i]
        frames = to_uint8_frames(item["video"])
        timings: dict = {}
        w0, c0 = time.perf_counter(), time.process_time()
        traj = extract_trajectories(frames, cfg, timings=timings)
        wall.append(time.perf_counter() - w0)
        cpu.append(time.process_time() - c0)
        for k, v in timings.items():
            stages[k] = stages.get(k, 0.0) + v / args.clips
        scores = track_scores(traj.ids, item["tracks"].numpy())
        recall.append(scores["recall"])
        purity.append(scores["purity"])
        n_short.append(traj.num)
        n_long.append(extract_trajectories(to_uint8_frames(long[i]["video"]), cfg).num)

    mp4_read, mp4_cpu = [], []  # the same clips read back from MP4 files: decoding + extraction
    with tempfile.TemporaryDirectory() as tmp:
        paths = []
        for i in range(args.clips):
            paths.append(os.path.join(tmp, f"clip{i}.mp4"))
            write_video(paths[-1], to_uint8_frames(short[i]["video"]))
        for path in paths:
            c0 = time.process_time()
            frames = read_clip(path, 0, args.frames, 1, args.size)
            c1 = time.process_time()
            extract_trajectories(frames, cfg)
            mp4_read.append(c1 - c0)
            mp4_cpu.append(time.process_time() - c1)
        launch = startup(paths[0], os.path.join(tmp, "overlay.gif"), args.startup_runs, args.threads) \
            if args.startup_runs > 0 else None

    ratios = np.array(n_long) / np.array(n_short)
    t, h, w = (int(v) for v in args.tubelet.split(","))
    patches = lambda frames: (frames // t) * (args.size // h) * (args.size // w)  # noqa: E731
    result = {
        "benchmark": "trajectory_extraction",
        "clips": args.clips, "frames": args.frames, "size": args.size, "threads": args.threads,
        "extraction": cfg.to_dict(),
        "wall_s_per_clip_mean": round(statistics.mean(wall), 4),
        "wall_s_per_clip_median": round(statistics.median(wall), 4),
        "cpu_s_per_clip_mean": round(statistics.mean(cpu), 4),
        "cpu_s_per_clip_median": round(statistics.median(cpu), 4),
        "stage_wall_s_mean": {k: round(v, 4) for k, v in stages.items()},
        "mp4_read_cpu_s_per_clip_median": round(statistics.median(mp4_read), 4),
        "mp4_extract_cpu_s_per_clip_median": round(statistics.median(mp4_cpu), 4),
        "startup": launch,
        "target_s_per_clip": 0.1,
        "recall_mean": round(float(np.mean(recall)), 4),
        "purity_mean": round(float(np.mean(purity)), 4),
        "trajectories_mean": round(float(np.mean(n_short)), 3),
        "trajectories_mean_2x_frames": round(float(np.mean(n_long)), 3),
        "count_ratio_2x_mean": round(float(ratios.mean()), 4),
        "count_ratio_of_means": round(float(np.mean(n_long) / np.mean(n_short)), 4),
        "count_within_20pct_fraction": round(float(np.mean(np.abs(ratios - 1) <= 0.2)), 4),
        "patch_tokens": patches(args.frames), "patch_tokens_2x_frames": patches(2 * args.frames),
        "tubelet": [t, h, w],
        "cpu": platform.processor() or platform.machine(), "loadavg": os.getloadavg()[0],
    }
    print(f"extraction {result['wall_s_per_clip_mean']:.3f} s/clip wall, {result['cpu_s_per_clip_mean']:.3f} s/clip CPU; "
          f"recall {result['recall_mean']:.3f} purity {result['purity_mean']:.3f}; trajectories "
          f"{result['trajectories_mean']:.2f} -> {result['trajectories_mean_2x_frames']:.2f} at 2x frames "
          f"(patches {result['patch_tokens']} -> {result['patch_tokens_2x_frames']})")
    if launch:
        print(f"video-tokenize start-up: first clip opened after {launch['first_open_s_median']:.2f} s, whole call "
              f"{launch['total_s_median']:.2f} s wall, {launch['cpu_s_median']:.2f} s CPU (median of {launch['runs']})")
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
