"""Movers as trajectories: recall of small moving objects, trajectory counts at T and 2T frames, and extraction
time, on moving_shapes with small / camouflaged / entering / occluded movers and on photo clips (camera motion
over ``skimage.data`` photos with moving sprites, :mod:`tokgen.data.photo_clips`).

    OMP_NUM_THREADS=1 python benchmarks/movers.py --clips 20

A mover is recalled when some trajectory has space-time mask IoU >= 0.5 with it over its lifetime
(:func:`tokgen.video.track_scores`). Time is process CPU time per clip of ``--frames`` frames at ``--size``
(one thread). The last line printed is one JSON object.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402

from tokgen.data.moving_shapes import MovingShapesDataset  # noqa: E402
from tokgen.data.photo_clips import PhotoMoversDataset  # noqa: E402
from tokgen.video import ExtractionConfig, extract_trajectories, track_scores  # noqa: E402
from tokgen.video.io import to_uint8_frames  # noqa: E402

HARD_SHAPES = {"min_shapes": 3, "max_shapes": 6, "mover_size_px": (4, 10), "camouflage": 0.3,
               "enter_fraction": 0.3, "occluders": 1}


def frames_of(item) -> np.ndarray:
    return to_uint8_frames(item["video"])


def score(short, long, cfg: ExtractionConfig, clips: int) -> dict:
    recall, purity, n_short, n_long, cpu = [], [], [], [], []
    for i in range(clips):
        item = short[i]
        c0 = time.process_time()
        traj = extract_trajectories(frames_of(item), cfg)
        cpu.append(time.process_time() - c0)
        s = track_scores(traj.ids, item["tracks"].numpy())
        recall.append(s["recall"])
        purity.append(s["purity"])
        n_short.append(traj.num)
        n_long.append(extract_trajectories(frames_of(long[i]), cfg).num)
    return {"recall": round(float(np.mean(recall)), 4), "purity": round(float(np.mean(purity)), 4),
            "trajectories": round(float(np.mean(n_short)), 3), "trajectories_2x_frames": round(float(np.mean(n_long)), 3),
            "count_ratio_2x": round(float(np.mean(n_long) / np.mean(n_short)), 4),
            "movers_per_clip": round(float(np.mean([int(short[i]["num_shapes"]) for i in range(clips)])), 3),
            "cpu_s_per_clip": round(float(np.mean(cpu)), 4), "cpu_s_per_clip_max": round(float(np.max(cpu)), 4)}


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--clips", type=int, default=20)
    p.add_argument("--frames", type=int, default=16)
    p.add_argument("--size", type=int, default=128)
    p.add_argument("--seed", type=int, default=123)
    p.add_argument("--extraction", default='{"movers": true}', help="JSON object of ExtractionConfig fields "
                   "(default: movers on)")
    args = p.parse_args(argv)
    import cv2
    import torch

    torch.set_num_threads(1)
    cv2.setNumThreads(1)
    cfg = ExtractionConfig.from_dict(json.loads(args.extraction))
    T, S, n = args.frames, args.size, args.clips
    sets = {
        "moving_shapes_small_movers": [MovingShapesDataset(n, f, S, seed=args.seed, **HARD_SHAPES) for f in (T, 2 * T)],
        "moving_shapes_default": [MovingShapesDataset(n, f, S, seed=args.seed) for f in (T, 2 * T)],
        "photo_clips_static_view": [PhotoMoversDataset(n, f, S, camera=False, seed=args.seed) for f in (T, 2 * T)],
        "photo_clips_camera_motion": [PhotoMoversDataset(n, f, S, seed=args.seed) for f in (T, 2 * T)],
    }
    extract_trajectories(frames_of(sets["moving_shapes_default"][0][0]), cfg)  # warm-up (imports, OpenCV init)
    result = {"benchmark": "movers", "clips": n, "frames": T, "size": S, "threads": 1,
              "extraction": cfg.to_dict(), "moving_shapes_small_movers_options": HARD_SHAPES}
    for name, (short, long) in sets.items():
        result[name] = score(short, long, cfg, n)
        r = result[name]
        print(f"{name}: recall {r['recall']:.3f} purity {r['purity']:.3f}, trajectories {r['trajectories']:.2f} -> "
              f"{r['trajectories_2x_frames']:.2f} at 2x frames, {r['cpu_s_per_clip']:.3f} s/clip CPU")
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
