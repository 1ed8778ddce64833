"""Per-budget evaluation of a tokenizer (rFID, PSNR, SSIM, LPIPS at k = 1, 2, 4, ..., K) and of sample folders (gFID).

Protocol (also in the README):

- The data set is read once, in order, in batches (under torch.distributed each process takes every
  world-size-th image, and torchmetrics sums the metric states across processes at compute time). Each batch is encoded once; its codes are decoded at every
  budget k (``decode(codes[:, :k])``). Nothing per image is kept: every metric is a running sum, so memory does
  not grow with the number of images.
- Real images and reconstructions are scored as 8-bit images: [-1, 1] -> [0, 1] clamped -> x 255 -> rounded to
  the nearest integer (not truncated), i.e. exactly what a PNG of the image holds.
- PSNR (dB, whole frame, per image) and SSIM (11x11 Gaussian, sigma 1.5, per image) on those images in [0, 1],
  LPIPS (lpips package, v0.1 linear layers) on them mapped back to [-1, 1]; each is the mean over images.
- Fréchet distances (see ``tokgen.metrics.fid``): Inception FID with torch-fidelity's weights and resize, or
  the distance in a feature extractor's space (a safetensors file), reported under the extractor's own name. The real
  images' statistics are accumulated once per run, or read from the on-disk cache.
"""
from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset, Subset
from torchmetrics.aggregation import MeanMetric
from tqdm import tqdm

from ..images import rgb, save_labelled_grid
from .datasets import EvalData
from .fid import FrechetPerBudget, RealStatsCache
from .image import psnr, ssim, to_uint8

PAIRED_METRICS = ("psnr", "ssim", "lpips")
LOWER_IS_BETTER_PREFIXES = ("fid", "lpips")


def lower_is_better(name: str) -> bool:
    return name.startswith(LOWER_IS_BETTER_PREFIXES)


@dataclass
class EvalReport:
    """metric -> column label (budget k, or sample set) -> value, plus throughput and run information."""

    labels: list[str]
    metrics: dict[str, dict[str, float]]
    throughput: dict[str, dict[str, float]] = field(default_factory=dict)
    info: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {"labels": self.labels, "metrics": self.metrics, "throughput": self.throughput, **self.info}

    def markdown(self) -> str:
        """One row per budget (or sample set), one column per metric, then throughput."""
        first = "k" if self.info.get("mode") == "reconstruction" else "samples"
        columns = list(self.metrics)
        heads = [f"{m} {'(lower better)' if lower_is_better(m) else '(higher better)'}" for m in columns]
        heads = [h.replace("psnr (higher better)", "psnr dB (higher better)") for h in heads]
        thr = list(self.throughput)
        lines = ["| " + " | ".join([first, *heads, *thr]) + " |", "|" + "---|" * (1 + len(heads) + len(thr))]
        for label in self.labels:
            cells = [label] + [_fmt(self.metrics[m].get(label)) for m in columns]
            cells += [_fmt(self.throughput[t].get(label), digits=0) for t in thr]
            lines.append("| " + " | ".join(cells) + " |")
        if self.info.get("floors"):
            lines.append("")
            lines.append("PSNR floors on the same images (no tokenizer): " + ", ".join(
                f"{name.replace('_', ' ')} {value:.2f} dB" for name, value in self.info["floors"].items()))
        if self.info.get("note"):
            lines += ["", "Note: " + self.info["note"]]
        return "\n".join(lines)


def _fmt(value, digits: int | None = None) -> str:
    if value is None:
        return ""
    if digits is not None:
        return f"{value:.{digits}f}"
    return f"{value:.4f}" if abs(value) < 10 else f"{value:.2f}"


