"""Adaptive (halting) evaluation: for each target error eps, how many tokens the halting tokenizer keeps, the
error it achieves, and how that compares with searching for the smallest prefix that meets eps.

Protocol (also in the README):

- Images are read once, in order. For each eps every batch is encoded once, conditioned on eps (one encoder
  pass); the halting head gives each image a length L, and the first L tokens are decoded once (one decoder
  pass) to measure the achieved error: per-pixel L1 (or MSE, the tokenizer's ``error_metric``) on [0, 1]
  images. An image meets eps when its error is <= eps.
- Search baseline on the same codes: ``linear`` decodes k = 1, 2, ... until the image meets eps (the exact
  minimum, K when nothing meets it), ``binary`` bisects 1..K; their decoder passes are counted per image.
- Reported per eps: mean tokens, achieved error, fraction meeting eps, the search's mean tokens / fraction /
  passes, the ratios halting / search, and a histogram of lengths 1..K.
- Does length follow content? Spearman correlations of the halting length with the search minimum (the length
  the image really needs), with a content measure of the image itself, its edge density (``edge_density``),
  and, when the data has a ``num_shapes`` field (``shapes``), with the number of shapes.
"""
from __future__ import annotations

import torch
from tqdm import tqdm

from ..tokenizers.halting import (HaltingTokenizer, lengths_from_halting, prefix_errors, reconstruction_error,
                                  search_min_tokens)
from .datasets import EvalData


@torch.no_grad()
def evaluate_adaptive(
    tokenizer: HaltingTokenizer,
    data: EvalData,
    target_errors: list[float],
    batch_size: int = 100,
    num_workers: int = 0,
    threshold: float | None = None,
    search: bool = True,
    progress: bool = True,
) -> dict:
    """Score halting at every eps in ``target_errors``; returns a JSON-ready report (see the module docstring)."""
    if not isinstance(tokenizer, HaltingTokenizer):
        raise ValueError(f"adaptive evaluation needs a halting tokenizer (tokgen.lit.HaltingModule checkpoint), "
                         f"got {type(tokenizer).__name__}")
    if not target_errors:
        raise ValueError("target_errors is empty; give at least one eps")
    for eps in target_errors:  # fail before reading any data
        tokenizer.condition_index(float(eps), 1)
    metric = tokenizer.config.error_metric
    K = tokenizer.num_tokens
    device = next(tokenizer.parameters()).device
    keys = ("length", "error", "linear_length", "linear_met", "linear_passes", "binary_length", "binary_passes")
    per_eps = {float(eps): {k: [] for k in keys} for eps in target_errors}
    shapes, edges = [], []
    for batch in tqdm(data.loader(batch_size, num_workers), desc="adaptive eval", unit="batch", disable=not progress):
        x = batch["image"].to(device)
        if "num_shapes" in batch:
            shapes.append(batch["num_shapes"].cpu())
        edges.append(edge_density(x).cpu())
        table = None  # every prefix's error, decoded once per batch when the codes do not depend on eps
        for eps, acc in per_eps.items():
            _, lengths, z_q = tokenizer.encode_adaptive(x, eps, threshold=threshold)
            if search and not tokenizer.config.condition_encoder:  # the searches will read every prefix anyway
                table = prefix_errors(tokenizer, z_q, x, metric) if table is None else table
                err = table.gather(1, (lengths - 1)[:, None]).squeeze(1)
            else:
                err = reconstruction_error(tokenizer.decode_latents(z_q, keep=lengths), x, metric)
            acc["length"].append(lengths.cpu())
            acc["error"].append(err.cpu())
            if search:
                for method in ("linear", "binary"):
                    found = search_min_tokens(tokenizer, z_q, x, eps, method, metric, errors=table)
                    acc[f"{method}_length"].append(found["length"].cpu())
                    acc[f"{method}_passes"].append(found["passes"].cpu())
                    if method == "linear":
                        acc["linear_met"].append(found["met"].cpu())

    edges = torch.cat(edges)
    results, columns = [], {}
    for eps, acc in per_eps.items():
        cols = {k: torch.cat(v) for k, v in acc.items() if v}
        columns[eps] = cols
        lengths, err = cols["length"].float(), cols["error"]
        row = {
            "eps": eps,
            "mean_tokens": lengths.mean().item(),
            "achieved_error": err.mean().item(),
            "fraction_met": (err <= eps).float().mean().item(),
            "encoder_passes": 1,
            "decoder_passes": 1,  # the reconstruction; choosing the length itself needs none
            "length_histogram": torch.bincount(cols["length"], minlength=K + 1)[1:].tolist(),  # counts of 1..K
        }
        if search:
            row["search_linear"] = {
                "mean_tokens": cols["linear_length"].float().mean().item(),
                "fraction_met": cols["linear_met"].float().mean().item(),
                "decoder_passes": cols["linear_passes"].float().mean().item(),
            }
            row["search_binary"] = {
                "mean_tokens": cols["binary_length"].float().mean().item(),
                "decoder_passes": cols["binary_passes"].float().mean().item(),
            }
            row["tokens_vs_search"] = row["mean_tokens"] / max(row["search_linear"]["mean_tokens"], 1e-9)
            row["passes_vs_binary_search"] = row["decoder_passes"] / row["search_binary"]["decoder_passes"]
            row["passes_vs_linear_search"] = row["decoder_passes"] / row["search_linear"]["decoder_passes"]
            row["spearman_length_vs_search_min"] = spearman(lengths, cols["linear_length"].float())
        row["spearman_length_vs_edge_density"] = spearman(lengths, edges)
        if shapes:
            row["spearman_length_vs_num_shapes"] = spearman(lengths, torch.cat(shapes).float())
        results.append(row)
    means = [r["mean_tokens"] for r in sorted(results, key=lambda r: r["eps"])]
    by_eps = torch.stack([columns[e]["length"] for e in sorted(columns)])  # (E, N), rising eps
    monotone_images = (by_eps[:-1] >= by_eps[1:]).all(0).float().mean().item()  # per image, not only on average
    return {
        "mode": "adaptive",
        "num_images": len(data),
        "num_tokens": K,
        "error_metric": metric,
        "trained_range": [tokenizer.config.eps_min, tokenizer.config.eps_max],
        "halt_threshold": tokenizer.config.halt_threshold if threshold is None else threshold,
        "halt_thresholds": tokenizer.config.halt_thresholds if threshold is None else None,  # per eps, when set
        "monotone_mean_tokens": all(a >= b for a, b in zip(means, means[1:])),  # lower eps never fewer tokens
        "monotone_images": monotone_images,  # the fraction of images whose own length never falls as eps falls
        "results": results,
        "_columns": columns,  # per-image tensors for callers (dropped by write_adaptive_report)
    }


