"""Run every benchmark script, collect their JSON, check the targets, write the results and a Markdown table.

    python benchmarks/run_all.py                      # < 10 minutes on 2 cores
    python benchmarks/run_all.py --only generation_cost
    python benchmarks/run_all.py --with-slow          # also re-run the slow ones (q-fmnist-v1: ~20 minutes more)

Every ``benchmarks/*.py`` that is not a helper (``_*.py``) or this file is run as its own process with the
settings in ``SETTINGS`` (new scripts run with their defaults; one that exits with a usage error is reported
as needing arguments); the last line it prints is its JSON. Scripts in ``FROM_FILE`` (the ~20-minute
reconstruction-quality training, benchmarks that need a trained checkpoint) are not re-run by default: their
committed ``benchmarks/<name>.json`` is reported instead, marked as such.

Writes ``benchmarks/results.json`` (date, machine line, every script's JSON and wall time, the targets with
pass/fail) and ``benchmarks/results.md`` (the tables for the README).
"""
from __future__ import annotations

import argparse
import glob
import json
import os
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import log, machine_info  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))

# Per-script command-line settings chosen so that the whole run stays under 10 minutes on 2 cores.
# A "name:label" entry is an extra run of script ``name`` (its JSON is filed under the label): the torch.compile
# comparisons run apart, so that a slow or failing compiler cannot cost the eager figures.
SETTINGS: dict[str, list[str]] = {
    "tokenizer_throughput": [],
    "generation_cost": ["--ks", "16,32,64,128,256", "--nocache-max-k", "128", "--bf16-cache", "--gqa", "2,1"],
    "generation_cost:generation_compiled": ["--compile-only"],
    "tokenizer_throughput:tokenizer_compiled": ["--compile-only", "--quick"],
    "trajectory_extraction": ["--clips", "10"],
}
TIMEOUT_S = {"tokenizer_throughput": 240, "generation_cost": 260, "generation_compiled": 120, "tokenizer_compiled": 150}
DEFAULT_TIMEOUT_S = 180
BUDGET_S = 570  # the whole run: later scripts get at most what is left of it
# Scripts that are not re-run by default (too slow, or they need a trained checkpoint): their committed JSON
# ``benchmarks/<name>.json`` is reported instead, when present. ``--with-slow`` runs them (with SETTINGS).
FROM_FILE = {
    "quality_fmnist": "trains q-fmnist-v1 for ~20 minutes",
    "halting": "needs a trained halting checkpoint (--ckpt)",
    "video_equal_compute": "trains the space-time patch baselines at the trajectory recipe's FLOPs (~25 minutes)",
}
FROM_FILE_JSON = {"halting": "halting_shapes.json"}  # committed result read for a name, when not benchmarks/<name>.json


def discover() -> list[tuple[str, str]]:
    """(label, script) of every run: the scripts here (helpers and run_all excluded) plus the extra runs."""
    names = sorted(os.path.basename(p)[:-3] for p in glob.glob(os.path.join(HERE, "*.py")))
    names = [n for n in names if not n.startswith("_") and n != "run_all"]
    first = [n for n in ("tokenizer_throughput", "generation_cost") if n in names]
    extra = [(key.split(":")[1], key.split(":")[0]) for key in SETTINGS if ":" in key and key.split(":")[0] in names]
    return [(n, n) for n in first] + [(n, n) for n in names if n not in first] + extra


def last_json(text: str):
    """The JSON object of a benchmark's output: the whole text if it is one, else its last JSON line."""
    try:
        data = json.loads(text)
        if isinstance(data, dict):
            return data
    except json.JSONDecodeError:
        pass
    for line in reversed(text.strip().splitlines()):
        line = line.strip()
        if line.startswith("{"):
            try:
                return json.loads(line)
            except json.JSONDecodeError:
                return None
    return None