# ---------------------------------------------------------------------------------------------- tokenizer
@torch.no_grad()
def evaluate_tokenizer(
    tokenizer: nn.Module,
    data: EvalData,
    budgets: list[int],
    metrics: list[str] = ("psnr", "ssim"),
    extractors: list[nn.Module] = (),
    lpips_model: nn.Module | None = None,
    batch_size: int = 100,
    num_workers: int = 0,
    cache: RealStatsCache | None = None,
    grid_images: int = 8,
    progress: bool = True,
    floors: bool = False,
) -> tuple[EvalReport, list[tuple[str, torch.Tensor]]]:
    """Reconstruct ``data`` at every budget and score it; returns (report, grid rows [(label, (g, C, H, W) in [0, 1])]).

    ``metrics`` picks among psnr, ssim, lpips (``lpips_model`` required for lpips); every extractor in
    ``extractors`` (InceptionFeatures or FeatureExtractor) adds a Fréchet distance under its ``metric_name``.
    The grid shows ``grid_images`` images spread evenly over the data (not its first files, which in a folder of
    crops are often one photo). ``floors``: also the PSNR of two codes that need no tokenizer, on the same
    images (``report.info["floors"]``, see :func:`psnr_floors`), so a budget's PSNR can be read against them.
    """
    unknown = [m for m in metrics if m not in PAIRED_METRICS]
    if unknown:
        raise ValueError(f"unknown metrics {unknown}; accepted here: {', '.join(PAIRED_METRICS)}")
    if "lpips" in metrics and lpips_model is None:
        raise ValueError("metric lpips needs lpips_model (tokgen.lit.losses.build_lpips)")
    K = tokenizer.num_tokens
    for k in budgets:
        if not isinstance(k, int) or not 1 <= k <= K:
            raise ValueError(f"budget {k!r} is outside the tokenizer's accepted range 1..{K}")
    labels = [str(k) for k in budgets]
    device = next(tokenizer.parameters()).device
    rank, world = _dist_info()
    frechet = [FrechetPerBudget(e, labels, data.key, cache).to(device) for e in extractors]
    means = {m: {label: MeanMetric().to(device) for label in labels} for m in metrics}
    encode_s, decode_s = 0.0, {label: 0.0 for label in labels}
    grid_parts: dict[str, list[torch.Tensor]] = {"real": [], **{f"k={k}": [] for k in budgets}}
    grid_at = torch.linspace(0, len(data) - 1, min(grid_images, len(data))).round().long().unique()
    n = 0
    loader = data.loader(batch_size, num_workers, shard=(rank, world))
    for batch in tqdm(loader, desc="eval", unit="batch", disable=not progress or rank > 0, dynamic_ncols=True):
        x = batch["image"].to(device)  # (B, C, H, W) in [-1, 1]
        real = to_uint8(x)  # (B, C, H, W) uint8
        target = real.float() / 255
        for f in frechet:
            f.update_real(real)
        start = _clock(device)
        codes = tokenizer.encode(x)  # (B, K)
        encode_s += _clock(device) - start
        index = rank + world * torch.arange(n, n + x.shape[0])  # positions of this batch in the data
        take = torch.isin(index, grid_at).nonzero().squeeze(1).to(device)
        if take.numel():
            grid_parts["real"].append(target[take].cpu())
        for k, label in zip(budgets, labels):
            start = _clock(device)
            recon = tokenizer.decode(codes[:, :k])
            decode_s[label] += _clock(device) - start
            recon8 = to_uint8(recon)
            pred = recon8.float() / 255
            for f in frechet:
                f.update(label, recon8)
            if "psnr" in means:
                means["psnr"][label].update(psnr(pred, target))
            if "ssim" in means:
                means["ssim"][label].update(ssim(pred, target))
            if "lpips" in means:
                means["lpips"][label].update(lpips_model(rgb(pred) * 2 - 1, rgb(target) * 2 - 1).flatten())
            if take.numel():
                grid_parts[f"k={k}"].append(pred[take].cpu())
        n += x.shape[0]

    grid = [(label, torch.cat(parts)) for label, parts in grid_parts.items() if parts]
    results: dict[str, dict[str, float]] = {}
    for f in frechet:
        results[f.name] = f.compute()
    for m in metrics:
        results[m] = {label: float(means[m][label].compute()) for label in labels}
    throughput = {  # per process
        "decode tokens/s": {label: n * k / max(decode_s[label], 1e-9) for k, label in zip(budgets, labels)},
        "decode images/s": {label: n / max(decode_s[label], 1e-9) for label in labels},
    }
    info = {
        "mode": "reconstruction",
        "num_images": len(data),
        "processes": world,
        "budgets": list(budgets),
        "num_tokens": K,
        "encode": {"images/s": n / max(encode_s, 1e-9), "tokens/s": n * K / max(encode_s, 1e-9)},
        "real_stats": {f.name: {"cache": f.cache_path, "hit": not f.needs_real} for f in frechet},
        "protocols": {f.name: getattr(extractor, "protocol", "") for f, extractor in zip(frechet, extractors)},
        "data": data.key,
    }
    if floors:
        info["floors"] = psnr_floors(loader, device)
    return EvalReport(labels, results, throughput, info), grid


BLOCK_GRID = 4  # the block-means floor keeps a BLOCK_GRID x BLOCK_GRID grid of mean colours per image


def psnr_floors(loader: DataLoader, device: torch.device) -> dict[str, float]:
    """Mean PSNR (dB, 8-bit images as scored above) of two trivial codes of the same images:

    - ``mean_image``: every image replaced by the mean image of the set (0 tokens' worth: what a decoder
      that ignores its tokens can reach);
    - ``block_means_4x4``: every image replaced by the mean colours of its 4 x 4 grid of blocks (48 numbers
      for RGB; e.g. 8 x 8 pixel blocks of a 32 x 32 image).

    Two passes over ``loader`` (the mean image first). Returns {name: PSNR}."""
    total, count = None, 0
    blocks = MeanMetric().to(device)
    for batch in loader:
        target = to_uint8(batch["image"].to(device)).float() / 255
        total = target.sum(0) if total is None else total + target.sum(0)
        count += target.shape[0]
        coarse = F.interpolate(F.adaptive_avg_pool2d(target, BLOCK_GRID), size=target.shape[-2:], mode="nearest")
        blocks.update(psnr(to_uint8(coarse * 2 - 1).float() / 255, target))
    mean_image = to_uint8((total / count) * 2 - 1).float() / 255
    means = MeanMetric().to(device)
    for batch in loader:
        target = to_uint8(batch["image"].to(device)).float() / 255
        means.update(psnr(mean_image.expand_as(target), target))
    return {"mean_image": float(means.compute()), f"block_means_{BLOCK_GRID}x{BLOCK_GRID}": float(blocks.compute())}


