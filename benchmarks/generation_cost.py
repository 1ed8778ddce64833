"""Generation cost vs token budget k for the `ar-small-v1` workload (shared/BENCHMARK_WORKLOADS.md).

    python benchmarks/generation_cost.py                 # k = 8 .. 256, KV cache and full re-computation
    python benchmarks/generation_cost.py --nocache-max-k 256 --json out.json
    python benchmarks/generation_cost.py --no-train --no-steps --gqa 4,2,1   # grouped-query variants

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
import os
import statistics
import sys
import time

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import ROOT, emit, log, machine_info, timed  # noqa: E402

sys.path.insert(0, ROOT)
from tokgen.generator import GPT, GPTConfig, generate, sample_uniforms  # noqa: E402

AR_SMALL_V1 = dict(vocab_size=4096, block_size=256, num_classes=10, dim=256, n_layer=8, n_head=8, hidden_dim=768,
                   norm_eps=1e-5, tie_weights=False)


def generation_flops(model: GPT, k: int, rows: int, cache: bool) -> int:
    """Model FLOPs of one generate call of k tokens for ``rows`` sequences (2B with CFG)."""
    if cache:  # condition, then k - 1 single-position steps at positions 1..k-1
        per_row = sum(model.flops_forward(1, t + 1) for t in range(k))
    else:  # step t re-runs the condition + t codes, output head on the last position only
        per_row = sum(model.flops_forward(t + 1, t + 1, logits_rows=1) for t in range(k))
    return rows * per_row


def bench_generation(model, labels, ks, cfg, cache, warmup, repeats, seed=0, cache_dtype=None) -> dict:
    out = {}
    rows = labels.shape[0] * (2 if cfg != 1.0 else 1)
    for k in ks:
        u = sample_uniforms(seed, range(labels.shape[0]), k)
        times = timed(lambda: generate(model, labels, k, cfg_scale=cfg, uniforms=u, use_cache=cache,
                                       cache_dtype=cache_dtype), warmup, repeats)
        med = statistics.median(times)
        flops = generation_flops(model, k, rows, cache)
        out[k] = {"ms_per_batch": 1e3 * med, "ms_per_token": 1e3 * med / k, "times_s": times,
                  "gflop": flops / 1e9, "gflop_per_s": flops / med / 1e9}
        log(f"  {'cache' if cache else 'nocache'} cfg={cfg} k={k}: {1e3 * med:.1f} ms/batch, "
            f"{1e3 * med / k:.2f} ms/token, {flops / med / 1e9:.1f} GFLOP/s")
    return out


STEP_POSITIONS = (1, 32, 64, 128, 192, 255)


@torch.no_grad()
def decode_step_fit(model: GPT, rows: int, positions=STEP_POSITIONS, repeats: int = 15, step=None) -> dict:
    """Time one cached decode step (``forward_cached`` of 1 position) at several positions t, fit a + b t.

    Positions are visited round-robin so that machine noise spreads evenly; medians per position. Also the
    bytes each step must read: the weights (constant) and the filled KV cache (grows by ``kv_bytes_per_position``),
    so ``kv_bytes_per_position / b`` is the bandwidth the attention reads run at, and the fit predicts the
    t(256)/t(32) ratio that per-step costs alone give (no sampling / set-up). ``step``: the decode step to time
    (default ``model.forward_cached``; e.g. a torch.compile'd one).
    """
    c = model.config
    step = step or model.forward_cached
    caches = model.new_cache(rows, c.max_seq_len)
    gen = torch.Generator().manual_seed(0)
    model.forward_cached(torch.randn(rows, c.max_seq_len, c.dim, generator=gen), 0, caches)  # fill the cache
    x = torch.randn(rows, 1, c.dim, generator=gen)
    times = {p: [] for p in positions}
    start = time.perf_counter()
    for p in positions:  # warm-up (and compilation, for a compiled step)
        step(x, p, caches)
    warmup_s = time.perf_counter() - start
    for _ in range(repeats):
        for p in positions:
            start = time.perf_counter()
            step(x, p, caches)
            times[p].append(time.perf_counter() - start)
    med = {p: 1e3 * statistics.median(v) for p, v in times.items()}
    n = len(positions)
    mt, my = sum(positions) / n, sum(med.values()) / n
    b = sum((p - mt) * (med[p] - my) for p in positions) / sum((p - mt) ** 2 for p in positions)
    a = my - b * mt
    itemsize = model.head.weight.element_size()
    kv_per_pos = c.n_layer * 2 * rows * c.dim * itemsize
    weight_bytes = sum(p.numel() for n_, p in model.named_parameters() if "embedding" not in n_) * itemsize
    steps = lambda k: sum(a + b * t for t in range(k))  # noqa: E731
    return {
        "rows": rows, "warmup_s": warmup_s, "ms_per_step": {str(p): v for p, v in med.items()}, "times_s": {str(p): v for p, v in times.items()},
        "a_ms": a, "b_ms": b, "attention_share_at_t256": b * 256 / (a + b * 256),
        "weight_bytes_per_step": weight_bytes, "kv_bytes_per_position": kv_per_pos,
        "kv_bytes_at_t256": kv_per_pos * 256, "kv_read_gb_per_s": kv_per_pos / (b * 1e-3) / 1e9 if b > 0 else None,
        "weight_read_gb_per_s_if_a_were_only_weights": weight_bytes / (a * 1e-3) / 1e9,
        "predicted_t256_over_t32": steps(256) / steps(32),
        "max_b_over_a_for_ratio_8_5": 16 / 28416,  # (256 a + 32768 b) <= 8.5 (32 a + 512 b)
    }


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
    p.add_argument("--no-steps", action="store_true", help="skip the per-step time vs position fit")
    p.add_argument("--step-repeats", type=int, default=15)
    p.add_argument("--bf16-cache", action="store_true", help="also time the opt-in bf16 KV cache (approximate)")
    p.add_argument("--gqa", default=None, help="also time grouped-query variants with these n_kv_head values, "
                   "e.g. 2,1 (exact attention; fewer cached bytes per position)")
    p.add_argument("--compile", action="store_true", help="also time a torch.compile'd decode step (dynamic positions)")
    p.add_argument("--compile-only", action="store_true", help="only the compiled vs eager decode step")
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
        "batch": args.batch, **machine_info(), "warmup": args.warmup, "repeats": args.repeats,
    }
    ks_nocache = [k for k in ks if k <= args.nocache_max_k]
    for cfg, name in (() if args.compile_only else ((1.0, "nocfg"), (args.cfg, f"cfg{args.cfg:g}"))):
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
        if not args.no_steps:
            rows = labels.shape[0] * (2 if cfg != 1.0 else 1)
            result[name]["step_fit"] = decode_step_fit(model, rows, STEP_POSITIONS, args.step_repeats)
    if args.compile or args.compile_only:  # a torch.compile'd decode step (inductor, dynamic positions) against eager, same positions
        result["compiled_step"] = {}
        for cfg, name in ((1.0, "nocfg"), (args.cfg, f"cfg{args.cfg:g}")):
            rows = labels.shape[0] * (2 if cfg != 1.0 else 1)
            try:
                fit = decode_step_fit(model, rows, STEP_POSITIONS, args.step_repeats,
                                      step=torch.compile(model.forward_cached, dynamic=True))
                eager = result.get(name, {}).get("step_fit") or decode_step_fit(model, rows, STEP_POSITIONS, args.step_repeats)
                fit["speedup_vs_eager"] = {p: eager["ms_per_step"][p] / v for p, v in fit["ms_per_step"].items()}
            except Exception as err:  # noqa: BLE001 - a compiler failure is a result, not a crash
                fit = {"error": f"{type(err).__name__}: {err}"[:500]}
            result["compiled_step"][name] = fit
            log(f"compiled decode step {name}: {fit.get('speedup_vs_eager', fit.get('error'))}")
    def short_ratios(variant: GPT, cache_dtype=None) -> dict:
        """t(256)/t(32) of a variant (cache generation only), with and without CFG, against the fp32 MHA run."""
        out = {}
        for cfg, name in ((1.0, "nocfg"), (args.cfg, f"cfg{args.cfg:g}")):
            r = bench_generation(variant, labels, [32, 256], cfg, True, args.warmup, args.repeats, cache_dtype=cache_dtype)
            base = result.get(name, {}).get("cache", {}).get(256)
            out[name] = {"cache": r, "cache_t256_over_t32": ratio(r, 256, 32),
                         "speedup_at_k256_vs_fp32": base and base["ms_per_batch"] / r[256]["ms_per_batch"]}
            log(f"  -> {name}: t(256)/t(32) = {out[name]['cache_t256_over_t32']:.2f}")
        return out

    if args.bf16_cache and not args.compile_only:  # opt-in reduced-precision cache (logits differ ~1e-2): what halving the KV bytes buys
        result["bf16_cache"] = short_ratios(model, torch.bfloat16)
    if args.gqa and not args.compile_only:  # grouped-query variants: same query heads, fewer key/value heads (exact)
        result["gqa"] = {}
        for kv in (int(h) for h in args.gqa.split(",")):
            torch.manual_seed(0)
            variant = GPT(GPTConfig(**{**AR_SMALL_V1, "n_kv_head": kv})).eval()
            log(f"grouped-query variant n_kv_head={kv}: {variant.num_parameters():,} parameters")
            result["gqa"][f"kv{kv}"] = {"n_kv_head": kv, "parameters": variant.num_parameters(),
                                        "kv_cache_bytes_per_position": 2 * 4 * args.batch * kv * variant.config.head_dim
                                        * variant.config.n_layer, **short_ratios(variant)}
    if not args.no_train and not args.compile_only:
        result["training"] = bench_training(AR_SMALL_V1, 32, 128, 3, 10)
        log(f"training: {result['training']['tokens_per_s']:.0f} tokens/s")
    return emit(result, args.json)


if __name__ == "__main__":
    main()
