"""Fréchet distances: the float64 formula against scipy, the torchmetrics path with a stand-in extractor, the
real-statistics cache, the Inception loading rules and TorchScript extractors.

Every feature network here is an honest stand-in (a fixed random projection of pixels, an untrained CNN or a
randomly initialised Inception): the tests check the arithmetic and the plumbing, not perceptual quality.
"""
import json

import numpy as np
import pytest
import scipy.linalg
import torch
from torch import nn

from tokgen.metrics import (
    FeatureExtractor,
    FeatureNet,
    FrechetPerBudget,
    InceptionFeatures,
    RealStatsCache,
    frechet_distance,
    gaussian_stats,
    save_feature_extractor,
)
from tokgen.metrics.fid import INCEPTION_FILE


def scipy_frechet(f1: np.ndarray, f2: np.ndarray) -> float:
    """The textbook computation (pytorch-fid's): numpy statistics and scipy.linalg.sqrtm."""
    mu1, mu2 = f1.mean(0), f2.mean(0)
    s1, s2 = np.cov(f1, rowvar=False), np.cov(f2, rowvar=False)
    covmean = scipy.linalg.sqrtm(s1 @ s2).real
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean))


class RandomProjectionStandIn(nn.Module):
    """Stand-in extractor (not a perceptual network): a fixed random linear projection of the uint8 pixels."""

    metric_name = "fid_standin"
    fingerprint = "random-projection-seed0"
    protocol = "stand-in"

    def __init__(self, in_dim: int, num_features: int = 16):
        super().__init__()
        self.num_features = num_features
        self.register_buffer("proj", torch.randn(in_dim, num_features, generator=torch.Generator().manual_seed(0)))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return (images.float().flatten(1) / 255) @ self.proj