def _clock(device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize(device)  # kernels run asynchronously: time them, not their launch
    return time.perf_counter()


def _dist_info() -> tuple[int, int]:
    """(rank, world size); each process evaluates every world-th image and torchmetrics sums the states."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


# ---------------------------------------------------------------------------------------------- samples (gFID)
@torch.no_grad()
def evaluate_samples(
    sample_sets: dict[str, Dataset],
    real: EvalData,
    extractors: list[nn.Module],
    batch_size: int = 100,
    num_workers: int = 0,
    cache: RealStatsCache | None = None,
    progress: bool = True,
    device: str | torch.device = "cpu",
) -> EvalReport:
    """Fréchet distance of each sample set (items ``{"image_uint8": (C, S, S)}``) against the real set."""
    if not extractors:
        raise ValueError("scoring samples needs a Fréchet metric: fid (Inception) or --feature-extractor")
    labels = list(sample_sets)
    rank, world = _dist_info()
    progress = progress and rank == 0
    frechet = [FrechetPerBudget(e, labels, real.key, cache).to(device) for e in extractors]
    if any(f.needs_real for f in frechet):
        for batch in tqdm(real.loader(batch_size, num_workers, shard=(rank, world)), desc="real", unit="batch",
                          disable=not progress):
            real8 = to_uint8(batch["image"].to(device))
            for f in frechet:
                f.update_real(real8)
    counts = {}
    for label, dataset in sample_sets.items():
        shard = dataset if world == 1 else Subset(dataset, range(rank, len(dataset), world))
        loader = DataLoader(shard, batch_size=batch_size, num_workers=num_workers)
        counts[label] = len(dataset)
        for batch in tqdm(loader, desc=f"samples {label}", unit="batch", disable=not progress):
            for f in frechet:
                f.update(label, batch["image_uint8"].to(device))
    results = {f.name: f.compute() for f in frechet}
    info = {
        "mode": "samples",
        "num_real_images": len(real),
        "num_samples": counts,
        "real_stats": {f.name: {"cache": f.cache_path, "hit": not f.needs_real} for f in frechet},
        "protocols": {f.name: getattr(extractor, "protocol", "") for f, extractor in zip(frechet, extractors)},
        "data": real.key,
    }
    return EvalReport(labels, results, {}, info)


# ---------------------------------------------------------------------------------------------- outputs
def write_report(report: EvalReport, out: str, grid: list[tuple[str, torch.Tensor]] | None = None) -> dict[str, str]:
    """Write ``out`` (JSON), ``<stem>.md`` (the table), ``<stem>_metrics.png`` (each metric against k) and,
    with a grid, ``<stem>_recon.png`` (rows: real, then each budget). Returns the paths written."""
    stem = os.path.splitext(out)[0]
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    paths = {"json": out, "table": f"{stem}.md", "plot": f"{stem}_metrics.png"}
    with open(out, "w") as f:
        json.dump(report.to_dict(), f, indent=1)
    with open(paths["table"], "w") as f:
        f.write(report.markdown() + "\n")
    plot_metrics(report, paths["plot"])
    if grid:
        paths["grid"] = f"{stem}_recon.png"
        save_labelled_grid(grid, paths["grid"])
    return paths


def plot_metrics(report: EvalReport, path: str) -> None:
    """One panel per metric against the budget k (log2 axis), or against the sample sets."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(report.metrics)
    numeric = all(label.isdigit() for label in report.labels)
    fig, axes = plt.subplots(1, max(len(names), 1), figsize=(3.4 * max(len(names), 1), 3.0), squeeze=False)
    for ax, name in zip(axes[0], names):
        ys = [report.metrics[name][label] for label in report.labels]
        if numeric:
            xs = [int(label) for label in report.labels]
            ax.plot(xs, ys, marker="o")
            ax.set_xscale("log", base=2)
            ax.set_xticks(xs, [str(x) for x in xs])
            ax.set_xlabel("tokens k")
        else:
            ax.plot(range(len(ys)), ys, marker="o")
            ax.set_xticks(range(len(ys)), report.labels, rotation=30)
        if name == "psnr":
            for (floor, value), style in zip((report.info.get("floors") or {}).items(), (":", "--")):
                ax.axhline(value, color="grey", lw=1, ls=style, label=floor.replace("_", " "))
            if report.info.get("floors"):
                ax.legend(fontsize=7)
        ax.set_title(f"{name} ({'lower' if lower_is_better(name) else 'higher'} is better)", fontsize=9)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