def run_script(label: str, script: str, threads: int, time_left: float) -> dict:
    key = script if label == script else f"{script}:{label}"
    cmd = [sys.executable, os.path.join(HERE, f"{script}.py"), *SETTINGS.get(key, [])]
    if "--threads" not in cmd and key in SETTINGS:
        cmd += ["--threads", str(threads)]
    timeout = max(10, min(TIMEOUT_S.get(label, DEFAULT_TIMEOUT_S), time_left))
    name = label
    log(f"== {name}: {' '.join(cmd[1:])} (timeout {timeout} s)")
    start = time.perf_counter()
    try:
        proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=None, text=True, timeout=timeout, cwd=os.path.dirname(HERE))
    except subprocess.TimeoutExpired:
        return {"status": "timeout", "wall_s": time.perf_counter() - start, "command": cmd[1:]}
    wall = time.perf_counter() - start
    data = last_json(proc.stdout)
    status = "ok" if proc.returncode == 0 and data is not None else f"failed (exit {proc.returncode})"
    if proc.returncode == 2 and data is None:  # argparse usage error: it needs inputs run_all cannot give
        status = "skipped (needs arguments; see the script's --help)"
    log(f"== {name}: {status} in {wall:.0f} s")
    return {"status": status, "wall_s": wall, "command": cmd[1:], "result": data}


def get(d, *keys):
    for k in keys:
        if not isinstance(d, dict) or k not in d:
            return None
        d = d[k]
    return d


# ---------------------------------------------------------------------------------------------------- targets
def targets(runs: dict, total_s: float) -> list[dict]:
    """The targets of issues 8 and 4, each with the measured value and pass/fail (None when not measured)."""
    tok = get(runs, "tokenizer_throughput", "result")
    gen = get(runs, "generation_cost", "result")
    rows = []

    def add(name, value, limit, op, unit="", reference=None, issue="8", digits=2):
        ok = None if value is None else (value >= limit if op == ">=" else value <= limit)
        rows.append({"target": name, "issue": issue, "measured": value, "limit": f"{op} {limit:g}{unit}",
                     "unit": unit, "reference": reference, "pass": ok, "digits": digits})

    mfu = get(tok, "training", "mfu")
    add("tok-small-v1 training MFU", None if mfu is None else 100 * mfu, 70, ">=", " %",
        "TiTok ~65 %", digits=1)
    add("ar-small-v1 decode ms/token, k=256, no CFG", get(gen, "nocfg", "cache", "256", "ms_per_token"), 7, "<=",
        " ms", "LlamaGen ~21 ms")
    for cfg, label, ref in (("nocfg", "no CFG", "LlamaGen ~8.3"), ("cfg2", "CFG 2.0", "LlamaGen ~13.5")):
        r = get(gen, cfg, "cache_t256_over_t32")
        add(f"t(256)/t(32), {label}", r, 8.5, "<=", "", ref)
    add("t(256)/t(32) with KV cache, no CFG (issue 4)", get(gen, "nocfg", "cache_t256_over_t32"), 9.0, "<=", "", None, "4")
    for kv in (2, 1):
        add(f"t(256)/t(32) with KV cache, no CFG, grouped-query n_kv_head={kv} (issue 4)",
            get(gen, "gqa", f"kv{kv}", "nocfg", "cache_t256_over_t32"), 9.0, "<=", "", None, "4")
    add("run_all.py wall time", total_s / 60, 10, "<=", " min", None, digits=1)
    return rows


def fmt(value, digits=2) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def markdown(results: dict) -> str:
    lines = [f"Measured {results['date']} on {results['machine']} ({results['threads']} threads, torch "
             f"{results['torch']}); `python benchmarks/run_all.py` took {results['total_s'] / 60:.1f} min.", "",
             "| Target | Issue | Measured | Target | Reference | Pass |", "|---|---|---|---|---|---|"]
    for t in results["targets"]:
        mark = {True: "yes", False: "**no**", None: "n/a"}[t["pass"]]
        lines.append(f"| {t['target']} | {t['issue']} | {fmt(t['measured'], t['digits'])}{t['unit'] if t['measured'] is not None else ''} "
                     f"| {t['limit']} | {t['reference'] or ''} | {mark} |")
    lines += ["", "| Benchmark | Figure |", "|---|---|"]
    for name, figure in summary_rows(results["benchmarks"]):
        lines.append(f"| {name} | {figure} |")
    return "\n".join(lines) + "\n"


