"""``tokgen video-tokenize``: trajectories of a video (count + overlay), optionally its tokens and reconstruction;
for a folder of clips, every clip in one call; ``tokgen video-eval``: video PSNR / SSIM of a video tokenizer per
number of tokens.

    tokgen video-tokenize clip.mp4 --out clip_trajectories.gif
    tokgen video-tokenize clip.mp4 --ckpt runs/video_moving_shapes_tiny/checkpoints/last.ckpt --recon recon.gif
    tokgen video-tokenize clips/ --out-dir clips_trajectories/
    tokgen video-eval --ckpt runs/video_moving_shapes_tiny/checkpoints/last.ckpt --budgets 1,2,4,8

Folder mode (VIDEO is a folder): every file of the folder (not its subfolders) ending in .mp4, .avi, .mov, .mkv,
.webm or .gif (any case) is processed in name order, with a progress bar. Each clip writes what one clip writes,
named after it, into --out-dir: ``<name>_trajectories.gif`` (--out .mp4: an MP4) and, with --ckpt and --recon
.gif|.mp4, ``<name>_recon.gif|.mp4``; then ``summary.json`` holds per clip the frames, trajectories and seconds
(plus the rest of the one-clip result) and the totals. A clip that cannot be decoded (or is too short for the
asked frames) is skipped with a warning naming it and listed under "failed"; the command exits with an error
only when every clip failed (after writing the summary).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

from ..values import check_int, check_number
from .checks import CommandParser, check_output_path

SUMMARY_NAME = "summary.json"


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
                      epilog="\n\n".join(__doc__.split("\n\n")[1:]),
                      formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("video", help="a video file (.mp4, .avi, .mov, .mkv, .webm, .gif), or a folder of them")
    p.add_argument("--out", default=None, help="overlay of the trajectories, .gif or .mp4 "
                                                "(default <video>_trajectories.gif next to the input); "
                                                "folder mode: the type of every overlay, .gif (default) or .mp4")
    p.add_argument("--out-dir", default=None, help="folder mode (required there): where every clip's outputs and "
                                                   "summary.json go; one clip: where the default --out goes")
    p.add_argument("--ckpt", default=None, help="video tokenizer checkpoint: also encode the clip into tokens "
                                                "(its frame count, size and extraction settings are used)")
    p.add_argument("--recon", default=None, help="with --ckpt: write the reconstruction from the tokens (.gif/.mp4); "
                                                 "folder mode: the type of every reconstruction, .gif or .mp4")
    p.add_argument("--num-frames", type=int, default=None, help="frames to read (default: all, or the model's)")
    p.add_argument("--start", type=int, default=0, help="first frame (default 0)")
    p.add_argument("--stride", type=int, default=1, help="frame step (default 1)")
    p.add_argument("--size", type=int, default=None, help="resize + centre crop to SIZE x SIZE "
                                                          "(default: the model's size, else 128)")
    p.add_argument("--extraction", default=None, help="JSON object of ExtractionConfig fields, e.g. "
                                                      "'{\"keyframe_interval\": 4}'")
    p.add_argument("--fps", type=float, default=8.0, help="frame rate of the written videos (default 8)")
    p.add_argument("--no-progress", action="store_true", help="folder mode: no progress bar")
    return p


def _check_clip_range(num_frames: int | None, stride: int, start: int) -> None:
    if (num_frames is not None and num_frames < 1) or stride < 1 or start < 0:
        raise ValueError(f"--num-frames={num_frames}, --stride={stride} must be >= 1 and --start={start} >= 0")


def list_clips(folder: str) -> list[str]:
    """The video files directly in ``folder`` (by extension, any case), sorted by name; none is a ValueError."""
    from ..video.io import READ_EXTENSIONS

    paths = sorted(os.path.join(folder, f) for f in os.listdir(folder)
                   if f.lower().endswith(READ_EXTENSIONS) and os.path.isfile(os.path.join(folder, f)))
    if not paths:
        raise ValueError(f"video folder {folder!r} holds no clips; accepted: files ending in "
                         f"{', '.join(READ_EXTENSIONS)} (any case) directly in the folder")
    return paths


def output_names(paths: list[str]) -> list[str]:
    """The name each clip's outputs are given: its file name without the extension, or with the extension
    joined by ``_`` where two clips share that stem (``a.mp4``, ``a.gif`` -> ``a_mp4``, ``a_gif``)."""
    stems = [os.path.splitext(os.path.basename(p))[0] for p in paths]
    return [stem if stems.count(stem) == 1 else os.path.basename(p).replace(".", "_") for stem, p in zip(stems, paths)]


def _output_type(flag: str, value: str | None, default: str | None) -> str | None:
    """Folder mode: ``--out`` / ``--recon`` name the file type of every clip's output, .gif or .mp4."""
    from ..video.io import WRITE_EXTENSIONS

    if value is None:
        return default
    if value.lower() not in WRITE_EXTENSIONS:
        raise ValueError(f"{flag} {value!r}: with a folder of clips {flag} names the file type of every clip's "
                         f"output; accepted: {', '.join(WRITE_EXTENSIONS)} (the files are named after the clips "
                         f"inside --out-dir)")
    return value.lower()


