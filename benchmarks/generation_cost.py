"""Generation cost vs token budget k for the `ar-small-v1` workload (shared/BENCHMARK_WORKLOADS.md).

    python benchmarks/generation_cost.py                 # k = 8 .. 256, KV cache and full re-computation
    python benchmarks/generation_cost.py --nocache-max-k 256 --json out.json

Model: vocabulary 4096, 10 classes + null, dim 256, 8 layers x 8 heads, SwiGLU 768, RMSNorm, untied head
(8.92 M parameters), fp32, random weights (seed 0). Batch 8, temperature 1, no top-k/top-p, multinomial
(inverse-CDF) sampling; without CFG and with CFG 2.0 (conditional and null rows batched: 16 rows).
The whole ``generate`` call is timed (cache set-up included): W warm-up calls, then the median of N.

- cache: static KV cache, each step attends over the filled part of the cache only -> linear in k.
- nocache: the whole prefix is recomputed at every step (a full forward over t positions) -> ~quadratic.

FLOPs are counted analytically (``GPT.flops_forward``: projections, attention products over the visible
keys, output head on the rows that are sampled), per generate call. Training throughput (batch 32 x 128
targets, AdamW) is measured too. The last line printed is one JSON object.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time

import torch
import torch.nn.functional as F

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from tokgen.generator import GPT, GPTConfig, generate, sample_uniforms  # noqa: E402

AR_SMALL_V1 = dict(vocab_size=4096, block_size=256, num_classes=10, dim=256, n_layer=8, n_head=8, hidden_dim=768,
                   norm_eps=1e-5, tie_weights=False)


def log(*args):
    print(*args, file=sys.stderr, flush=True)


def timed(fn, warmup: int, repeats: int) -> list[float]:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return times


def generation_flops(model: GPT, k: int, rows: int, cache: bool) -> int:
    """Model FLOPs of one generate call of k tokens for ``rows`` sequences (2B with CFG)."""
    if cache:  # condition, then k - 1 single-position steps at positions 1..k-1
        per_row = sum(model.flops_forward(1, t + 1) for t in range(k))
    else:  # step t re-runs the condition + t codes, output head on the last position only
        per_row = sum(model.flops_forward(t + 1, t + 1, logits_rows=1) for t in range(k))
    return rows * per_row


def bench_generation(model, labels, ks, cfg, cache, warmup, repeats, seed=0) -> dict:
    out = {}
    rows = labels.shape[0] * (2 if cfg != 1.0 else 1)
    for k in ks:
        u = sample_uniforms(seed, range(labels.shape[0]), k)
        times = timed(lambda: generate(model, labels, k, cfg_scale=cfg, uniforms=u, use_cache=cache), warmup, repeats)
        med = statistics.median(times)
        flops = generation_flops(model, k, rows, cache)
        out[k] = {"ms_per_batch": 1e3 * med, "ms_per_token": 1e3 * med / k, "times_s": times,
                  "gflop": flops / 1e9, "gflop_per_s": flops / med / 1e9}
        log(f"  {'cache' if cache else 'nocache'} cfg={cfg} k={k}: {1e3 * med:.1f} ms/batch, "
            f"{1e3 * med / k:.2f} ms/token, {flops / med / 1e9:.1f} GFLOP/s")
    return out


def bench_training(model_config: dict, batch: int, targets: int, warmup: int, repeats: int) -> dict:
    torch.manual_seed(0)
    model = GPT(GPTConfig(**model_config, class_dropout=0.0)).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, betas=(0.9, 0.95), weight_decay=0.05)
    codes = torch.randint(0, model_config["vocab_size"], (batch, targets))
    labels = torch.randint(0, model_config["num_classes"], (batch,))

    def step():
        opt.zero_grad(set_to_none=True)
        logits = model(codes[:, :-1], labels)  # input = class + first targets-1 codes
        loss = F.cross_entropy(logits.flatten(0, 1), codes.flatten())
        loss.backward()
        opt.step()
        loss.item()

    times = timed(step, warmup, repeats)
    med = statistics.median(times)
    flops = 3 * batch * model.flops_forward(targets, targets)
    return {"batch": batch, "targets": targets, "ms_per_step": 1e3 * med, "tokens_per_s": batch * targets / med,
            "gflop_per_s": flops / med / 1e9, "times_s": times}


def ratio(results: dict, hi: int, lo: int) -> float | None:
    if hi in results and lo in results:
        return results[hi]["ms_per_batch"] / results[lo]["ms_per_batch"]
    return None


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--ks", default="8,16,32,64,128,256", help="token budgets (comma separated)")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--cfg", type=float, default=2.0, help="guided run's scale (an unguided run is always done)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--nocache-max-k", type=int, default=128, help="largest k for full re-computation (slow)")
    p.add_argument("--nocache-repeats", type=int, default=1)
    p.add_argument("--no-train", action="store_true", help="skip the training-throughput measurement")
    p.add_argument("--json", default=None, help="also write the JSON to this file")
    args = p.parse_args(argv)

    torch.set_num_threads(args.threads)
    ks = [int(k) for k in args.ks.split(",")]
    torch.manual_seed(0)
    model = GPT(GPTConfig(**AR_SMALL_V1)).eval()
    labels = torch.randint(0, 10, (args.batch,), generator=torch.Generator().manual_seed(0))
    log(f"ar-small-v1: {model.num_parameters():,} parameters, batch {args.batch}, threads {torch.get_num_threads()}")

    result = {
        "benchmark": "generation_cost", "workload": "ar-small-v1", "parameters": model.num_parameters(),
        "batch": args.batch, "threads": torch.get_num_threads(), "torch": torch.__version__,
        "machine": f"{platform.machine()} {platform.processor() or ''} {os.cpu_count()} cpus".strip(),
        "date": time.strftime("%Y-%m-%d %H:%M:%S"), "warmup": args.warmup, "repeats": args.repeats,
    }
    ks_nocache = [k for k in ks if k <= args.nocache_max_k]
    for cfg, name in ((1.0, "nocfg"), (args.cfg, f"cfg{args.cfg:g}")):
        cache = bench_generation(model, labels, ks, cfg, True, args.warmup, args.repeats)
        timed(lambda: generate(model, labels, ks[0], cfg_scale=cfg, use_cache=False), 1, 0)  # warm the path
        nocache = bench_generation(model, labels, ks_nocache, cfg, False, 0, args.nocache_repeats)
        hi_nc, lo_nc = max(ks_nocache), max(ks_nocache) // 8
        result[name] = {
            "cfg_scale": cfg, "cache": cache, "nocache": nocache,
            "cache_t256_over_t32": ratio(cache, 256, 32),
            f"cache_t{hi_nc}_over_t{lo_nc}": ratio(cache, hi_nc, lo_nc),
            f"nocache_t{hi_nc}_over_t{lo_nc}": ratio(nocache, hi_nc, lo_nc),
            f"nocache_over_cache_at_k{hi_nc}": (nocache[hi_nc]["ms_per_batch"] / cache[hi_nc]["ms_per_batch"]
                                                if hi_nc in nocache and hi_nc in cache else None),
        }
        log(f"{name}: cache t(256)/t(32) = {result[name]['cache_t256_over_t32']}, "
            f"nocache t({hi_nc})/t({lo_nc}) = {result[name][f'nocache_t{hi_nc}_over_t{lo_nc}']}")
    if not args.no_train:
        result["training"] = bench_training(AR_SMALL_V1, 32, 128, 3, 10)
        log(f"training: {result['training']['tokens_per_s']:.0f} tokens/s")
    line = json.dumps(result)
    if args.json:
        with open(args.json, "w") as f:
            f.write(line + "\n")
    print(line)
    return result


if __name__ == "__main__":
    main()