@torch.no_grad()
def calibrate_threshold(
    tokenizer: HaltingTokenizer,
    data: EvalData,
    target_errors: list[float],
    min_met: float = 0.85,
    batch_size: int = 100,
    grid: list[float] | None = None,
    progress: bool = True,
) -> dict:
    """The smallest halting threshold whose lengths meet every eps on ``min_met`` of the images of ``data``.

    A held-out calibration split (not the one that is then scored): for each eps every batch is encoded once
    (conditioned on eps) and every prefix 1..K is decoded once to know which lengths meet eps; the lengths
    any threshold of ``grid`` gives are then a lookup. A higher threshold halts later (more tokens, more
    images meeting eps), so the smallest one that reaches ``min_met`` at every eps spends the fewest tokens.
    Returns {"threshold", "min_met", "grid", "per_eps": {eps: {"fraction_met": [...], "mean_tokens": [...]}},
    "table"}; when no threshold of the grid reaches ``min_met`` the largest is returned with "reached": False.
    "table" ([[eps, threshold], ...], rising eps) holds one threshold per eps instead (the smallest reaching
    ``min_met`` at that eps, raised where needed so it does not rise with eps): the ``halt_thresholds`` of a
    halting config.
    """
    if not 0.0 < min_met <= 1.0:
        raise ValueError(f"min_met={min_met!r} must be in (0, 1]")
    grid = sorted(grid or [round(0.01 * i, 2) for i in range(1, 100)] + [0.995, 0.999])
    bad = [g for g in grid if not 0.0 < g < 1.0]
    if bad:
        raise ValueError(f"calibration thresholds {bad} are outside (0, 1)")
    for eps in target_errors:
        tokenizer.condition_index(float(eps), 1)
    metric, K = tokenizer.config.error_metric, tokenizer.num_tokens
    device = next(tokenizer.parameters()).device
    stats = {float(e): {"met": torch.zeros(len(grid)), "tokens": torch.zeros(len(grid))} for e in target_errors}
    n = 0
    for batch in tqdm(data.loader(batch_size, 0), desc="calibrate halting", unit="batch", disable=not progress):
        x = batch["image"].to(device)
        B = x.shape[0]
        n += B
        errors = None  # (B, K): error of prefix k+1; the same at every eps when the encoder does not read eps
        for eps, acc in stats.items():
            latents, halt_logits = tokenizer.encode_hidden(x, tokenizer.condition_index(eps, B))
            if errors is None or tokenizer.config.condition_encoder:
                errors = prefix_errors(tokenizer, tokenizer.quantize(latents)[0], x, metric).cpu()
            meets = errors <= eps
            halt_logits = halt_logits.cpu()
            for j, thr in enumerate(grid):
                lengths = lengths_from_halting(halt_logits, thr)  # (B,) in 1..K
                acc["met"][j] += meets.gather(1, (lengths - 1)[:, None]).float().sum()
                acc["tokens"][j] += lengths.float().sum()
    per_eps = {eps: {"fraction_met": (a["met"] / n).tolist(), "mean_tokens": (a["tokens"] / n).tolist()}
               for eps, a in stats.items()}
    meets = {eps: a["met"] / n >= min_met for eps, a in stats.items()}  # (len(grid),) each
    ok = torch.stack(list(meets.values())).all(0)
    reached = bool(ok.any())
    index = int(ok.nonzero()[0]) if reached else len(grid) - 1
    # per eps: the smallest threshold reaching min_met there; then, from the largest eps down, never below the
    # next larger eps's, so the table's thresholds do not rise with eps (a lower eps never halts earlier)
    table, floor = [], 0.0
    for eps in sorted(meets, reverse=True):
        hit = meets[eps].nonzero()
        floor = max(floor, grid[int(hit[0])] if hit.numel() else grid[-1])
        table.append([eps, floor])
    return {"threshold": grid[index], "reached": reached, "min_met": min_met, "num_images": n,
            "grid": grid, "per_eps": per_eps, "table": sorted(table),
            "table_reached": all(bool(m.any()) for m in meets.values())}