def summary_rows(runs: dict) -> list[tuple[str, str]]:
    rows = []
    tok = get(runs, "tokenizer_throughput", "result")
    if tok:
        peak = get(tok, "matmul_peak", "gflop_per_s")
        tr = tok.get("training", {})
        rows.append(("matmul peak (2048^3 fp32)", f"{fmt(peak, 1)} GFLOP/s"))
        rows.append(("tok-small-v1 training, batch 32", f"{fmt(tr.get('images_per_s'), 1)} images/s, "
                     f"{fmt(tr.get('model_gflop_per_s'), 1)} GFLOP/s, MFU {fmt(100 * tr['mfu'] if 'mfu' in tr else None, 1)} %, "
                     f"peak RSS {fmt(tr.get('peak_rss_mb'), 0)} MB"))
        inf = tok.get("inference", {})
        if inf:
            rows.append(("tok-small-v1 inference, batch 64", ", ".join(
                f"{k.replace('_', ' ')} {fmt(get(inf, k, 'images_per_s'), 0)} images/s" for k in ("round_trip", "encode", "decode"))
                + f", peak RSS {fmt(inf.get('peak_rss_mb'), 0)} MB"))
        for name, r in (tok.get("recipes") or {}).items():
            rows.append((f"recipe {name} training, batch {r['batch']}", f"{fmt(r['images_per_s'], 0)} images/s, MFU {fmt(100 * r['mfu'], 1)} %"))
        comp = tok.get("compile")
        if comp:
            rows.append(("tok-small-v1 torch.compile speed-up", f"training {fmt(comp.get('training_speedup'), 2)}x, "
                         f"inference round trip {fmt(comp.get('inference_round_trip_speedup'), 2)}x"))
        sc = tok.get("scaling")
        if sc:
            for key, label in (("vs_num_tokens", "K"), ("vs_image_size", "image size")):
                rows.append((f"tokenizer step (batch {sc['batch']}) vs {label}",
                             ", ".join(f"{v}: {fmt(r['ms_per_step'], 0)} ms" for v, r in sc[key].items())))
    gen = get(runs, "generation_cost", "result")
    if gen:
        for cfg, label in (("nocfg", "no CFG"), ("cfg2", "CFG 2.0")):
            g = gen.get(cfg)
            if not g:
                continue
            for key, what in (("cache", "KV cache"), ("nocache", "recomputation")):
                rows.append((f"ar-small-v1 generate, {what}, {label} (ms per batch of {gen.get('batch', 8)})",
                             ", ".join(f"k={k}: {fmt(get(r, 'ms_per_batch'), 0)}" for k, r in (g.get(key) or {}).items())))
            fit = g.get("step_fit")
            if fit:
                rows.append((f"decode step time fit a + b t, {label}",
                             f"a = {fmt(fit['a_ms'], 2)} ms, b = {fmt(1e3 * fit['b_ms'], 2)} us/position "
                             f"(attention at t=256: {fmt(100 * fit['b_ms'] * 256 / fit['a_ms'], 0)} % of a)"))
        tr = gen.get("training")
        if tr:
            rows.append(("ar-small-v1 training, batch 32 x 128", f"{fmt(tr['tokens_per_s'], 0)} tokens/s"))
        for key, r in (gen.get("optimisations") or {}).items():
            rows.append((f"decode optimisation: {key}", f"{fmt(r.get('speedup'), 2)}x ({r.get('note', '')})"))
    comp = get(runs, "tokenizer_compiled", "result", "compile")
    if comp:
        rows.append(("tok-small-v1 torch.compile vs eager (same run)", f"training {fmt(comp.get('training_speedup'))}x, "
                     f"inference round trip {fmt(comp.get('inference_round_trip_speedup'))}x"))
    for cfg, label in (("nocfg", "no CFG"), ("cfg2", "CFG 2.0")):
        fit = get(runs, "generation_compiled", "result", "compiled_step", cfg)
        if fit:
            rows.append((f"compiled decode step vs eager, {label}", fmt_speedups(fit)))
        bf = get(gen, "bf16_cache", cfg)
        if bf:
            rows.append((f"opt-in bf16 KV cache (approximate), {label}",
                         f"t(256)/t(32) = {fmt(bf.get('cache_t256_over_t32'))}, {fmt(bf.get('speedup_at_k256_vs_fp32'))}x fp32 at k=256"))
        for name, g in (get(gen, "gqa") or {}).items():
            r = g.get(cfg) or {}
            rows.append((f"grouped-query ar-small-v1, n_kv_head={g['n_kv_head']} of 8, {label}",
                         f"t(256)/t(32) = {fmt(r.get('cache_t256_over_t32'))}, {fmt(r.get('speedup_at_k256_vs_fp32'))}x "
                         f"MHA at k=256, KV cache {g['kv_cache_bytes_per_position'] // 1024} KiB/position"))
    for name, run in runs.items():
        if name in ("tokenizer_throughput", "generation_cost", "tokenizer_compiled", "generation_compiled"):
            continue
        res = run.get("result")
        state = run["status"] + (f" (committed {run['from_file']}, not re-run)" if run.get("from_file") else "")
        if name == "halting" and res and "checks" in res:
            c = res["checks"]
            res_text = (f"{res['num_images']} images, threshold {fmt(res['halt_threshold'])}, Spearman "
                        f"{fmt(c['spearman_rho']['value'])} at eps {c['spearman_rho']['eps']:g}; " + ", ".join(
                            f"eps {r['eps']:g}: {fmt(r['tokens_vs_search'])}x search tokens, met {fmt(100 * r['fraction_met'], 1)} %"
                            for r in c["per_eps"]))
            rows.append((name, state + ": " + res_text))
            continue
        rows.append((name, state if not res else state + ": " + short(res)))
    return rows


