"""Realism of generated trajectory clips (issue 19, item 4): trajectory counts and per-trajectory statistics of
clips sampled from the trajectory GPT against those of real moving_shapes clips.

    python benchmarks/video_realism.py --tokenizer runs/video_moving_shapes_fsq_tiny/checkpoints/last.ckpt \\
        --generator runs/gen_moving_shapes_traj_tiny/checkpoints/last.ckpt --num 128 --json benchmarks/video_realism.json

Three sets of N clips, all DECODED by the same video tokenizer, so the tokenizer's blur is common to all of them
and the score measures the generator, not the tokenizer:

* ``real``: N training clips (moving_shapes train split, the clips the GPT's shards came from), encoded and decoded;
* ``reference``: N other training clips, the same way (real against real: the scale of sampling noise);
* ``generated``: N samples of the GPT (with EOS: it chooses how many trajectories, at most ``max_tokens``),
  the uniforms of sample i derived from (seed, i) as in ``tokgen sample``;
* ``random``: N clips of uniformly random codes, with trajectory counts drawn from the real ones (what a
  generator that learned nothing about the codes would give: the metric's ceiling).

Per trajectory, from the decoder's compositing weights (the softmax over tokens of the alpha logits, i.e. the
soft mask each trajectory gets in the decoded clip): ``area`` (mask mass per frame / H W, mean over frames),
``cy``, ``cx`` (mask centroid, mean over frames), ``speed`` (mean centroid displacement per frame) and ``r``,
``g``, ``b`` (mean decoded colour under the mask, in [0, 1]). The distance of a set to ``real``:

* ``traj_w1``: per statistic, the 1-D Wasserstein-1 distance between the two sets' trajectory distributions
  divided by the real standard deviation (unit-free, so every statistic weighs the same), averaged over the 7;
* ``count_tv``: total variation distance between the histograms of trajectories per clip.

Realism is read against the reference: a generator is as realistic as the data by these statistics when its
distances are close to ``reference``'s and far below ``random``'s. The last line printed is one JSON object.
"""
from __future__ import annotations

import argparse
import os
import sys

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import emit, log  # noqa: E402

STATS = ("area", "cy", "cx", "speed", "r", "g", "b")


@torch.no_grad()
def trajectory_stats(tokenizer, z_q: torch.Tensor, token_mask: torch.Tensor) -> np.ndarray:
    """Decode tokens (B, K, d) with their mask (B, K) -> (number of real tokens, len(STATS)) statistics."""
    clip, alpha = tokenizer.decode(z_q, token_mask)  # (B, T, C, H, W), (B, K, T, H, W)
    weights = alpha.softmax(dim=1)  # soft mask of every trajectory; padding tokens get 0
    B, K, T, H, W = weights.shape
    mass = weights.sum((-2, -1)).clamp_min(1e-6)  # (B, K, T)
    ys = (torch.arange(H, dtype=torch.float32) + 0.5) / H
    xs = (torch.arange(W, dtype=torch.float32) + 0.5) / W
    cy = (weights.sum(-1) * ys).sum(-1) / mass  # (B, K, T)
    cx = (weights.sum(-2) * xs).sum(-1) / mass
    speed = torch.stack([cy, cx], -1).diff(dim=2).norm(dim=-1).mean(-1) if T > 1 else torch.zeros(B, K)
    rgb = (clip.clamp(-1, 1) + 1) / 2  # (B, T, C, H, W) in [0, 1]
    colour = torch.einsum("bkthw,btchw->bkc", weights, rgb) / mass.sum(-1)[..., None]  # (B, K, C)
    if colour.shape[-1] == 1:
        colour = colour.expand(-1, -1, 3)
    stats = torch.stack([mass.mean(-1) / (H * W), cy.mean(-1), cx.mean(-1), speed, *colour.unbind(-1)], -1)
    return stats[token_mask].numpy()


def wasserstein_1d(a: np.ndarray, b: np.ndarray, points: int = 1000) -> float:
    """W1 between two empirical 1-D distributions: the mean gap of their quantile functions on a grid."""
    u = (np.arange(points) + 0.5) / points
    return float(np.abs(np.quantile(a, u) - np.quantile(b, u)).mean())


def distances(stats: np.ndarray, counts: np.ndarray, real_stats: np.ndarray, real_counts: np.ndarray,
              max_count: int) -> dict:
    scale = real_stats.std(0).clip(min=1e-6)
    per_stat = {name: float(wasserstein_1d(stats[:, i], real_stats[:, i]) / scale[i]) for i, name in enumerate(STATS)}
    hist = np.bincount(counts, minlength=max_count + 1) / len(counts)
    real_hist = np.bincount(real_counts, minlength=max_count + 1) / len(real_counts)
    return {"traj_w1": float(np.mean(list(per_stat.values()))), "count_tv": float(0.5 * np.abs(hist - real_hist).sum()),
            "per_stat_w1": per_stat, "mean_count": float(counts.mean()),
            "count_histogram": hist.round(4).tolist(), "stat_means": dict(zip(STATS, stats.mean(0).round(4).tolist()))}


