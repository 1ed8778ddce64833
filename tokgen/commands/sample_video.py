"""``tokgen sample`` with a video tokenizer: clips generated as sequences of trajectory tokens.

    tokgen sample --tokenizer runs/video_moving_shapes_fsq_tiny/checkpoints/last.ckpt \\
        --generator runs/gen_moving_shapes_traj_tiny/checkpoints/last.ckpt --budget 4 --num 8 --seed 0 --out clips.gif

The GPT writes trajectory codes largest trajectory first, the order of the tokenizer's slots, so budget k decodes
the first k codes: a clip of k trajectories (the coarse version of a clip with more). With ``--eos`` the generator
chooses the count: it stops at its end-of-sequence token, at most k (an EOS as the very first token is read as one
trajectory, since a clip needs at least one). With a group quantizer (G codes per trajectory) the GPT writes G codes
per trajectory: budget k is k trajectories = k * G codes, and EOS is only sampled after a whole trajectory (a
multiple of G codes), so no trajectory is cut. Per budget one tiled clip is written (``--out``, .gif or .mp4 by
extension; suffixed ``_k<budget>`` for several budgets): every frame is a grid of all clips at that frame, rows =
classes, columns = the first ``--grid-cols`` samples of each class. ``--out-dir`` also writes every clip as
``<out-dir>/k<budget>/<index>[_c<class>].<ext of --out>``. Sample i depends only on (seed, i), as for images, and
batches are split over processes the same way.
"""
from __future__ import annotations

import json
import os

import numpy as np
import torch

from ..generator import GPT, check_generator_tokenizer
from ..images import tile, to_uint8
from .sample import (budget_path, check_generator_options, generate_budgets, plan_samples, resolve_budgets,
                     resolve_classes)


