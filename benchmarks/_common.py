"""Shared helpers of the benchmark scripts: timing protocol, machine line, matmul peak, RSS, SDPA backend.

Protocol (shared/BENCHMARK_WORKLOADS.md): W untimed warm-up calls, then N timed calls with
``time.perf_counter()``; the median is reported and every time goes into the JSON.
"""
from __future__ import annotations

import json
import os
import platform
import statistics
import sys
import threading
import time

import torch
import torch.nn.functional as F

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def log(*args) -> None:
    print(*args, file=sys.stderr, flush=True)


def timed(fn, warmup: int, repeats: int) -> list[float]:
    """Seconds of ``repeats`` calls of ``fn`` after ``warmup`` untimed ones."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return times


def emit(result: dict, path: str | None = None) -> dict:
    """Print the result as the last line (one JSON object) and optionally write it to ``path``."""
    line = json.dumps(result)
    if path:
        with open(path, "w") as f:
            f.write(line + "\n")
    print(line, flush=True)
    return result


def median(times: list[float]) -> float:
    return statistics.median(times)


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_info() -> dict:
    """Where and how a benchmark ran: one machine line plus the thread / kernel settings."""
    return {
        "machine": f"{cpu_model()}, {os.cpu_count()} cpus, {platform.system()} {platform.machine()}",
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "interop_threads": torch.get_num_interop_threads(),
        "env": {k: os.environ[k] for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "KMP_AFFINITY") if k in os.environ},
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "mkldnn": torch.backends.mkldnn.is_available(),
        "blas": "mkl" if torch.backends.mkl.is_available() else "other",
    }


def matmul_peak(n: int = 2048, warmup: int = 2, repeats: int = 5) -> dict:
    """The machine's fp32 matmul peak: an n x n @ n x n product (2 n^3 FLOPs) timed in this process."""
    a = torch.randn(n, n, generator=torch.Generator().manual_seed(0))
    b = torch.randn(n, n, generator=torch.Generator().manual_seed(1))
    out = torch.empty(n, n)
    times = timed(lambda: torch.mm(a, b, out=out), warmup, repeats)
    return {"n": n, "times_s": times, "gflop_per_s": 2 * n**3 / median(times) / 1e9}


def sdpa_backend(heads: int = 4, tokens: int = 97, head_dim: int = 64, mask: bool = False, q_len: int | None = None) -> str:
    """Name of the aten kernel ``scaled_dot_product_attention`` dispatches to for this shape (on CPU)."""
    from torch.profiler import ProfilerActivity, profile

    q = torch.randn(2, heads, q_len or tokens, head_dim)
    k = v = torch.randn(2, heads, tokens, head_dim)
    attn_mask = torch.ones(q.shape[2], tokens, dtype=torch.bool) if mask else None
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)
    names = [e.key for e in prof.key_averages() if e.key.startswith("aten::_scaled_dot_product") or e.key == "aten::_softmax"]
    return ",".join(sorted(set(names))) or "unknown"


def throughput(flops_per_item: float, items: int, seconds: float, peak_gflop_per_s: float) -> dict:
    """items/s, model GFLOP/s and MFU (model FLOPs/s over the matmul peak) of ``items`` processed in ``seconds``."""
    gflops = flops_per_item * items / seconds / 1e9
    return {"items_per_s": items / seconds, "model_gflop_per_s": gflops, "mfu": gflops / peak_gflop_per_s}


OP_CATEGORIES = {  # aten op name fragments -> category, first match wins (self CPU time of leaf ops)
    "attention": ("scaled_dot_product", "_softmax", "softmax_backward"),
    "matmul": ("addmm", "aten::mm", "bmm", "mkldnn", "aten::linear", "aten::matmul", "baddbmm"),
    "convolution": ("convolution",),
    "layer/rms norm": ("layer_norm", "rms_norm"),
    "activation": ("gelu", "silu"),
    "optimizer": ("adam", "_foreach", "lerp", "addcdiv", "addcmul", "sqrt"),
    "copy/layout": ("copy_", "clone", "contiguous", "cat", "stack", "index", "embedding", "permute", "transpose"),
}


def op_breakdown(fn, categories: dict = OP_CATEGORIES) -> dict:
    """Self CPU time of one call of ``fn`` per op category (torch.profiler), in ms and as a share of the total."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        fn()
    totals: dict[str, float] = {}
    for event in prof.key_averages():
        name = event.key
        cat = next((c for c, keys in categories.items() if any(k in name for k in keys)), "other")
        totals[cat] = totals.get(cat, 0.0) + event.self_cpu_time_total / 1e3
    whole = sum(totals.values()) or 1.0
    return {"ms": {k: round(v, 2) for k, v in sorted(totals.items(), key=lambda kv: -kv[1])},
            "share": {k: round(v / whole, 4) for k, v in sorted(totals.items(), key=lambda kv: -kv[1])},
            "top_ops": [(e.key, round(e.self_cpu_time_total / 1e3, 2), e.count)
                        for e in sorted(prof.key_averages(), key=lambda e: -e.self_cpu_time_total)[:12]]}


def rss_bytes() -> int:
    """Resident set size of this process now."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class PeakRSS:
    """Peak resident memory while the block runs, sampled every ``interval`` seconds by a thread.

    ``peak_mb`` is the highest RSS seen (whole process), ``increase_mb`` the peak minus the RSS on entry.
    """

    def __init__(self, interval: float = 0.002):
        self.interval = interval

    def __enter__(self):
        self.start = self.peak = rss_bytes()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def _run(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, rss_bytes())
            time.sleep(self.interval)

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, rss_bytes())
        self.peak_mb = self.peak / 2**20
        self.increase_mb = (self.peak - self.start) / 2**20
        return False

    def as_dict(self) -> dict:
        return {"peak_rss_mb": round(self.peak_mb, 1), "rss_increase_mb": round(self.increase_mb, 1)}
