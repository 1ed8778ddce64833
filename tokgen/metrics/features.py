"""Feature extractors for Fréchet distances outside Inception's domain (e.g. Fashion-MNIST): weights + config files.

File format: a safetensors file (tensors only, nothing in it runs) whose metadata entry ``tokgen_extractor`` is a JSON
object ``{"class": "FeatureNet", "config": {...}, "metadata": {...}}``. The loader builds the named class only when it
is in :data:`EXTRACTOR_CLASSES` (tokgen's own code) from ``config`` and loads the weights strictly (every key, no
other). The network's ``forward(x)`` takes float images (B, C, S, S) in [0, 1] and returns features (B, D); it does
its own normalisation. :class:`FeatureNet` (written by ``tokgen train-features``) also has ``classify(x) -> logits
(B, num_classes)`` (same input), to classify generated samples::

    net, metadata = load_feature_network("features_fmnist.safetensors")
    features = net(x)            # x: (B, 1, 32, 32) in [0, 1] -> (B, 128)
    logits = net.classify(x)     # -> (B, 10)

TorchScript files (``torch.jit.save``, metadata in the extra file ``tokgen_extractor.json``) run code stored in the
file when loaded and called, so they are refused unless the caller trusts them (``--trust-torchscript``, the recipe
key ``trust_torchscript``), and then loaded with a deprecation note.

Metadata keys (all optional): ``name`` (e.g. "fmnist"), ``metric_name`` (default ``fid_<name>``; never plain "fid",
which is reserved for Inception), ``input_size``, ``channels``, ``input_range`` ([0, 1]), ``normalisation``
(mean/std applied inside forward), ``feature_dim``, ``num_classes``, ``classes``, ``test_accuracy``, ``dataset``.

:class:`FeatureExtractor` wraps such a file for the evaluator: uint8 (B, C, H, W) -> /255 -> channels
adapted (RGB -> grey by the channel mean, grey -> RGB by replication) -> bilinear antialiased resize to
``input_size`` when the size differs -> forward.
"""
from __future__ import annotations

import json
import os
import re

import torch
import torch.nn.functional as F
from torch import nn

from ..weights import (
    check_file,
    error_summary,
    json_entry,
    load_state_strict,
    load_trusted_torchscript,
    read_safetensors,
    refuse_untrusted_torchscript,
    torch_archive_kind,
)
from .fid import file_sha256

METADATA_KEY = "tokgen_extractor"  # safetensors metadata entry: {"class", "config", "metadata"}
METADATA_FILE = "tokgen_extractor.json"  # the same metadata in a (trusted) TorchScript archive's extra files
TRUST_FLAG = "--trust-torchscript"


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
        # what the file stores to rebuild this network (JSON-able)
        self.config = {"channels": channels, "num_classes": num_classes, "width": width, "feature_dim": feature_dim,
                       "mean": [float(m) for m in mean], "std": [float(v) for v in std], "dropout": float(dropout)}
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

    def features(self, x: torch.Tensor) -> torch.Tensor:
        h = self.body((x - self.mean) / self.std)  # (B, 4w, H/8, W/8)
        return self.to_features(h.mean(dim=(2, 3)))  # (B, feature_dim)

    def classify(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.dropout(self.features(x)))


# The only classes an extractor file may name: tokgen builds them from the file's config, the file holds only tensors.
EXTRACTOR_CLASSES: dict[str, type[nn.Module]] = {"FeatureNet": FeatureNet}


