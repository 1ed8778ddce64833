"""Token-length statistics and histograms: how many tokens each image got (halting tokenizer, token shards) or
each sample chose (a generator with EOS), overall and per class, and the plots that compare them."""
from __future__ import annotations

import torch


def length_summary(lengths: torch.Tensor, max_length: int, labels: torch.Tensor | None = None) -> dict:
    """lengths (N,) in 0..max_length (and optional labels (N,)) -> mean, min, max, histogram (counts of
    0..max_length) and, with labels, the mean length per class (a JSON-ready dict)."""
    lengths = lengths.reshape(-1).long().cpu()
    if lengths.numel() == 0:
        raise ValueError("no lengths to summarise")
    summary = {"count": lengths.numel(), "mean": lengths.float().mean().item(), "min": int(lengths.min()),
               "max": int(lengths.max()),
               "histogram": torch.bincount(lengths.clamp(0, max_length), minlength=max_length + 1).tolist()}
    if labels is not None:
        labels = labels.reshape(-1).long().cpu()
        summary["per_class_mean"] = {str(int(c)): lengths[labels == c].float().mean().item()
                                     for c in labels.unique()}
    return summary


def plot_histograms(panels: list[dict], path: str, xlabel: str = "tokens", ylabel: str = "images") -> None:
    """One panel per entry of ``panels``: ``{"title": str, "series": {name: counts per length 0..K},
    "means": {name: mean}}`` (optional ``"normalise": True`` plots shares instead of counts). Several series in a
    panel are drawn side by side, so two distributions compare at a glance. Writes a PNG to ``path``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(panels), figsize=(max(5.0, 3.6 * len(panels)), 3.1), squeeze=False, sharey=True)
    for ax, panel in zip(axes[0], panels):
        series = panel["series"]
        width = 0.9 / len(series)
        for j, (name, counts) in enumerate(series.items()):
            total = sum(counts) if panel.get("normalise") else 1
            xs = [x - 0.45 + width * (j + 0.5) for x in range(len(counts))]
            bars = ax.bar(xs, [c / max(total, 1) for c in counts], width=width, label=name)
            mean = (panel.get("means") or {}).get(name)
            if mean is not None:
                ax.axvline(mean, color=bars.patches[0].get_facecolor() if bars.patches else "black", lw=1, ls="--")
        ax.set_title(panel["title"], fontsize=9)
        ax.set_xlabel(xlabel)
        if len(series) > 1:
            ax.legend(fontsize=8)
    axes[0][0].set_ylabel(("share of " + ylabel) if panels[0].get("normalise") else ylabel)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_length_comparison(summaries: dict[str, dict], path: str, title: str = "tokens per image") -> None:
    """Overlay the histograms of several :func:`length_summary` results (e.g. generated vs data), as shares."""
    plot_histograms([{"title": title + "\n" + ", ".join(f"{n} mean {s['mean']:.2f}" for n, s in summaries.items()),
                      "series": {n: s["histogram"] for n, s in summaries.items()},
                      "means": {n: s["mean"] for n, s in summaries.items()}, "normalise": True}], path)
