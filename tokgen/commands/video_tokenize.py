"""``tokgen video-tokenize``: trajectories of a video (count + overlay), optionally its tokens and reconstruction;
``tokgen video-eval``: video PSNR / SSIM of a video tokenizer per number of tokens.

    tokgen video-tokenize clip.mp4 --out clip_trajectories.gif
    tokgen video-tokenize clip.mp4 --ckpt runs/video_moving_shapes_tiny/checkpoints/last.ckpt --recon recon.gif
    tokgen video-eval --ckpt runs/video_moving_shapes_tiny/checkpoints/last.ckpt --budgets 1,2,4,8
"""
from __future__ import annotations

import argparse
import json
import os

import numpy as np
import torch

from ..data.base import check_int, check_number
from ..data.spec import build_datamodule, data_accepted, resolve_data_spec
from .checks import CommandParser, check_output_path
from .eval import parse_budgets


def _parse_json(text: str | None, name: str) -> dict:
    if not text:
        return {}
    try:
        value = json.loads(text)
    except json.JSONDecodeError as err:
        raise ValueError(f"{name} must be a JSON object, e.g. '{{\"n_segments\": 64}}'; got {text!r} ({err})") from None
    if not isinstance(value, dict):
        raise ValueError(f"{name} must be a JSON object, got {text!r}")
    return value


