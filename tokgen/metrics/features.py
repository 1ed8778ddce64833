"""Feature extractors for Fréchet distances outside Inception's domain (e.g. Fashion-MNIST), as TorchScript files.

File format: a TorchScript module saved with ``torch.jit.save`` plus a JSON entry ``tokgen_extractor.json`` in
its extra files. The module's ``forward(x)`` takes float images (B, C, S, S) in [0, 1] and returns features
(B, D); it does its own normalisation. Modules written by ``tokgen train-features`` also export
``classify(x) -> logits (B, num_classes)`` (same input), to classify generated samples::

    net = torch.jit.load("features_fmnist.pt")
    features = net(x)            # x: (B, 1, 32, 32) in [0, 1] -> (B, 128)
    logits = net.classify(x)     # -> (B, 10)

Metadata keys (all optional for foreign TorchScript models): ``name`` (e.g. "fmnist"), ``metric_name``
(default ``fid_<name>``; never plain "fid", which is reserved for Inception), ``input_size``, ``channels``,
``input_range`` ([0, 1]), ``normalisation`` (mean/std applied inside forward), ``feature_dim``,
``num_classes``, ``classes``, ``test_accuracy``, ``dataset``.

:class:`FeatureExtractor` wraps such a file for the evaluator: uint8 (B, C, H, W) -> /255 -> channels
adapted (RGB -> grey by the channel mean, grey -> RGB by replication) -> bilinear antialiased resize to
``input_size`` when the size differs -> forward.
"""
from __future__ import annotations

import json
import os
import re
import warnings

import torch
import torch.nn.functional as F
from torch import nn

from .fid import file_sha256

METADATA_FILE = "tokgen_extractor.json"


class FeatureNet(nn.Module):
    """Small CNN classifier for 32x32-ish images: 3 conv blocks (conv-BN-ReLU-maxpool), global average pool,
    a ``feature_dim`` ReLU layer (the features) and a linear classifier.

    forward(x) and features(x): x (B, C, H, W) in [0, 1] -> (B, feature_dim); classify(x) -> (B, num_classes).
    """

    def __init__(self, channels: int = 1, num_classes: int = 10, width: int = 32, feature_dim: int = 128,
                 mean: list[float] | None = None, std: list[float] | None = None, dropout: float = 0.2):
        super().__init__()
        mean = [0.5] * channels if mean is None else list(mean)
        std = [0.5] * channels if std is None else list(std)
        if len(mean) != channels or len(std) != channels:
            raise ValueError(f"mean and std need {channels} values, got {mean} and {std}")
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, channels, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, channels, 1, 1))
        layers: list[nn.Module] = []
        c = channels
        for w in (width, 2 * width, 4 * width):
            layers += [nn.Conv2d(c, w, 3, padding=1, bias=False), nn.BatchNorm2d(w), nn.ReLU(inplace=True), nn.MaxPool2d(2)]
            c = w
        self.body = nn.Sequential(*layers)
        self.to_features = nn.Sequential(nn.Linear(c, feature_dim), nn.ReLU(inplace=True))
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(feature_dim, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)

    @torch.jit.export
    def features(self, x: torch.Tensor) -> torch.Tensor:
        h = self.body((x - self.mean) / self.std)  # (B, 4w, H/8, W/8)
        return self.to_features(h.mean(dim=(2, 3)))  # (B, feature_dim)

    @torch.jit.export
    def classify(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.dropout(self.features(x)))


def export_feature_extractor(model: nn.Module, path: str, metadata: dict) -> None:
    """Script ``model`` (eval mode, CPU) and save it with ``metadata`` as the tokgen extractor JSON."""
    metric_name(metadata, path)  # validate the name before writing
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = f"{path}.tmp{os.getpid()}"
    with warnings.catch_warnings():  # torch.jit is deprecated in favour of torch.export, but still the portable format
        warnings.simplefilter("ignore", FutureWarning)
        scripted = torch.jit.script(model.eval().cpu())
        torch.jit.save(scripted, tmp, _extra_files={METADATA_FILE: json.dumps(metadata, indent=1)})
    os.replace(tmp, path)