def fmt_speedups(fit: dict) -> str:
    if "error" in fit:
        return "failed: " + fit["error"][:120]
    sp = fit.get("speedup_vs_eager") or {}
    return ", ".join(f"t={p}: {fmt(v)}x" for p, v in sp.items()) + f" (compile + warm-up {fmt(fit.get('warmup_s'), 0)} s)"


def short(res: dict, limit: int = 6) -> str:
    """A few scalar figures of an unknown benchmark's JSON."""
    items = [(k, v) for k, v in res.items() if isinstance(v, (int, float)) and not isinstance(v, bool)]
    return ", ".join(f"{k} {fmt(float(v), 3)}" for k, v in items[:limit]) or "see results.json"


# ---------------------------------------------------------------------------------------------------- main
def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--only", default="", help="comma-separated script names to run (default: all)")
    p.add_argument("--with-slow", action="store_true", help=f"re-run {', '.join(FROM_FILE)} too")
    p.add_argument("--out", default=os.path.join(HERE, "results.json"))
    p.add_argument("--md", default=os.path.join(HERE, "results.md"))
    args = p.parse_args(argv)

    import torch

    torch.set_num_threads(args.threads)
    only = set(filter(None, args.only.split(",")))
    start = time.perf_counter()
    runs = {}
    for name, script in discover():
        if only and name not in only:
            continue
        if name in FROM_FILE and not args.with_slow:
            path = os.path.join(HERE, FROM_FILE_JSON.get(name, f"{name}.json"))
            if os.path.exists(path):
                with open(path) as f:
                    runs[name] = {"status": "ok", "from_file": os.path.relpath(path, os.path.dirname(HERE)),
                                  "result": last_json(f.read())}
            else:
                runs[name] = {"status": f"not run ({FROM_FILE[name]}; commit benchmarks/{FROM_FILE_JSON.get(name, name + '.json')} or use --with-slow)"}
            continue
        runs[name] = run_script(name, script, args.threads, BUDGET_S - (time.perf_counter() - start))
    total = time.perf_counter() - start
    results = {**machine_info(), "total_s": total, "benchmarks": runs}
    results["targets"] = targets(runs, total)
    with open(args.out, "w") as f:
        json.dump(results, f, indent=1)
    table = markdown(results)
    with open(args.md, "w") as f:
        f.write(table)
    print(table)
    log(f"wrote {args.out} and {args.md} ({total / 60:.1f} min)")
    return results


if __name__ == "__main__":
    main()
