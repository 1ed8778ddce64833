"""Reconstruction quality at a fixed model size and training budget: the `q-fmnist-v1` workload
(shared/BENCHMARK_WORKLOADS.md).

Trains tokgen's tokenizer recipe (``configs/tokenizer/q_fmnist_v1.yaml`` by default: its quantizer, losses and
schedule; the model size and the 1000 steps x batch 32 budget are the workload's) through the same Lightning
CLI as ``tokgen fit``, then scores all 10k Fashion-MNIST test images: encode -> codes -> decode, PSNR on
[0, 1] images (reconstruction clamped) over the whole 32 x 32 frame per image, SSIM, and codebook usage
(distinct codes on the test set / codebook size). The last line printed is one JSON object.

    python benchmarks/quality_fmnist.py                           # the recipe, 1000 steps, 32 tokens
    python benchmarks/quality_fmnist.py --fixed-k 8               # a fixed-length model with 8 tokens
    python benchmarks/quality_fmnist.py --nested                  # nested dropout; scored at k = 1, 2, 4, ..., 32
    python benchmarks/quality_fmnist.py --steps 300 --test-size 2000 \\
        -- --model.init_args.optim.lr=3e-4                        # an ablation: any CLI override after --
    python benchmarks/quality_fmnist.py --table runs/quality/*.json   # Markdown table of finished runs
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from tokgen.cli import lightning_main  # noqa: E402
from tokgen.metrics.image import psnr, ssim, to_unit  # noqa: E402
from tokgen.tokenizers import power_of_two_budgets  # noqa: E402

DEFAULT_RECIPE = os.path.join(ROOT, "configs", "tokenizer", "q_fmnist_v1.yaml")


def log(*args) -> None:
    print(*args, file=sys.stderr, flush=True)


@torch.no_grad()
def score(tokenizer, images: torch.Tensor, budgets: list[int], batch_size: int = 500) -> dict:
    """PSNR / SSIM per budget and codebook usage over ``images`` (N, C, H, W) in [-1, 1]."""
    tokenizer.eval()
    sums = {k: {"psnr": 0.0, "ssim": 0.0} for k in budgets}
    seen = []
    for start in range(0, len(images), batch_size):
        x = images[start : start + batch_size]
        z_q, codes, _ = tokenizer.quantize(tokenizer.encode_latents(x))
        if codes.dtype == torch.long:
            seen.append(codes.unique())
        target = to_unit(x)
        for k in budgets:
            recon = to_unit(tokenizer.decode_latents(z_q[:, :k])).clamp(0, 1)
            sums[k]["psnr"] += psnr(recon, target).sum().item()
            sums[k]["ssim"] += ssim(recon, target).sum().item()
    n = len(images)
    out = {"per_k": {str(k): {m: v / n for m, v in s.items()} for k, s in sums.items()}}
    q = tokenizer.quantizer
    if seen:
        distinct = torch.cat(seen).unique().numel()
        out.update(codebook_size=q.codebook_size, distinct_codes=distinct, codebook_usage=distinct / q.codebook_size)
    return out


def markdown_table(paths: list[str]) -> str:
    """One row per JSON written by this script: name, what changed, PSNR per k, SSIM, usage, time."""
    rows = ["| run | change | K | steps | test images | PSNR (dB) per k | SSIM @K | codebook usage | s/step |",
            "|---|---|---|---|---|---|---|---|---|"]
    for path in paths:
        with open(path) as f:
            r = json.loads(f.read().strip().splitlines()[-1])
        best = r.get("ema") or r["raw"]
        per_k = ", ".join(f"k={k}: {v['psnr']:.2f}" for k, v in best["per_k"].items())
        usage = f"{r['codebook_usage']:.1%}" if r.get("codebook_usage") is not None else "-"
        change = [o.split("init_args.")[-1] for o in r["overrides"]]
        if r["nested_dropout"] != "none":
            change.insert(0, f"nested dropout {r['nested_dropout']}")
        change = " ".join(change) or "(recipe)"
        rows.append(f"| {r['name']} | {change} | {r['num_tokens']} | {r['steps']} | {r['test_images']} | {per_k} | {r['ssim']:.3f} "
                    f"| {usage} | {r['s_per_step']:.2f} |")
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> dict:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--table"]:
        if len(argv) < 2:
            raise SystemExit("--table needs one or more JSON files written by this script")
        print(markdown_table(argv[1:]))
        return {}
    extra: list[str] = []
    if "--" in argv:
        i = argv.index("--")
        argv, extra = argv[:i], argv[i + 1 :]
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--config", default=DEFAULT_RECIPE, help="tokenizer recipe (a `tokgen fit` YAML)")
    p.add_argument("--steps", type=int, default=1000)
    p.add_argument("--tokens", type=int, default=None, help="number of tokens K (default: the recipe's)")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--nested", nargs="?", const="pow2", default=None, choices=("pow2", "pow2_full", "pow2_dual", "uniform"),
                      help="train with nested dropout and score every power-of-two prefix")
    mode.add_argument("--fixed-k", type=int, default=None, help="a fixed-length model with this many tokens")
    p.add_argument("--test-size", type=int, default=10000, help="test images scored (the workload: all 10000)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", default=None, help="run folder (default runs/quality/<name>)")
    p.add_argument("--name", default=None, help="a label for this run in the JSON")
    p.add_argument("--json", default=None, help="also write the JSON to this file")
    args = p.parse_args(argv)
    for name in ("steps", "test_size", "threads"):
        if getattr(args, name) < 1:
            raise SystemExit(f"--{name.replace('_', '-')}={getattr(args, name)} must be a positive integer")
    if not os.path.isfile(args.config):
        raise SystemExit(f"recipe {args.config} does not exist")

    torch.set_num_threads(args.threads)
    tokens = args.fixed_k or args.tokens
    name = args.name or ("nested" if args.nested else f"k{tokens}" if tokens else "recipe")
    out = args.out or os.path.join(ROOT, "runs", "quality", name)
    cli_args = ["--config", args.config, f"--trainer.max_steps={args.steps}", f"--trainer.default_root_dir={out}",
                "--trainer.limit_val_batches=0", "--trainer.enable_progress_bar=false"]
    if tokens:
        cli_args.append(f"--model.init_args.tokenizer.num_tokens={tokens}")
    if args.nested:
        cli_args.append(f"--model.init_args.nested_dropout={args.nested}")
    elif args.fixed_k:
        cli_args.append("--model.init_args.nested_dropout=none")
    cli_args += extra

    cli = lightning_main(cli_args, run=False)
    module, data, trainer = cli.model, cli.datamodule, cli.trainer
    K = module.tokenizer.num_tokens
    log(f"q-fmnist-v1: {sum(p.numel() for p in module.tokenizer.parameters()):,} parameters, K={K}, "
        f"{args.steps} steps, threads {torch.get_num_threads()}, run folder {out}")
    start = time.perf_counter()
    trainer.fit(module, datamodule=data)
    wall = time.perf_counter() - start
    if trainer.global_step != args.steps:
        raise SystemExit(f"training stopped at step {trainer.global_step}, expected {args.steps}")

    data.setup("test")
    test = data.test_set
    n = min(args.test_size, len(test))
    images = torch.stack([test[i]["image"] for i in range(n)])
    nested = module.nested_dropout != "none"
    budgets = power_of_two_budgets(K) if nested else [K]
    result = {
        "benchmark": "quality_fmnist", "workload": "q-fmnist-v1", "name": name,
        "recipe": os.path.relpath(args.config, ROOT), "overrides": extra, "steps": args.steps,
        "batch_size": data.batch_size, "num_tokens": K, "nested_dropout": module.nested_dropout,
        "parameters": sum(p.numel() for p in module.tokenizer.parameters()),
        "train_wall_s": wall, "s_per_step": wall / args.steps, "threads": torch.get_num_threads(),
        "test_images": n, "torch": torch.__version__,
        "machine": f"{platform.machine()} {platform.processor() or ''} {os.cpu_count()} cpus".strip(),
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
    weights = {"raw": module.tokenizer}
    if module.ema_tokenizer is not None:
        weights["ema"] = module.ema_tokenizer
    for label, tok in weights.items():
        s = score(tok, images, budgets)
        result[label] = s
        log(f"{label}: " + ", ".join(f"k={k}: {v['psnr']:.2f} dB" for k, v in s["per_k"].items())
            + (f"; codebook usage {s['codebook_usage']:.1%}" if "codebook_usage" in s else ""))
    best = result["ema" if "ema" in weights else "raw"]
    result["psnr"] = best["per_k"][str(K)]["psnr"]
    result["ssim"] = best["per_k"][str(K)]["ssim"]
    result["codebook_usage"] = best.get("codebook_usage")
    line = json.dumps(result)
    if args.json:
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        with open(args.json, "w") as f:
            f.write(line + "\n")
    print(line)
    return result


if __name__ == "__main__":
    main()
