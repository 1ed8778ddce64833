"""Fréchet distances between image sets: Inception FID and FID in the feature space of any image model.

A Fréchet distance fits a Gaussian N(mu, Sigma) to the features of each image set and reports

    d^2 = ||mu_1 - mu_2||^2 + Tr(Sigma_1 + Sigma_2 - 2 (Sigma_1 Sigma_2)^(1/2)).

- :func:`frechet_distance` computes it in float64 from (mu, Sigma) pairs; it is the shared function for
  every place that does not go through torchmetrics (cached statistics, tests, generator code).
- :class:`InceptionFeatures` is the standard FID network: torchmetrics' ``NoTrainInceptionV3`` with the
  torch-fidelity / pytorch-fid weights converted from TensorFlow's 2015-12-05 Inception, read from a local file
  (never downloaded).
- :class:`FrechetPerBudget` keeps one torchmetrics ``FrechetInceptionDistance`` per budget (or per sample set)
  over one shared feature network: the real images' statistics are accumulated once (or read from
  :class:`RealStatsCache`) and shared, and the per-budget statistics sync across processes through torchmetrics.
"""
from __future__ import annotations

import hashlib
import json
import os

import torch
from torch import nn
from torchmetrics.image.fid import FrechetInceptionDistance

from ..weights import error_summary

INCEPTION_FILE = "weights-inception-2015-12-05-6726825d.pth"
INCEPTION_URL = f"https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/{INCEPTION_FILE}"