def tokenize_clip(path: str, args: argparse.Namespace, model, config, out: str, recon: str | None,
                  echo: bool = True) -> dict:
    """One clip: read it, extract its trajectories, write the overlay to ``out`` and, with a model, encode it
    (and write the reconstruction to ``recon``). Returns the result dict; ``echo`` prints the progress lines."""
    from ..video.extract import extract_trajectories
    from ..video.io import count_frames, overlay, read_clip, to_uint8_frames, write_video

    say = print if echo else (lambda *_: None)
    size = args.size if args.size is not None else (model.config.image_size if model is not None else 128)
    available = count_frames(path)  # unreadable / zero-frame videos fail here with one message
    if args.num_frames is not None:
        num_frames = args.num_frames
    elif model is not None:
        num_frames = model.config.num_frames
    else:
        num_frames = max(1, (available - args.start - 1) // args.stride + 1)
    _check_clip_range(num_frames, args.stride, args.start)
    frames = read_clip(path, args.start, num_frames, args.stride, size)  # (T, S, S, 3) uint8

    traj = extract_trajectories(frames, config)
    result = {"video": path, "frames": int(frames.shape[0]), "size": size, "trajectories": traj.num,
              "areas": [int(a) for a in traj.areas]}
    say(f"trajectories: {traj.num}  ({frames.shape[0]} frames at {size}x{size})")
    write_video(out, overlay(frames, traj.ids), fps=args.fps)
    result["overlay"] = out
    say(f"overlay: {out}")

    if model is not None:
        import numpy as np
        import torch

        video = torch.from_numpy(frames).permute(0, 3, 1, 2).float().div(127.5).sub(1)[None]
        ids = torch.from_numpy(traj.ids.astype(np.int64))[None]
        with torch.no_grad():
            z_q, codes, token_mask, _ = model.encode(video, ids if model.needs_trajectories else None)
            recon_video, _ = model.decode(z_q, token_mask)
        result["tokens"] = int(token_mask.sum())
        result["token_dim"] = int(z_q.shape[-1])
        say(f"tokens: {result['tokens']} x {result['token_dim']}-d ({model.config.kind})")
        if recon:
            write_video(recon, to_uint8_frames(recon_video[0]), fps=args.fps)
            result["recon"] = recon
            say(f"reconstruction: {recon}")
    return result


def main(argv: list[str] | None = None) -> dict:
    from ..video.extract import MIN_FLOW_SIZE, ExtractionConfig
    from ..video.io import WRITE_EXTENSIONS

    args = build_parser().parse_args(argv)
    if args.size is not None:
        check_int("--size", args.size, minimum=MIN_FLOW_SIZE)
    check_number("--fps", args.fps, 0, low_open=True)
    folder = os.path.isdir(args.video)
    if folder:
        return tokenize_folder(args)
    default_dir = args.out_dir if args.out_dir is not None else os.path.dirname(args.video)
    if args.out_dir is not None:
        check_output_path("--out-dir", args.out_dir, folder=True)
    default_out = os.path.join(default_dir, os.path.splitext(os.path.basename(args.video))[0] + "_trajectories.gif")
    out = check_output_path("--out", args.out or default_out, suffixes=WRITE_EXTENSIONS)
    if args.recon is not None:
        if not args.ckpt:
            raise ValueError("--recon writes the reconstruction from the tokens: it needs --ckpt")
        check_output_path("--recon", args.recon, suffixes=WRITE_EXTENSIONS)
    model, config = _model_and_config(args, ExtractionConfig)
    result = tokenize_clip(args.video, args, model, config, out, args.recon)
    print(json.dumps(result))
    return result


def _model_and_config(args: argparse.Namespace, config_class) -> tuple:
    """The video tokenizer of ``--ckpt`` (or None) and the extraction settings: the model's, updated by
    ``--extraction`` (checked here, before any clip is read)."""
    model = None
    if args.ckpt:
        from ..video import VideoTokenizer

        model = VideoTokenizer.from_checkpoint(args.ckpt)
    extraction = dict((getattr(model, "extraction", None) or {}) if model is not None else {})
    extraction.update(_parse_json(args.extraction, "--extraction"))
    return model, config_class.from_dict(extraction)


def tokenize_folder(args: argparse.Namespace) -> dict:
    """Folder mode (see the module docstring): every clip of ``args.video`` into ``args.out_dir``, one progress
    bar, ``summary.json``. Returns the summary."""
    from tqdm import tqdm

    from ..video.extract import ExtractionConfig

    if args.out_dir is None:
        raise ValueError(f"{args.video} is a folder of clips: give --out-dir, the folder every clip's outputs and "
                         f"{SUMMARY_NAME} are written to")
    out_dir = check_output_path("--out-dir", args.out_dir, folder=True)
    if os.path.realpath(out_dir) == os.path.realpath(args.video):
        raise ValueError(f"--out-dir {out_dir} is the folder of clips itself; accepted: another folder (a .gif "
                         f"overlay there would be read as a clip by the next run)")
    out_type = _output_type("--out", args.out, ".gif")
    recon_type = _output_type("--recon", args.recon, None)
    if recon_type is not None and not args.ckpt:
        raise ValueError("--recon writes the reconstruction from the tokens: it needs --ckpt")
    _check_clip_range(args.num_frames, args.stride, args.start)
    paths = list_clips(args.video)
    model, config = _model_and_config(args, ExtractionConfig)
    os.makedirs(out_dir, exist_ok=True)

    clips, failed = [], []
    begin = time.perf_counter()
    bar = tqdm(list(zip(paths, output_names(paths))), desc="video-tokenize", unit="clip", file=sys.stderr,
               disable=args.no_progress)
    for path, name in bar:
        clock = time.perf_counter()
        out = os.path.join(out_dir, name + "_trajectories" + out_type)
        recon = os.path.join(out_dir, name + "_recon" + recon_type) if recon_type else None
        try:
            result = tokenize_clip(path, args, model, config, out, recon, echo=False)
        except (ValueError, FileNotFoundError) as err:
            failed.append({"video": path, "error": str(err)})
            tqdm.write(f"tokgen video-tokenize: warning: skipped {path}: {err}", file=sys.stderr)
            continue
        clips.append({**result, "seconds": round(time.perf_counter() - clock, 4)})
    bar.close()
    summary_path = os.path.join(out_dir, SUMMARY_NAME)
    totals = {"clips": len(paths), "processed": len(clips), "failed": len(failed),
              "frames": sum(c["frames"] for c in clips), "trajectories": sum(c["trajectories"] for c in clips),
              "seconds": round(time.perf_counter() - begin, 4)}
    summary = {"folder": args.video, "out_dir": out_dir, "clips": clips, "failed": failed, "totals": totals}
    with open(summary_path, "w") as f:
        json.dump(summary, f, indent=2)
    if not clips:
        raise ValueError(f"none of the {len(paths)} clips in {args.video} could be processed (listed in "
                         f"{summary_path}); first: {failed[0]['video']}: {failed[0]['error']}")
    print(f"{len(clips)} of {len(paths)} clips processed ({len(failed)} failed) in {totals['seconds']:.2f} s; "
          f"summary: {summary_path}")
    print(json.dumps({**totals, "summary": summary_path}))
    return summary


# ---------------------------------------------------------------------------------------------------- video-eval
def build_eval_parser() -> argparse.ArgumentParser:
    from ..data.spec import data_accepted

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
    from ..data.spec import build_datamodule, resolve_data_spec
    from ..video import VideoTokenizer, evaluate_video_tokenizer
    from .eval import parse_budgets

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