@torch.no_grad()
def decode_clips(tokenizer, codes: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """codes (B, b) (or (B, b, G) with G codes per trajectory), lengths (B,) in trajectories -> uint8 clips
    (B, T, C, H, W) decoded from the first lengths[i] (>= 1) trajectories."""
    B, b = codes.shape[:2]
    K = tokenizer.num_tokens
    keep = torch.arange(K, device=codes.device)[None] < lengths.clamp(1, b)[:, None]  # (B, K) slots in use
    full = torch.cat([codes, codes.new_zeros(B, K - b, *codes.shape[2:])], 1)
    z_q = tokenizer.quantizer.codes_to_latents(full) * keep[..., None]  # padding slots are 0, as in encode
    clips, _ = tokenizer.decode(z_q, keep)
    return to_uint8(clips).cpu()


def clip_frames(clip: torch.Tensor) -> np.ndarray:
    """uint8 (T, C, H, W) -> (T, H, W, 3) for write_video (grey clips repeated to RGB)."""
    return clip.permute(0, 2, 3, 1).expand(-1, -1, -1, 3).numpy()


def tile_clips(clips: torch.Tensor, nrow: int) -> np.ndarray:
    """uint8 clips (N, T, C, H, W) -> (T, H', W', 3): frame t is the grid of every clip's frame t (``nrow`` clips
    per row, 1 px white padding, as the image grids)."""
    frames = [tile(clips[:, t], nrow) for t in range(clips.shape[1])]
    return clip_frames(torch.stack(frames))


def run_video(args, state) -> dict:
    """The video branch of :func:`tokgen.commands.sample.run` (arguments already checked, ``state`` set up).
    Returns {"clips": {budget: path}, "trajectories": {budget: mean count}} on the main process ({} elsewhere)."""
    from accelerate.utils import gather_object

    from ..video import VideoTokenizer, write_video
    from ..video.io import WRITE_EXTENSIONS

    out = args.out or "samples.gif"
    ext = os.path.splitext(out)[1].lower()
    if ext not in WRITE_EXTENSIONS:
        raise ValueError(f"--out {out!r}: a video tokenizer samples clips; accepted extensions "
                         f"{', '.join(WRITE_EXTENSIONS)}")
    if args.classifier:
        raise ValueError("--classifier scores images; it does not apply to a video tokenizer")
    device = state.device
    tokenizer = VideoTokenizer.from_checkpoint(args.tokenizer, use_ema=not args.no_ema).to(device)
    if tokenizer.quantizer.codebook_size is None:
        raise ValueError(f"video tokenizer {args.tokenizer} has continuous tokens (identity quantizer); a generator "
                         f"needs codes: train one with a discrete quantizer, e.g. "
                         f"configs/video/moving_shapes_fsq_tiny.yaml")
    model = GPT.from_checkpoint(args.generator, use_ema=not args.no_ema).to(device)
    check_generator_tokenizer(model, tokenizer, args.tokenizer, args.generator)
    c = model.config
    slots = "max_tokens" if tokenizer.needs_trajectories else "K"
    G = tokenizer.quantizer.codes_per_token  # codes per trajectory: budgets and lengths count trajectories
    budgets = resolve_budgets(args, tokenizer.num_tokens, c.block_size // G, f"the video tokenizer's {slots}")
    classes = resolve_classes(args, c.num_classes)
    check_generator_options(args, c)
    labels, batches, grid_members = plan_samples(args, classes)
    # one generation serves every budget (EOS is decided token by token) unless the guidance schedule depends on k
    shared = args.cfg_schedule == "constant" or args.cfg == 1.0

    grid: dict[int, list] = {b: [] for b in budgets}
    counts: dict[int, list] = {b: [] for b in budgets}  # trajectories per clip
    with state.split_between_processes(batches) as my_batches:
        for idx in my_batches:
            for b, (codes, lengths) in generate_budgets(model, args, idx, labels, budgets, device, shared,
                                                        codes_per_token=G).items():
                if G > 1:  # (B, b * G) -> (B, b, G); lengths are whole trajectories (EOS only between them)
                    codes, lengths = codes.unflatten(1, (b, G)), lengths // G
                clips = decode_clips(tokenizer, codes, lengths)
                counts[b] += lengths.clamp(min=1).tolist()
                for j, i in enumerate(idx):
                    if args.out_dir:
                        name = f"{i:06d}{ext}" if labels[i] is None else f"{i:06d}_c{labels[i]}{ext}"
                        write_video(os.path.join(args.out_dir, f"k{b}", name), clip_frames(clips[j]), args.fps)
                    if i in grid_members:
                        grid[b].append((i, clips[j]))

    written, trajectories = {}, {}
    for b in budgets:
        members = gather_object(grid[b]) if state.num_processes > 1 else grid[b]
        n = gather_object(counts[b]) if state.num_processes > 1 else counts[b]
        if state.is_main_process:
            clips = torch.stack([m[1] for m in sorted(members, key=lambda m: m[0])])
            path = budget_path(out, b, len(budgets) > 1)
            write_video(path, tile_clips(clips, min(args.num, args.grid_cols)), args.fps)
            written[b], trajectories[b] = path, sum(n) / len(n)
            print(f"budget k={b}: {len(labels)} clips, {trajectories[b]:.2f} trajectories per clip, tiled {path}"
                  + (f", clips {os.path.join(args.out_dir, f'k{b}')}" if args.out_dir else ""))
    if state.is_main_process and args.metrics_json:
        os.makedirs(os.path.dirname(os.path.abspath(args.metrics_json)), exist_ok=True)
        with open(args.metrics_json, "w") as f:
            json.dump({"tokenizer": args.tokenizer, "generator": args.generator, "seed": args.seed, "eos": args.eos,
                       "clips": {str(b): p for b, p in written.items()},
                       "trajectories": {str(b): t for b, t in trajectories.items()}}, f, indent=1)
    state.wait_for_everyone()
    return {"clips": written, "trajectories": trajectories} if state.is_main_process else {}
