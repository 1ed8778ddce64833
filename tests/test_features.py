"""`tokgen train-features`: a quick fit on a slice of Fashion-MNIST gives an extractor file with metadata,
features and logits, well above chance; bad names fail before training."""
import json
import os

import pytest
import torch

from tokgen.cli import main
from tokgen.metrics import FeatureExtractor

FMNIST_RAW = "/usr/share/datasets/fashion-mnist"


@pytest.mark.skipif(not os.path.isdir(FMNIST_RAW), reason="Debian package dataset-fashion-mnist not installed")
def test_train_features_fmnist_quick(tmp_path, capsys):
    out = tmp_path / "features_fmnist.safetensors"
    main(["train-features", "--data", "fmnist", "--data-root", str(tmp_path / "data"), "--out", str(out),
          "--max-train-images", "2000", "--max-test-images", "500", "--epochs", "1", "--width", "8",
          "--feature-dim", "32", "--batch-size", "50", "--lr", "1e-2", "--no-progress"])
    assert "test accuracy" in capsys.readouterr().out
    extractor = FeatureExtractor(str(out), probe=(3, 32))  # tokenizer-style RGB input is averaged to grey
    meta = extractor.metadata
    assert extractor.metric_name == "fid_fmnist" and extractor.num_features == 32
    assert meta["input_size"] == 32 and meta["channels"] == 1 and meta["num_classes"] == 10
    assert meta["test_images"] == 500 and len(meta["classes"]) == 10
    assert meta["test_accuracy"] > 0.3  # chance is 0.1; 0.48 after these 40 steps (the full run reaches ~0.9)
    json.dumps(meta)

    # classify() reproduces the stored accuracy on the same test images.
    from tokgen.metrics.datasets import build_data

    test = build_data("fmnist", image_size=32, channels=1, num_images=500, root=str(tmp_path / "data"))
    x = torch.stack([test.dataset[i]["image"] for i in range(500)])
    y = torch.stack([test.dataset[i]["label"] for i in range(500)])
    with torch.no_grad():
        logits = extractor.net.classify((x + 1) / 2)
        assert extractor.net((x[:4] + 1) / 2).shape == (4, 32)
    assert float((logits.argmax(1) == y).float().mean()) == pytest.approx(meta["test_accuracy"], abs=1e-4)


def test_train_features_rejects_reserved_name(tmp_path):
    with pytest.raises(SystemExit) as err:
        main(["train-features", "--data", "shapes", "--name", "fid_inception", "--out",
              str(tmp_path / "f.safetensors")])
    assert "reserved" in str(err.value.code)