def edge_density(images: torch.Tensor, threshold: float = 0.1) -> torch.Tensor:
    """A content measure that needs no model: the fraction of pixels on an edge, i.e. whose grey-level gradient
    magnitude (forward differences on [0, 1] images, channels averaged) exceeds ``threshold``.
    images (B, C, H, W) in [-1, 1] -> (B,) in [0, 1]. Busy images (texture, print, many parts) score high."""
    grey = (images.float().mean(1) + 1) / 2  # (B, H, W) in [0, 1]
    gx = grey[:, :-1, 1:] - grey[:, :-1, :-1]
    gy = grey[:, 1:, :-1] - grey[:, :-1, :-1]
    return ((gx ** 2 + gy ** 2).sqrt() > threshold).float().mean((1, 2))


def spearman(a: torch.Tensor, b: torch.Tensor) -> float:
    """Spearman rank correlation (ties get average ranks); nan when either side is constant."""
    from scipy.stats import spearmanr

    if a.unique().numel() < 2 or b.unique().numel() < 2:
        return float("nan")
    return float(spearmanr(a.numpy(), b.numpy()).statistic)


def adaptive_markdown(report: dict) -> str:
    """One row per eps: halting tokens / error / fraction met next to the search baseline."""
    lines = ["| eps | mean tokens | achieved error | met eps | search tokens (min) | search met | tokens / search "
             "| decoder passes: halting / binary / linear search |", "|" + "---|" * 8]
    for r in report["results"]:
        s, b = r.get("search_linear"), r.get("search_binary")
        cells = [f"{r['eps']:g}", f"{r['mean_tokens']:.2f}", f"{r['achieved_error']:.4f}", f"{r['fraction_met']:.1%}",
                 f"{s['mean_tokens']:.2f}" if s else "", f"{s['fraction_met']:.1%}" if s else "",
                 f"{r['tokens_vs_search']:.2f}x" if s else "",
                 f"1 / {b['decoder_passes']:.2f} / {s['decoder_passes']:.2f}" if s else "1"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot_length_histograms(report: dict, path: str) -> None:
    """One panel per eps: how many images got each length 1..K."""
    from .lengths import plot_histograms

    plot_histograms([{"title": f"eps={r['eps']:g}: mean {r['mean_tokens']:.1f}, met {r['fraction_met']:.0%}",
                      "series": {"halting": [0] + list(r["length_histogram"])},
                      "means": {"halting": r["mean_tokens"]}} for r in report["results"]],
                    path, xlabel="tokens kept")


def write_adaptive_report(report: dict, out: str) -> dict[str, str]:
    """Write ``out`` (JSON), ``<stem>.md`` (table) and ``<stem>_lengths.png`` (histograms); returns the paths."""
    import json
    import os

    stem = os.path.splitext(out)[0]
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    paths = {"json": out, "table": f"{stem}.md", "histogram": f"{stem}_lengths.png"}
    with open(out, "w") as f:
        json.dump({k: v for k, v in report.items() if not k.startswith("_")}, f, indent=1)
    with open(paths["table"], "w") as f:
        f.write(adaptive_markdown(report) + "\n")
    plot_length_histograms(report, paths["histogram"])
    return paths