# ---------------------------------------------------------------------------------------------- the distance
def gaussian_stats(features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """features (N, D) -> (mu (D,), Sigma (D, D)) in float64, Sigma unbiased (divided by N - 1)."""
    if features.dim() != 2 or features.shape[0] < 2:
        raise ValueError(f"features must have shape (N, D) with N >= 2, got {tuple(features.shape)}")
    f = features.double()
    return f.mean(0), torch.cov(f.T)


def frechet_distance(mu1, sigma1, mu2, sigma2) -> float:
    """Fréchet distance between N(mu1, sigma1) and N(mu2, sigma2), computed in float64.

    Tr((S1 S2)^(1/2)) is taken as Tr((S1^(1/2) S2 S1^(1/2))^(1/2)), a symmetric PSD matrix, so it needs only
    symmetric eigendecompositions (no complex parts, no scipy.linalg.sqrtm iterations); tiny negative
    eigenvalues from rounding are clamped to 0. Accepts numpy arrays or tensors.
    """
    mu1, mu2, sigma1, sigma2 = (torch.as_tensor(a, dtype=torch.float64) for a in (mu1, mu2, sigma1, sigma2))
    d = mu1.shape[-1]
    if mu1.shape != (d,) or mu2.shape != (d,) or sigma1.shape != (d, d) or sigma2.shape != (d, d):
        raise ValueError(
            f"expected mu (D,) and sigma (D, D) for both sets, got {tuple(mu1.shape)}, {tuple(sigma1.shape)}, "
            f"{tuple(mu2.shape)}, {tuple(sigma2.shape)}"
        )
    for name, a in (("mu1", mu1), ("sigma1", sigma1), ("mu2", mu2), ("sigma2", sigma2)):
        if not torch.isfinite(a).all():
            raise ValueError(f"{name} holds non-finite values (NaN or inf); the features are broken")
    w, v = torch.linalg.eigh((sigma1 + sigma1.T) / 2)
    sqrt1 = (v * w.clamp(min=0).sqrt()) @ v.T  # S1^(1/2)
    m = sqrt1 @ sigma2 @ sqrt1
    tr_covmean = torch.linalg.eigvalsh((m + m.T) / 2).clamp(min=0).sqrt().sum()
    value = (mu1 - mu2).square().sum() + sigma1.trace() + sigma2.trace() - 2 * tr_covmean
    return float(value)


# ---------------------------------------------------------------------------------------------- Inception
def find_inception_weights(path: str | None = None) -> str:
    """The Inception weight file: ``path`` if given, else the torch hub cache; one clear error otherwise."""
    cached = os.path.join(torch.hub.get_dir(), "checkpoints", INCEPTION_FILE)
    if path is not None:
        if not os.path.isfile(path):
            raise FileNotFoundError(
                f"--inception-weights {path} does not exist; it must be the torch-fidelity Inception file "
                f"{INCEPTION_FILE} ({INCEPTION_URL})"
            )
        return path
    if os.path.isfile(cached):
        return cached
    raise FileNotFoundError(
        f"FID needs the standard Inception weights (torch-fidelity / pytorch-fid, TensorFlow 2015-12-05) and tokgen "
        f"never downloads them: put {INCEPTION_FILE} (from {INCEPTION_URL}) at {cached}, or pass "
        f"--inception-weights FILE; for a Fréchet distance without Inception use --feature-extractor "
        f"(train one with `tokgen train-features`)"
    )


def file_sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


class InceptionFeatures(nn.Module):
    """uint8 images (B, 1 or 3, H, W) -> (B, 2048) pool3 features of the 2015-12-05 Inception.

    Protocol (torch-fidelity's): grey is replicated to RGB, images are resized to 299x299 with TensorFlow 1's
    bilinear resize (no antialiasing; torchmetrics ``antialias=False``), scaled by (x - 128) / 128.
    """

    metric_name = "fid"
    num_features = 2048
    protocol = "inception-v3-compat 2015-12-05 pool3 (2048), uint8 input, TF1 bilinear resize to 299, no antialias"

    def __init__(self, weights_path: str | None = None):
        super().__init__()
        from torchmetrics.image.fid import NoTrainInceptionV3

        path = find_inception_weights(weights_path)
        try:  # tensors only: the file cannot run code (torch-fidelity itself loads it with weights_only=False)
            torch.load(path, map_location="cpu", weights_only=True)
        except Exception as err:
            raise ValueError(
                f"Inception weights {path} are corrupt or not a plain state dict ({type(err).__name__}); expected "
                f"{INCEPTION_FILE} from {INCEPTION_URL}"
            ) from None
        try:
            self.net = NoTrainInceptionV3("inception-v3-compat", ["2048"], path, antialias=False)
        except RuntimeError as err:
            raise ValueError(
                f"Inception weights {path} do not fit the FID Inception network ({error_summary(err)}); "
                f"expected {INCEPTION_FILE} from {INCEPTION_URL}"
            ) from None
        self.fingerprint = file_sha256(path)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if images.shape[1] == 1:
            images = images.expand(-1, 3, -1, -1)
        return self.net(images)


# ---------------------------------------------------------------------------------------------- accumulation
REAL_STATES = ("real_features_sum", "real_features_cov_sum", "real_features_num_samples")


def get_real_stats(metric: FrechetInceptionDistance) -> dict[str, torch.Tensor]:
    """The real-image sufficient statistics of a torchmetrics FID: feature sum, sum of outer products, count."""
    return {name: getattr(metric, name).detach().clone().cpu() for name in REAL_STATES}


def set_real_stats(metric: FrechetInceptionDistance, stats: dict[str, torch.Tensor]) -> None:
    for name in REAL_STATES:
        current = getattr(metric, name)
        setattr(metric, name, stats[name].to(device=current.device, dtype=current.dtype).clone())


def stats_to_gaussian(stats: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Sufficient statistics (sum, outer-product sum, n) -> (mu, unbiased Sigma) in float64."""
    n = int(stats["real_features_num_samples"])
    mu = stats["real_features_sum"].double() / n
    sigma = (stats["real_features_cov_sum"].double() - n * torch.outer(mu, mu)) / (n - 1)
    return mu, sigma


class RealStatsCache:
    """Real-image feature statistics on disk, one file per (data set, extractor, N, image size, protocol) key.

    A file holds the float64 sums that torchmetrics' FID keeps (so cached and fresh statistics are the same
    numbers) and the full key, which is checked on load.
    """

    VERSION = 1

    def __init__(self, folder: str):
        self.folder = folder

    def path(self, key: dict) -> str:
        text = json.dumps({"version": self.VERSION, **key}, sort_keys=True, default=str)
        name = f"{key.get('metric', 'stats')}_{hashlib.sha256(text.encode()).hexdigest()[:16]}.pt"
        return os.path.join(self.folder, name)

    def load(self, key: dict) -> dict[str, torch.Tensor] | None:
        path = self.path(key)
        if not os.path.isfile(path):
            return None
        try:
            data = torch.load(path, map_location="cpu", weights_only=True)
        except Exception:
            return None  # a broken cache file is recomputed and overwritten
        if data.get("key") != json.dumps({"version": self.VERSION, **key}, sort_keys=True, default=str):
            return None
        return {name: data[name] for name in REAL_STATES}

    def save(self, key: dict, stats: dict[str, torch.Tensor]) -> str:
        path = self.path(key)
        os.makedirs(self.folder, exist_ok=True)
        tmp = f"{path}.tmp{os.getpid()}"
        torch.save({"key": json.dumps({"version": self.VERSION, **key}, sort_keys=True, default=str), **stats}, tmp)
        os.replace(tmp, path)
        return path


def default_cache_dir() -> str:
    root = os.environ.get("TOKGEN_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"), "tokgen"
    )
    return os.path.join(root, "fid_stats")


class FrechetPerBudget:
    """Fréchet distance of several image sets (budgets k, or sample folders) against one real set.

    Holds one torchmetrics ``FrechetInceptionDistance`` per label, all sharing ``extractor`` (an ``nn.Module``
    with ``metric_name``, ``num_features`` and ``fingerprint`` taking uint8 (B, C, H, W)). Real images are
    featurised once, into the first label's metric, and their statistics are copied to the others at compute
    time; with a cache hit they are not featurised at all.
    """

    def __init__(self, extractor: nn.Module, labels: list[str], data_key: dict, cache: RealStatsCache | None = None):
        self.name = extractor.metric_name
        self.labels = list(labels)
        self.metrics = {label: FrechetInceptionDistance(feature=extractor, reset_real_features=False) for label in labels}
        self.key = {"metric": self.name, "extractor": extractor.fingerprint,
                    "protocol": getattr(extractor, "protocol", ""), "data": data_key}
        self.cache = cache
        self.cache_path = cache.path(self.key) if cache is not None else None
        self.cached = cache.load(self.key) if cache is not None else None
        if self.cached is not None:
            # Under DDP each rank's states are summed at compute: the cached totals go to rank 0 only.
            rank = torch.distributed.get_rank() if torch.distributed.is_available() and torch.distributed.is_initialized() else 0
            stats = self.cached if rank == 0 else {k: torch.zeros_like(v) for k, v in self.cached.items()}
            for metric in self.metrics.values():
                set_real_stats(metric, stats)

    @property
    def needs_real(self) -> bool:
        return self.cached is None

    def to(self, device) -> "FrechetPerBudget":
        for metric in self.metrics.values():
            metric.to(device)
        return self

    def update_real(self, images_uint8: torch.Tensor) -> None:
        if self.cached is None:
            self.metrics[self.labels[0]].update(images_uint8, real=True)

    def update(self, label: str, images_uint8: torch.Tensor) -> None:
        self.metrics[label].update(images_uint8, real=False)

    def compute(self) -> dict[str, float]:
        if self.cached is None:
            first = self.metrics[self.labels[0]]
            stats = get_real_stats(first)  # this process's sums; torchmetrics adds the processes up at compute
            for label in self.labels[1:]:
                set_real_stats(self.metrics[label], stats)
            if self.cache is not None:
                distributed = torch.distributed.is_available() and torch.distributed.is_initialized()
                totals = stats
                if distributed:
                    totals = {k: v.to(first.real_features_sum.device) for k, v in stats.items()}
                    for value in totals.values():
                        torch.distributed.all_reduce(value)
                if not distributed or torch.distributed.get_rank() == 0:
                    self.cache.save(self.key, {k: v.cpu() for k, v in totals.items()})
        return {label: float(metric.compute()) for label, metric in self.metrics.items()}