def main(argv=None) -> dict:
    from tokgen.data.video import VideoDataModule
    from tokgen.generator import GPT, check_generator_tokenizer, generate, sample_uniforms
    from tokgen.video import VideoTokenizer

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--tokenizer", required=True, help="video tokenizer checkpoint (discrete quantizer)")
    p.add_argument("--generator", required=True, help="trajectory GPT checkpoint trained on its codes (use_eos)")
    p.add_argument("--num", type=int, default=128, help="clips per set")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--json", default=None, help="also write the JSON here")
    args = p.parse_args(argv)
    if args.num < 2 or args.batch_size < 1:
        raise SystemExit(f"--num ({args.num}) must be >= 2 and --batch-size ({args.batch_size}) >= 1")
    torch.set_num_threads(args.threads)
    tokenizer = VideoTokenizer.from_checkpoint(args.tokenizer)
    model = GPT.from_checkpoint(args.generator)
    check_generator_tokenizer(model, tokenizer, args.tokenizer, args.generator)
    c, q = tokenizer.config, tokenizer.quantizer
    K, G = tokenizer.num_tokens, q.codes_per_token
    if not model.config.use_eos:
        raise SystemExit(f"generator {args.generator} has no end-of-sequence token (use_eos): it cannot choose the "
                         f"number of trajectories")

    # real and reference: 2N training clips, encoded and decoded by the tokenizer
    dm = VideoDataModule(dataset="moving_shapes", num_frames=c.num_frames, image_size=c.image_size,
                         train_size=2 * args.num, val_size=1, trajectories=True,
                         extraction=tokenizer.extraction_settings())
    dm.setup()
    real = {"stats": [], "counts": []}
    for start in range(0, 2 * args.num, args.batch_size):
        items = [dm.train_set[i] for i in range(start, min(2 * args.num, start + args.batch_size))]
        with torch.no_grad():
            z_q, _, mask, _ = tokenizer.encode(torch.stack([it["video"] for it in items]),
                                               torch.stack([it["traj_ids"] for it in items]))
        real["stats"].append(trajectory_stats(tokenizer, z_q, mask))
        real["counts"].append(mask.sum(1).numpy())
    counts = np.concatenate(real["counts"])
    per_clip = np.split(np.concatenate(real["stats"]), np.cumsum(counts)[:-1])
    sets = {"real": (np.concatenate(per_clip[: args.num]), counts[: args.num]),
            "reference": (np.concatenate(per_clip[args.num:]), counts[args.num:])}
    log(f"real clips: {counts[: args.num].mean():.2f} trajectories per clip")

    # generated: the GPT chooses the count (EOS only between whole trajectories of G codes)
    gen_stats, gen_counts, rand_stats, rand_counts = [], [], [], []
    rng = torch.Generator().manual_seed(args.seed)
    for start in range(0, args.num, args.batch_size):
        idx = list(range(start, min(args.num, start + args.batch_size)))
        u = sample_uniforms(args.seed, idx, K * G * model.config.draws_per_token)
        codes, lengths = generate(model, None, K * G, batch_size=len(idx), temperature=args.temperature,
                                  stop_at_eos=True, eos_every=G, uniforms=u)
        n = (lengths // G).clamp(min=1)
        mask = torch.arange(K)[None] < n[:, None]
        codes = codes.view(len(idx), K, G) if G > 1 else codes
        z_q = q.codes_to_latents(codes) * mask[..., None]
        gen_stats.append(trajectory_stats(tokenizer, z_q, mask))
        gen_counts.append(n.numpy())
        # random codes, with the counts of real clips
        n = torch.from_numpy(counts[torch.randint(0, args.num, (len(idx),), generator=rng).numpy()])
        mask = torch.arange(K)[None] < n[:, None]
        codes = torch.randint(0, q.codebook_size, (len(idx), K, G) if G > 1 else (len(idx), K), generator=rng)
        rand_stats.append(trajectory_stats(tokenizer, q.codes_to_latents(codes) * mask[..., None], mask))
        rand_counts.append(n.numpy())
    sets["generated"] = (np.concatenate(gen_stats), np.concatenate(gen_counts))
    sets["random"] = (np.concatenate(rand_stats), np.concatenate(rand_counts))

    real_stats, real_counts = sets["real"]
    result = {"benchmark": "video_realism", "tokenizer": args.tokenizer, "generator": args.generator,
              "num": args.num, "seed": args.seed, "temperature": args.temperature, "codes_per_trajectory": G,
              "stats": list(STATS)}
    for name in ("reference", "generated", "random"):
        result[name] = distances(*sets[name], real_stats, real_counts, K)
        log(f"{name}: traj_w1 {result[name]['traj_w1']:.3f}, count_tv {result[name]['count_tv']:.3f}, "
            f"{result[name]['mean_count']:.2f} trajectories per clip")
    result["real"] = {"mean_count": float(real_counts.mean()),
                      "count_histogram": (np.bincount(real_counts, minlength=K + 1) / len(real_counts)).round(4).tolist(),
                      "stat_means": dict(zip(STATS, real_stats.mean(0).round(4).tolist()))}
    return emit(result, args.json)


if __name__ == "__main__":
    main()