def random_images(n: int, seed: int, shift: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    base = torch.randint(40, 200, (n, 3, 8, 8), generator=g)
    return (base + shift).clamp(0, 255).to(torch.uint8)


def test_frechet_distance_matches_scipy():
    rng = np.random.default_rng(0)
    f1 = rng.normal(size=(400, 12))
    f2 = rng.normal(size=(300, 12)) @ rng.normal(size=(12, 12)) * 0.5 + 0.3
    expected = scipy_frechet(f1, f2)
    got = frechet_distance(*gaussian_stats(torch.from_numpy(f1)), *gaussian_stats(torch.from_numpy(f2)))
    assert expected > 1.0
    assert got == pytest.approx(expected, rel=1e-3)
    # identical statistics -> 0, even with a singular covariance (more dimensions than samples)
    few = torch.randn(5, 12, dtype=torch.float64)
    mu, sigma = gaussian_stats(few)
    assert abs(frechet_distance(mu, sigma, mu, sigma)) < 1e-6 * float(sigma.trace())
    with pytest.raises(ValueError, match="expected mu"):
        frechet_distance(np.zeros(3), np.eye(3), np.zeros(4), np.eye(4))


def test_torchmetrics_path_self_zero_shift_larger_and_matches_scipy(tmp_path):
    extractor = RandomProjectionStandIn(3 * 8 * 8)
    real, same, shifted = random_images(256, 0), random_images(256, 0), random_images(256, 1, shift=40)
    other = random_images(256, 2)  # same distribution, other draws
    fd = FrechetPerBudget(extractor, ["same", "other", "shifted"], {"test": 1}, RealStatsCache(str(tmp_path)))
    for chunk in range(0, 256, 64):  # streamed in batches like the evaluator
        fd.update_real(real[chunk:chunk + 64])
        fd.update("same", same[chunk:chunk + 64])
        fd.update("other", other[chunk:chunk + 64])
        fd.update("shifted", shifted[chunk:chunk + 64])
    result = fd.compute()
    scale = float(torch.cov(extractor(real).double().T).trace())
    assert abs(result["same"]) < 1e-6 * scale
    assert result["shifted"] > 10 * result["other"] > 0
    for label, fake in (("other", other), ("shifted", shifted)):
        expected = scipy_frechet(extractor(real).double().numpy(), extractor(fake).double().numpy())
        assert result[label] == pytest.approx(expected, rel=1e-3)

    # The real statistics went to the cache; a second evaluation reuses them and gives the same numbers.
    fd2 = FrechetPerBudget(extractor, ["shifted"], {"test": 1}, RealStatsCache(str(tmp_path)))
    assert not fd2.needs_real
    for chunk in range(0, 256, 64):
        fd2.update_real(real[chunk:chunk + 64])  # ignored on a cache hit
        fd2.update("shifted", shifted[chunk:chunk + 64])
    assert fd2.compute()["shifted"] == pytest.approx(result["shifted"], rel=1e-6)
    # another data key (e.g. another N) misses the cache
    assert FrechetPerBudget(extractor, ["x"], {"test": 2}, RealStatsCache(str(tmp_path))).needs_real


def test_absent_inception_weights_is_one_clear_error(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    with pytest.raises(FileNotFoundError) as err:
        InceptionFeatures()
    message = str(err.value)
    assert INCEPTION_FILE in message and str(tmp_path / "hub" / "checkpoints") in message
    assert "--inception-weights" in message and "never downloads" in message
    with pytest.raises(FileNotFoundError, match="does not exist"):
        InceptionFeatures(str(tmp_path / "missing.pth"))
    bad = tmp_path / "bad.pth"
    bad.write_bytes(b"not a state dict")
    with pytest.raises(ValueError, match="corrupt"):
        InceptionFeatures(str(bad))


def test_inception_loading_path_with_random_weights(tmp_path, monkeypatch):
    """Stand-in: a randomly initialised Inception saved as a weight file goes through the real loading path
    (tensors-only check, torchmetrics' NoTrainInceptionV3, TF1 resize to 299). It measures nothing."""
    import torch_fidelity.feature_extractor_inceptionv3 as tf_inception
    from torchmetrics.image.fid import NoTrainInceptionV3

    with monkeypatch.context() as patch:  # build the network without any weights, to save random ones
        patch.setattr(tf_inception, "load_state_dict_from_url", lambda *a, **k: {})
        patch.setattr(tf_inception.FeatureExtractorInceptionV3, "load_state_dict", lambda self, *a, **k: None)
        torch.manual_seed(0)
        state = NoTrainInceptionV3("inception-v3-compat", ["2048"]).state_dict()
    path = tmp_path / INCEPTION_FILE
    torch.save(state, path)
    inception = InceptionFeatures(str(path))
    grey = random_images(3, 0)[:, :1]  # (3, 1, 8, 8): grey is replicated to RGB
    with torch.no_grad():
        features = inception(grey)
    assert features.shape == (3, 2048) and torch.isfinite(features).all()
    assert inception.metric_name == "fid" and len(inception.fingerprint) == 64


def test_extractor_file_metadata_name_and_classify(tmp_path):
    """An untrained FeatureNet (stand-in) saved like train-features does."""
    torch.manual_seed(0)
    net = FeatureNet(channels=1, num_classes=4, width=4, feature_dim=8)
    path = str(tmp_path / "feat.safetensors")
    save_feature_extractor(net, path, {"name": "toy", "input_size": 16, "channels": 1, "feature_dim": 8})
    extractor = FeatureExtractor(path, probe=(3, 32))  # RGB 32x32 in: averaged to grey, resized to 16
    assert extractor.metric_name == "fid_toy" and extractor.num_features == 8
    images = random_images(4, 0)
    with torch.no_grad():
        f = extractor(images)
        grey16 = torch.nn.functional.interpolate(images.float().mean(1, keepdim=True) / 255, size=(16, 16),
                                                 mode="bilinear", antialias=True, align_corners=False)
        assert torch.allclose(f, net.eval()(grey16), atol=1e-5)
        assert extractor.net.classify(grey16).shape == (4, 4)
    with pytest.raises(ValueError, match="reserved"):
        save_feature_extractor(net, str(tmp_path / "f2.safetensors"), {"metric_name": "FID"})
    with pytest.raises(FileNotFoundError, match="not found"):
        FeatureExtractor(str(tmp_path / "none.safetensors"))
    (tmp_path / "junk.safetensors").write_text(json.dumps({"not": "safetensors"}))
    with pytest.raises(ValueError, match="junk.safetensors is not a readable safetensors file"):
        FeatureExtractor(str(tmp_path / "junk.safetensors"))