def build_parser() -> argparse.ArgumentParser:
    p = CommandParser(prog="tokgen video-tokenize", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("video", help="a video file (.mp4, .avi, .mov, .mkv, .webm, .gif)")
    p.add_argument("--out", default=None, help="overlay of the trajectories, .gif or .mp4 "
                                                "(default <video>_trajectories.gif next to the input)")
    p.add_argument("--ckpt", default=None, help="video tokenizer checkpoint: also encode the clip into tokens "
                                                "(its frame count, size and extraction settings are used)")
    p.add_argument("--recon", default=None, help="with --ckpt: write the reconstruction from the tokens (.gif/.mp4)")
    p.add_argument("--num-frames", type=int, default=None, help="frames to read (default: all, or the model's)")
    p.add_argument("--start", type=int, default=0, help="first frame (default 0)")
    p.add_argument("--stride", type=int, default=1, help="frame step (default 1)")
    p.add_argument("--size", type=int, default=None, help="resize + centre crop to SIZE x SIZE "
                                                          "(default: the model's size, else 128)")
    p.add_argument("--extraction", default=None, help="JSON object of ExtractionConfig fields, e.g. "
                                                      "'{\"keyframe_interval\": 4}'")
    p.add_argument("--fps", type=float, default=8.0, help="frame rate of the written videos (default 8)")
    return p


def main(argv: list[str] | None = None) -> dict:
    from ..video import VideoTokenizer, extract_trajectories, overlay, write_video
    from ..video.io import WRITE_EXTENSIONS, count_frames, read_clip, to_uint8_frames
    from ..video.extract import MIN_FLOW_SIZE

    args = build_parser().parse_args(argv)
    if args.size is not None:
        check_int("--size", args.size, minimum=MIN_FLOW_SIZE)
    check_number("--fps", args.fps, 0, low_open=True)
    out = check_output_path("--out", args.out or os.path.splitext(args.video)[0] + "_trajectories.gif",
                            suffixes=WRITE_EXTENSIONS)
    if args.recon is not None:
        if not args.ckpt:
            raise ValueError("--recon writes the reconstruction from the tokens: it needs --ckpt")
        check_output_path("--recon", args.recon, suffixes=WRITE_EXTENSIONS)
    model = VideoTokenizer.from_checkpoint(args.ckpt) if args.ckpt else None
    extraction = dict((getattr(model, "extraction", None) or {}) if model is not None else {})
    extraction.update(_parse_json(args.extraction, "--extraction"))
    size = args.size if args.size is not None else (model.config.image_size if model is not None else 128)
    available = count_frames(args.video)  # unreadable / zero-frame videos fail here with one message
    if args.num_frames is not None:
        num_frames = args.num_frames
    elif model is not None:
        num_frames = model.config.num_frames
    else:
        num_frames = max(1, (available - args.start - 1) // args.stride + 1)
    if num_frames < 1 or args.stride < 1 or args.start < 0:
        raise ValueError(f"--num-frames={num_frames}, --stride={args.stride} must be >= 1 and --start={args.start} >= 0")
    frames = read_clip(args.video, args.start, num_frames, args.stride, size)  # (T, S, S, 3) uint8

    traj = extract_trajectories(frames, extraction)
    result = {"video": args.video, "frames": int(frames.shape[0]), "size": size, "trajectories": traj.num,
              "areas": [int(a) for a in traj.areas]}
    print(f"trajectories: {traj.num}  ({frames.shape[0]} frames at {size}x{size})")
    write_video(out, overlay(frames, traj.ids), fps=args.fps)
    result["overlay"] = out
    print(f"overlay: {out}")

    if model is not None:
        video = torch.from_numpy(frames).permute(0, 3, 1, 2).float().div(127.5).sub(1)[None]
        ids = torch.from_numpy(traj.ids.astype(np.int64))[None]
        with torch.no_grad():
            z_q, codes, token_mask, _ = model.encode(video, ids if model.needs_trajectories else None)
            recon, _ = model.decode(z_q, token_mask)
        result["tokens"] = int(token_mask.sum())
        result["token_dim"] = int(z_q.shape[-1])
        print(f"tokens: {result['tokens']} x {result['token_dim']}-d ({model.config.kind})")
        if args.recon:
            write_video(args.recon, to_uint8_frames(recon[0]), fps=args.fps)
            result["recon"] = args.recon
            print(f"reconstruction: {args.recon}")
    print(json.dumps(result))
    return result


# ---------------------------------------------------------------------------------------------------- video-eval
def build_eval_parser() -> argparse.ArgumentParser:
    p = CommandParser(prog="tokgen video-eval", description="video PSNR / SSIM of a video tokenizer per "
                                "number of tokens (trajectory tokens: the first k trajectories of each clip)")
    p.add_argument("--ckpt", required=True, help="video tokenizer checkpoint written by `tokgen fit`")
    p.add_argument("--data", default="moving_shapes", help=f"validation clips of: {data_accepted(video=True)}")
    p.add_argument("--budgets", default=None, help="comma-separated token counts, e.g. 1,2,4,8 (default 1,2,4,..,K)")
    p.add_argument("--num-clips", type=int, default=64, help="clips to score (default 64)")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--out", default=None, help="write the result JSON here")
    return p


def eval_main(argv: list[str] | None = None) -> dict:
    from ..video import VideoTokenizer, evaluate_video_tokenizer

    args = build_eval_parser().parse_args(argv)
    check_int("--num-clips", args.num_clips, minimum=1)
    check_int("--batch-size", args.batch_size, minimum=1)
    if args.out is not None:
        check_output_path("--out", args.out, suffixes=(".json",))
    resolve_data_spec(args.data, video={})  # a bad --data fails before the checkpoint is read
    model = VideoTokenizer.from_checkpoint(args.ckpt)
    c = model.config
    K = model.num_tokens
    budgets = parse_budgets(args.budgets, K)
    fixed = {"num_frames": c.num_frames, "trajectories": model.needs_trajectories}
    if model.needs_trajectories:
        fixed["extraction"] = model.extraction_settings()
    named = {"val_size": args.num_clips}
    spec = resolve_data_spec(args.data, c.image_size, c.channels, video=fixed, expected_by="video tokenizer",
                             named_args={"moving_shapes": named, "folder": named})
    dm = build_datamodule({**spec, "init_args": {**spec["init_args"], "batch_size": args.batch_size}})
    result = evaluate_video_tokenizer(model, dm.val_dataloader(), budgets, limit=args.num_clips)
    print(f"{c.kind} tokenizer, {result['clips']} clips ({c.num_frames} frames at {c.image_size}x{c.image_size})")
    print("| tokens k | mean tokens used | PSNR dB | SSIM |\n|---|---|---|---|")
    for k in result["budgets"]:
        print(f"| {k} | {result['tokens_used'][k]:.2f} | {result['psnr'][k]:.2f} | {result['ssim'][k]:.4f} |")
    if args.out:
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        with open(args.out, "w") as f:
            json.dump({**result, "ckpt": args.ckpt, "data": args.data}, f, indent=2)
    print(json.dumps({k: result[k] for k in ("kind", "clips", "psnr", "ssim")}))
    return result
