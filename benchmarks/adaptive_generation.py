"""Cost of adaptive-length generation: does the wall time follow the lengths the generator chooses?

    python benchmarks/adaptive_generation.py --generator runs/gen_fmnist_adaptive/checkpoints/last.ckpt
    python benchmarks/adaptive_generation.py --random        # random-weight stand-in (see below), no checkpoint

One run, one machine, the same batch size and the same per-sample uniforms for every setting. Four ways to
generate the same ``--num`` samples (class labels cycling over the classes):

- adaptive:          ``stop_at_eos`` through ``--batch-size`` slots: each sample ends at its own EOS and the next
                     waiting sample takes its slot (rows leave the batch only when nothing waits).
- fixed_at_mean:     a fixed budget k = the adaptive run's mean length (rounded), EOS never sampled.
- fixed_at_batch_max: every batch at a fixed budget equal to its longest adaptive row: what adaptive generation
                     would cost if finished rows stayed in the batch until its longest row ended.
- fixed_at_K:        the full budget K (the generator's block size).

Each setting is timed ``--repeats`` times (after one warm-up batch) and the median is reported. The claim
"a batch's cost follows the sum of its lengths" holds when adaptive / fixed_at_mean is near 1 and
adaptive / fixed_at_batch_max is clearly below 1.

``--random`` builds a random-weight GPT (6 layers, width 256, 64000 codes factorized as [125, 512], use_eos) whose EOS logit is raised
so that lengths spread over 1..K; it exercises the machinery without a trained model and says so in the JSON.
The last line printed is one JSON object.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import ROOT, emit, log, machine_info  # noqa: E402

sys.path.insert(0, ROOT)
from tokgen.generator import GPT, GPTConfig, generate, sample_uniforms  # noqa: E402


def random_generator(block_size: int, eos_bias: float) -> GPT:
    """A random-weight, class-conditional GPT with EOS whose EOS logit is ``eos_bias`` above the others' scale
    (a stand-in: its lengths spread over 1..K, its codes mean nothing)."""
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=64000, block_size=block_size, num_classes=10, vocab_factors=[125, 512],
                          dim=256, n_layer=6, n_head=8, n_kv_head=2, use_eos=True)).eval()
    with torch.no_grad():
        model.head.weight[-1].zero_()
        model.head.weight[-1] += eos_bias / model.config.dim
    return model


def run_setting(model: GPT, labels: torch.Tensor, uniforms: torch.Tensor, batch_size: int, budget, eos: bool,
                cfg: float, temperature: float) -> tuple[float, torch.Tensor]:
    """Generate every row: with ``eos`` all rows stream through ``batch_size`` slots (as ``tokgen sample --eos``);
    otherwise in batches, ``budget`` an int or a per-batch list. Returns (seconds, lengths)."""
    if eos:
        start = time.perf_counter()
        _, n = generate(model, labels, budget, stop_at_eos=True, slots=batch_size, cfg_scale=cfg,
                        temperature=temperature, uniforms=uniforms)
        return time.perf_counter() - start, n
    lengths = []
    start = time.perf_counter()
    for b, i in enumerate(range(0, len(labels), batch_size)):
        k = budget[b] if isinstance(budget, list) else budget
        _, n = generate(model, labels[i : i + batch_size], k, stop_at_eos=eos, cfg_scale=cfg,
                        temperature=temperature, uniforms=uniforms[i : i + batch_size])
        lengths.append(n)
    return time.perf_counter() - start, torch.cat(lengths)


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--generator", help="generator checkpoint trained with use_eos (tokgen fit, GeneratorModule)")
    src.add_argument("--random", action="store_true", help="random-weight stand-in with a raised EOS logit")
    p.add_argument("--num", type=int, default=1000, help="samples per setting (default 1000)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--cfg", type=float, default=1.0)
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--block-size", type=int, default=32, help="--random only: K")
    p.add_argument("--eos-bias", type=float, default=40.0, help="--random only: how likely EOS is")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", default=None, help="also write the JSON here")
    args = p.parse_args(argv)
    for name in ("num", "batch_size", "repeats"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be a positive int, got {getattr(args, name)}")
    if args.threads:
        torch.set_num_threads(args.threads)

    model = random_generator(args.block_size, args.eos_bias) if args.random else GPT.from_checkpoint(args.generator)
    c = model.config
    if not c.use_eos:
        p.error(f"generator {args.generator} was trained without use_eos: it cannot choose its lengths")
    K = c.block_size
    num_classes = max(c.num_classes, 1)
    labels = torch.arange(args.num) % num_classes if c.num_classes else None
    if labels is None:
        p.error("this benchmark needs a class-conditional generator")
    uniforms = sample_uniforms(args.seed, range(args.num), K * c.draws_per_token)

    def timed_setting(budget, eos):
        run_setting(model, labels[: args.batch_size], uniforms[: args.batch_size], args.batch_size,
                    budget if isinstance(budget, int) else budget[0], eos, args.cfg, args.temperature)  # warm-up
        times, lengths = [], None
        for _ in range(args.repeats):
            t, lengths = run_setting(model, labels, uniforms, args.batch_size, budget, eos, args.cfg, args.temperature)
            times.append(t)
        return {"seconds": statistics.median(times), "times_s": times}, lengths

    log(f"adaptive: {args.num} samples, batch {args.batch_size}, K={K}")
    adaptive, lengths = timed_setting(K, True)
    mean = lengths.float().mean().item()
    k_mean = max(1, round(mean))
    batch_max = [int(n.max()) for n in lengths.split(args.batch_size)]
    batch_max = [max(1, k) for k in batch_max]
    settings = {"adaptive": adaptive}
    for name, budget in (("fixed_at_mean", k_mean), ("fixed_at_batch_max", batch_max), ("fixed_at_K", K)):
        log(f"{name}: k={budget if isinstance(budget, int) else 'per batch max'}")
        settings[name], _ = timed_setting(budget, False)
    tokens = {"adaptive": int(lengths.sum()), "fixed_at_mean": k_mean * args.num,
              "fixed_at_batch_max": sum(k * len(n) for k, n in zip(batch_max, lengths.split(args.batch_size))),
              "fixed_at_K": K * args.num}
    for name, s in settings.items():
        s["tokens"] = tokens[name]
        s["tokens_per_s"] = tokens[name] / s["seconds"]
    a = settings["adaptive"]["seconds"]
    result = {
        "benchmark": "adaptive_generation",
        "generator": "random-weight stand-in (EOS logit raised)" if args.random else args.generator,
        "num": args.num, "batch_size": args.batch_size, "K": K, "cfg": args.cfg, "temperature": args.temperature,
        "repeats": args.repeats,
        "lengths": {"mean": mean, "min": int(lengths.min()), "max": int(lengths.max()),
                    "histogram": torch.bincount(lengths, minlength=K + 1).tolist()},
        "k_mean": k_mean,
        "settings": settings,
        "ratios": {f"adaptive/{name}": a / settings[name]["seconds"] for name in settings if name != "adaptive"},
        "machine": machine_info(),
    }
    return emit(result, args.json)


if __name__ == "__main__":
    main()