def metric_name(metadata: dict, path: str) -> str:
    """Report name of the Fréchet distance in an extractor's feature space: ``metric_name``, else ``fid_<name>``,
    else ``fid_<file stem>``; lower-case [a-z0-9_]; never plain "fid" (reserved for Inception)."""
    name = metadata.get("metric_name")
    if not name:
        base = metadata.get("name") or os.path.splitext(os.path.basename(path))[0]
        name = base if str(base).lower().startswith("fid_") else f"fid_{base}"
    name = re.sub(r"[^a-z0-9_]+", "_", str(name).lower()).strip("_")
    if name in ("", "fid", "fid_inception"):
        raise ValueError(
            f"feature extractor {path} would be reported as {name!r}, a name reserved for Inception FID; "
            "set its metadata 'name' to the domain, e.g. 'fmnist' (reported as fid_fmnist)"
        )
    return name


class FeatureExtractor(nn.Module):
    """A TorchScript extractor file as a uint8-in, features-out module for :class:`~tokgen.metrics.fid.FrechetPerBudget`.

    ``probe`` = (channels, size) of the images it will see: one forward on zeros checks that the model accepts
    them and gives ``num_features``.
    """

    def __init__(self, path: str, probe: tuple[int, int] = (3, 32)):
        super().__init__()
        if not os.path.isfile(path):
            raise FileNotFoundError(
                f"feature extractor {path} not found; expected a TorchScript file, e.g. written by "
                "`tokgen train-features --data fmnist --out features_fmnist.pt`"
            )
        extra = {METADATA_FILE: ""}
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", FutureWarning)
                self.net = torch.jit.load(path, map_location="cpu", _extra_files=extra).eval()
        except Exception as err:
            raise ValueError(
                f"feature extractor {path} is not a TorchScript file ({type(err).__name__}: "
                f"{str(err).splitlines()[0][:200] if str(err) else ''}); save one with torch.jit.save"
            ) from None
        try:
            self.metadata = json.loads(extra[METADATA_FILE]) if extra[METADATA_FILE] else {}
        except json.JSONDecodeError:
            raise ValueError(f"feature extractor {path}: its {METADATA_FILE} entry is not valid JSON") from None
        self.path = path
        self.metric_name = metric_name(self.metadata, path)
        self.input_size = self.metadata.get("input_size")
        self.channels = self.metadata.get("channels")
        if self.channels not in (None, 1, 3):
            raise ValueError(f"feature extractor {path}: metadata channels={self.channels!r}; accepted: 1 or 3")
        self.fingerprint = file_sha256(path)
        self.protocol = (f"{self.metric_name}: uint8 -> [0, 1], channels -> {self.channels or 'as given'}, "
                         f"bilinear antialiased resize to {self.input_size or 'native size'}")
        channels, size = probe
        try:
            with torch.no_grad():
                out = self(torch.zeros(2, channels, size, size, dtype=torch.uint8))
        except Exception as err:
            raise ValueError(
                f"feature extractor {path} fails on {channels}-channel {size}x{size} images "
                f"({type(err).__name__}: {str(err).splitlines()[0][:200] if str(err) else ''})"
            ) from None
        if out.dim() != 2:
            raise ValueError(f"feature extractor {path} must return features (B, D), got shape {tuple(out.shape)}")
        self.num_features = int(out.shape[1])

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = images.float() / 255  # (B, C, H, W) in [0, 1]
        if self.channels is not None and x.shape[1] != self.channels:
            x = x.mean(1, keepdim=True) if self.channels == 1 else x.expand(-1, self.channels, -1, -1)
        if self.input_size is not None and tuple(x.shape[-2:]) != (self.input_size, self.input_size):
            x = F.interpolate(x, size=(self.input_size, self.input_size), mode="bilinear", antialias=True,
                              align_corners=False)
        return self.net(x).float().flatten(1)