def save_feature_extractor(model: nn.Module, path: str, metadata: dict) -> None:
    """Write ``model`` (an instance of a class in :data:`EXTRACTOR_CLASSES`, with its ``config``) as safetensors
    weights + ``{"class", "config", "metadata"}``; atomic (a temporary file renamed over ``path``)."""
    from safetensors.torch import save_file

    name = type(model).__name__
    if EXTRACTOR_CLASSES.get(name) is not type(model):
        raise ValueError(f"cannot save a {name} as a feature extractor; accepted classes: "
                         f"{', '.join(EXTRACTOR_CLASSES)}")
    metric_name(metadata, path)  # validate the name before writing
    header = json.dumps({"class": name, "config": model.config, "metadata": metadata})
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = f"{path}.tmp{os.getpid()}"
    try:
        save_file(state, tmp, metadata={METADATA_KEY: header})
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def load_feature_network(path: str, *, trust_torchscript: bool = False, trust_hint: str = TRUST_FLAG,
                         what: str = "feature extractor") -> tuple[nn.Module, dict]:
    """(network in eval mode on CPU, metadata dict) of an extractor file, without running anything from it.

    A safetensors file must name a class in :data:`EXTRACTOR_CLASSES`; it is built from the stored config and its
    weights are loaded strictly. A TorchScript file is refused (ValueError naming the file and ``trust_hint``)
    unless ``trust_torchscript``; then it is loaded with a deprecation note. ``what`` names the file's role in
    messages (e.g. "--classifier", "REPA feature network")."""
    check_file(path, what, "expected a tokgen extractor file (.safetensors), e.g. written by "
               "`tokgen train-features --data fmnist --out features_fmnist.safetensors`")
    kind = torch_archive_kind(path)
    if kind == "pickle":
        raise ValueError(f"{what} {path} is a PyTorch pickle archive (torch.save), not a feature extractor; expected "
                         "a tokgen extractor file (.safetensors) written by `tokgen train-features`")
    if kind == "torchscript":
        if not trust_torchscript:
            refuse_untrusted_torchscript(path, what, trust_hint)
        net, extra = load_trusted_torchscript(path, what, trust_hint, (METADATA_FILE,))
        try:
            metadata = json.loads(extra[METADATA_FILE]) if extra[METADATA_FILE] else {}
        except json.JSONDecodeError:
            raise ValueError(f"{what} {path}: its {METADATA_FILE} entry is not valid JSON") from None
        return net, metadata
    tensors, header = read_safetensors(path, what)
    entry = json_entry(header, METADATA_KEY, path, what)
    name = entry.get("class")
    if not isinstance(name, str) or name not in EXTRACTOR_CLASSES:
        raise ValueError(f"{what} {path} names class {name!r}, which is not an allowed extractor class; "
                         f"accepted: {', '.join(EXTRACTOR_CLASSES)}")
    config, metadata = entry.get("config", {}), entry.get("metadata", {})
    if not isinstance(config, dict) or not isinstance(metadata, dict):
        raise ValueError(f"{what} {path}: 'config' and 'metadata' in its {METADATA_KEY!r} entry must be JSON objects")
    try:
        with torch.device("meta"):  # shapes only: memory comes from the file's tensors, whatever the config says
            net = EXTRACTOR_CLASSES[name](**config)
    except (TypeError, ValueError) as err:
        raise ValueError(f"{what} {path}: its config {json.dumps(config)} does not build a {name} ({err})") from None
    load_state_strict(net, tensors, f"{what} {path}", assign=True)
    if any(t.is_meta for t in (*net.parameters(), *net.buffers())):
        raise ValueError(f"{what} {path}: {name} has tensors that the file cannot fill")
    return net.eval(), metadata


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
    """An extractor file (see :func:`load_feature_network`) as a uint8-in, features-out module for
    :class:`~tokgen.metrics.fid.FrechetPerBudget`.

    ``probe`` = (channels, size) of the images it will see: one forward on zeros (of a tokgen class, or of a
    TorchScript file the user trusted) checks that the model accepts them and gives ``num_features``.
    """

    def __init__(self, path: str, probe: tuple[int, int] = (3, 32), trust_torchscript: bool = False,
                 trust_hint: str = TRUST_FLAG, what: str = "feature extractor"):
        super().__init__()
        self.net, self.metadata = load_feature_network(path, trust_torchscript=trust_torchscript,
                                                       trust_hint=trust_hint, what=what)
        self.path = path
        self.metric_name = metric_name(self.metadata, path)
        self.input_size = self.metadata.get("input_size")
        self.channels = self.metadata.get("channels")
        if self.channels not in (None, 1, 3):
            raise ValueError(f"{what} {path}: metadata channels={self.channels!r}; accepted: 1 or 3")
        self.fingerprint = file_sha256(path)
        self.protocol = (f"{self.metric_name}: uint8 -> [0, 1], channels -> {self.channels or 'as given'}, "
                         f"bilinear antialiased resize to {self.input_size or 'native size'}")
        channels, size = probe
        try:
            with torch.no_grad():
                out = self(torch.zeros(2, channels, size, size, dtype=torch.uint8))
        except Exception as err:
            raise ValueError(
                f"{what} {path} fails on {channels}-channel {size}x{size} images "
                f"({error_summary(err)})"
            ) from None
        if out.dim() != 2:
            raise ValueError(f"{what} {path} must return features (B, D), got shape {tuple(out.shape)}")
        self.num_features = int(out.shape[1])

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = images.float() / 255  # (B, C, H, W) in [0, 1]
        if self.channels is not None and x.shape[1] != self.channels:
            x = x.mean(1, keepdim=True) if self.channels == 1 else x.expand(-1, self.channels, -1, -1)
        if self.input_size is not None and tuple(x.shape[-2:]) != (self.input_size, self.input_size):
            x = F.interpolate(x, size=(self.input_size, self.input_size), mode="bilinear", antialias=True,
                              align_corners=False)
        return self.net(x).float().flatten(1)
