"""``tokgen train-features``: train a small CNN classifier on a labelled data set and save it as a feature
extractor (safetensors weights + config), so Fréchet distances can be computed offline in domains where Inception is
meaningless.

    tokgen train-features --data fmnist --out features_fmnist.safetensors   # ~2 epochs, a few CPU minutes

The network (``FeatureNet``) maps images (B, C, S, S) in [0, 1] to penultimate features (B, D) with ``forward(x)``;
its ``classify(x)`` gives class logits (B, num_classes), for classifying generated samples. Metadata (name,
metric name, input size, channels, normalisation, classes, test accuracy) is stored in the file; see
``tokgen.metrics.features``. Use it with ``tokgen eval --feature-extractor features_fmnist.safetensors``.
"""
from __future__ import annotations

import argparse
import math
import os
import time

import torch
import torch.nn.functional as F

from ..data.base import check_int, check_number
from ..metrics.datasets import DATA_ACCEPTED, build_data
from ..metrics.features import FeatureNet, metric_name, save_feature_extractor
from .checks import CommandParser, check_output_path

FMNIST_CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]


def build_parser() -> argparse.ArgumentParser:
    p = CommandParser(prog="tokgen train-features", description=__doc__.split("\n\n")[0])
    p.add_argument("--data", required=True, help=f"labelled images: {DATA_ACCEPTED}")
    p.add_argument("--out", required=True,
                   help="extractor file to write (safetensors weights + config), e.g. features_fmnist.safetensors")
    p.add_argument("--name", help="domain name; the metric is reported as fid_<name> (default: from --data)")
    p.add_argument("--data-root", default="data", help="root folder of fmnist (default ./data)")
    p.add_argument("--image-size", type=int, default=32, help="input side S (default 32)")
    p.add_argument("--channels", type=int, choices=(1, 3), help="input channels (default: 1 for fmnist, else 3)")
    p.add_argument("--epochs", type=float, default=2.0, help="passes over the training split (default 2)")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--lr", type=float, default=3e-3, help="peak AdamW learning rate (one-cycle schedule)")
    p.add_argument("--width", type=int, default=32, help="channels of the first conv block (x2, x4 after)")
    p.add_argument("--feature-dim", type=int, default=128, help="dimension of the exported features")
    p.add_argument("--max-train-images", type=int, help="use only the first N training images (quick runs)")
    p.add_argument("--max-test-images", type=int, help="measure accuracy on the first N test images")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--num-workers", type=int, default=0)
    p.add_argument("--no-progress", action="store_true")
    return p


def default_name(spec: str) -> str:
    if spec.startswith("folder:"):
        return os.path.basename(os.path.normpath(spec[len("folder:"):])) or "folder"
    return os.path.splitext(os.path.basename(spec))[0]


def channel_stats(loader, batches: int = 20) -> tuple[list[float], list[float]]:
    """Per-channel mean/std of [0, 1] images over the first batches (the extractor's built-in normalisation)."""
    total, total_sq, count = 0.0, 0.0, 0
    for i, batch in enumerate(loader):
        x = (batch["image"].double() + 1) / 2  # (B, C, H, W)
        total = total + x.sum(dim=(0, 2, 3))
        total_sq = total_sq + x.square().sum(dim=(0, 2, 3))
        count += x.numel() // x.shape[1]
        if i + 1 >= batches:
            break
    mean = total / count
    std = (total_sq / count - mean.square()).clamp(min=1e-8).sqrt()
    return [round(float(m), 5) for m in mean], [round(float(s), 5) for s in std]


@torch.no_grad()
def accuracy(model: FeatureNet, loader) -> float:
    model.eval()
    correct = total = 0
    for batch in loader:
        logits = model.classify((batch["image"] + 1) / 2)
        correct += int((logits.argmax(1) == batch["label"]).sum())
        total += len(batch["label"])
    return correct / max(total, 1)


def main(argv: list[str]) -> None:
    args = build_parser().parse_args(argv)
    for name in ("batch_size", "width", "feature_dim"):
        if getattr(args, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be a positive integer, got {getattr(args, name)}")
    check_number("--epochs", args.epochs, 0, low_open=True)
    check_number("--lr", args.lr, 0, low_open=True)
    check_int("--num-workers", args.num_workers, minimum=0)
    check_output_path("--out", args.out)
    name = args.name or default_name(args.data)
    metadata = {"name": name}
    metric = metric_name(metadata, args.out)  # fail on a reserved name before training
    channels = args.channels or (1 if args.data == "fmnist" else None)
    torch.manual_seed(args.seed)

    train = build_data(args.data, split="train", image_size=args.image_size, channels=channels,
                       num_images=args.max_train_images, labelled=True, root=args.data_root)
    test = build_data(args.data, split="test", image_size=args.image_size, channels=channels,
                      num_images=args.max_test_images, labelled=True, root=args.data_root)
    if not train.num_classes or train.num_classes < 2:
        raise ValueError(f"--data {args.data} has {train.num_classes} classes; training a classifier needs >= 2 labelled classes")
    train_loader = train.loader(args.batch_size, args.num_workers, shuffle=True, seed=args.seed)
    test_loader = test.loader(256, args.num_workers)
    mean, std = channel_stats(train_loader)
    model = FeatureNet(train.channels, train.num_classes, args.width, args.feature_dim, mean, std)

    steps = max(1, math.ceil(args.epochs * len(train_loader)))
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=5e-4)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=args.lr, total_steps=steps, pct_start=0.15)
    print(f"training a {sum(p.numel() for p in model.parameters()):,}-parameter CNN on {len(train)} {args.data} "
          f"images ({train.channels}x{train.image_size}x{train.image_size}, {train.num_classes} classes) for {steps} steps")
    step, start, model_loss = 0, time.time(), float("nan")
    model.train()
    while step < steps:
        for batch in train_loader:
            x = (batch["image"] + 1) / 2
            loss = F.cross_entropy(model.classify(x), batch["label"])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            step += 1
            model_loss = loss.item() if math.isnan(model_loss) else 0.98 * model_loss + 0.02 * loss.item()
            if not args.no_progress and (step % 100 == 0 or step == steps):
                print(f"step {step}/{steps}  loss {model_loss:.4f}  {time.time() - start:.0f}s", flush=True)
            if step >= steps:
                break
    acc = accuracy(model, test_loader)
    metadata.update({
        "metric_name": metric,
        "dataset": args.data,
        "input_size": train.image_size,
        "channels": train.channels,
        "input_range": [0.0, 1.0],
        "normalisation": {"mean": mean, "std": std, "applied": "inside forward: (x - mean) / std"},
        "feature_dim": args.feature_dim,
        "num_classes": train.num_classes,
        "classes": FMNIST_CLASSES if args.data == "fmnist" else None,
        "test_accuracy": round(acc, 5),
        "test_images": len(test),
        "train_images": len(train),
        "train_steps": steps,
        "methods": {"forward": "(B, C, S, S) in [0, 1] -> features (B, feature_dim)",
                    "classify": "(B, C, S, S) in [0, 1] -> logits (B, num_classes)"},
    })
    save_feature_extractor(model, args.out, metadata)
    print(f"test accuracy {acc:.4f} on {len(test)} images ({time.time() - start:.0f}s); wrote {args.out} "
          f"(reported as {metric})")
