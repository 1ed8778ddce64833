"""`tokgen eval` end to end on a tiny untrained tokenizer, its numbers against a direct computation, gFID on
sample folders, and one clear error for each bad input.

Feature extractors are honest stand-ins (an untrained CNN exported like train-features does; LPIPS with a
random backbone): they test the plumbing and the arithmetic, not perceptual quality.
"""
import json
import os
import socket
from datetime import timedelta

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from tokgen.cli import main
from tokgen.metrics import FeatureNet, evaluate_tokenizer, psnr, save_feature_extractor, ssim, to_uint8
from tokgen.metrics.datasets import build_data
from tokgen.metrics.fid import INCEPTION_FILE
from tokgen.tokenizers import Tokenizer1D


@pytest.fixture(scope="module")
def tiny_ckpt(tmp_path_factory):
    """A tiny random tokenizer (16x16, K=8) saved as a Lightning-style checkpoint."""
    from tokgen.tokenizers import TokenizerConfig

    cfg = TokenizerConfig.from_dict(dict(image_size=16, patch_size=4, width=32, encoder_depth=1, decoder_depth=1,
                                         num_heads=2, num_tokens=8, quantizer={"kind": "fsq", "levels": [5, 5, 5]}))
    torch.manual_seed(0)
    tok = Tokenizer1D(cfg)
    path = tmp_path_factory.mktemp("ckpt") / "run" / "checkpoints" / "last.ckpt"
    path.parent.mkdir(parents=True)
    torch.save({"state_dict": {f"tokenizer.{k}": v for k, v in tok.state_dict().items()},
                "tokgen": {"tokenizer_config": cfg.to_dict()}}, path)
    return str(path)


@pytest.fixture(scope="module")
def standin_extractor(tmp_path_factory):
    """Stand-in feature extractor: an untrained FeatureNet (seeded) in the train-features file format."""
    torch.manual_seed(0)
    path = str(tmp_path_factory.mktemp("feat") / "standin.safetensors")
    save_feature_extractor(FeatureNet(channels=3, num_classes=3, width=4, feature_dim=16), path,
                           {"name": "standin", "input_size": 16, "channels": 3, "feature_dim": 16})
    return path


def run_cli(*args) -> None:
    main(["eval", *args, "--no-progress"])


def cli_error(*args) -> str:
    with pytest.raises(SystemExit) as err:
        run_cli(*args)
    return str(err.value.code)


def test_eval_cli_report_matches_direct_computation(tiny_ckpt, standin_extractor, tmp_path, capsys):
    out = tmp_path / "report.json"
    common = ["--ckpt", tiny_ckpt, "--data", "shapes", "--num-images", "24", "--budgets", "1,4,8",
              "--metrics", "psnr,ssim", "--feature-extractor", standin_extractor, "--batch-size", "10",
              "--stats-cache", str(tmp_path / "cache"), "--out", str(out)]
    run_cli(*common)
    report = json.loads(out.read_text())
    assert set(report["metrics"]) == {"fid_standin", "psnr", "ssim"}  # never plain "fid" for an extractor
    assert report["labels"] == ["1", "4", "8"] and report["num_images"] == 24
    assert report["real_stats"]["fid_standin"]["hit"] is False
    assert set(report["throughput"]["decode tokens/s"]) == {"1", "4", "8"}
    for suffix in (".md", "_metrics.png", "_recon.png"):
        assert os.path.getsize(str(out).replace(".json", suffix)) > 100
    table = capsys.readouterr().out
    assert "| k | fid_standin" in table and "\n| 8 |" in table

    # The same numbers computed directly, without the evaluator (all 24 images in one batch).
    tok = Tokenizer1D.from_checkpoint(tiny_ckpt)
    data = build_data("shapes", image_size=16, channels=3, num_images=24)
    x = torch.stack([data.dataset[i]["image"] for i in range(24)])
    target = to_uint8(x).float() / 255
    with torch.no_grad():
        pred = to_uint8(tok.decode(tok.encode(x)[:, :4])).float() / 255
    assert report["metrics"]["psnr"]["4"] == pytest.approx(float(psnr(pred, target).mean()), rel=1e-4)
    assert report["metrics"]["ssim"]["4"] == pytest.approx(float(ssim(pred, target).mean()), rel=1e-4)
    assert all(v > 0 for v in report["metrics"]["fid_standin"].values())

    # A second run reuses the cached real statistics and reproduces the numbers.
    run_cli(*common)
    again = json.loads(out.read_text())
    assert again["real_stats"]["fid_standin"]["hit"] is True
    assert again["metrics"]["fid_standin"] == pytest.approx(report["metrics"]["fid_standin"], rel=1e-6)


def test_lpips_per_budget_with_random_backbone(tiny_ckpt):
    """LPIPS through the evaluator; random backbone = stand-in (lpips pnet_rand), so only sanity is checked."""
    from tokgen.lit.losses import build_lpips

    tok = Tokenizer1D.from_checkpoint(tiny_ckpt)
    data = build_data("shapes", image_size=16, channels=3, num_images=8)
    report, grid = evaluate_tokenizer(tok, data, [2, 8], ["lpips"], lpips_model=build_lpips("vgg", True),
                                      batch_size=4, progress=False)
    values = report.metrics["lpips"]
    assert set(values) == {"2", "8"} and all(np.isfinite(v) and v > 0 for v in values.values())
    assert [label for label, _ in grid] == ["real", "k=2", "k=8"] and grid[0][1].shape == (8, 3, 16, 16)


def test_gfid_samples_self_zero_shift_larger(standin_extractor, tmp_path):
    """Sample folders against the real set: the real images themselves score ~0, brightened ones more."""
    data = build_data("shapes", image_size=16, channels=3, num_images=40)
    other = build_data("shapes", split="val", image_size=16, channels=3, num_images=40)  # same distribution
    for name, source, shift in (("same", data, 0), ("other", other, 0), ("bright", data, 60)):
        (tmp_path / name).mkdir()
        for i in range(40):
            u8 = to_uint8(source.dataset[i]["image"]).int() + shift
            Image.fromarray(u8.clamp(0, 255).to(torch.uint8).permute(1, 2, 0).numpy()).save(tmp_path / name / f"{i:03d}.png")
    out = tmp_path / "gfid.json"
    run_cli("--samples", f"same={tmp_path / 'same'}", "--samples", str(tmp_path / "other"), "--samples", str(tmp_path / "bright"), "--data", "shapes",
            "--image-size", "16", "--num-images", "40", "--feature-extractor", standin_extractor, "--no-stats-cache", "--out", str(out))
    fd = json.loads(out.read_text())["metrics"]["fid_standin"]
    print(fd)
    assert abs(fd["same"]) < 1e-6 * fd["other"] and fd["bright"] > 2 * fd["other"] > 0


def test_errors_are_one_clear_line(tiny_ckpt, standin_extractor, tmp_path, monkeypatch):
    base = ["--data", "shapes", "--num-images", "4", "--metrics", "psnr", "--out", str(tmp_path / "r.json")]
    message = cli_error("--ckpt", str(tmp_path / "missing.ckpt"), *base)
    assert "checkpoint not found" in message and "missing.ckpt" in message
    message = cli_error("--ckpt", tiny_ckpt, *base, "--budgets", "1,16")
    assert "'16'" in message and "1..8" in message
    (tmp_path / "empty").mkdir()
    message = cli_error("--ckpt", tiny_ckpt, "--data", f"folder:{tmp_path / 'empty'}", "--metrics", "psnr")
    assert "no images found" in message and "empty" in message
    spec = tmp_path / "data.yaml"
    spec.write_text(yaml.safe_dump({"data": {"class_path": "tokgen.data.ShapesDataModule",
                                             "init_args": {"image_size": 32, "test_size": 8}}}))
    message = cli_error("--ckpt", tiny_ckpt, "--data", str(spec), "--metrics", "psnr")
    assert "mismatched image size" in message and "32" in message and "16" in message
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    message = cli_error("--ckpt", tiny_ckpt, "--data", "shapes", "--num-images", "4", "--metrics", "fid,psnr")
    assert INCEPTION_FILE in message and "--inception-weights" in message and "\n" not in message
    (tmp_path / "big").mkdir()
    Image.new("RGB", (32, 32)).save(tmp_path / "big" / "a.png")
    message = cli_error("--samples", str(tmp_path / "big"), "--data", "shapes", "--image-size", "16",
                        "--num-images", "4", "--feature-extractor", standin_extractor)
    assert "mismatched image size" in message and "32x32" in message
    message = cli_error("--ckpt", tiny_ckpt, "--data", "shapes", "--metrics", "psnr,bogus")
    assert "'bogus'" in message and "accepted" in message
    message = cli_error("--ckpt", tiny_ckpt, "--data", "shapes", "--metrics", "psnr", "--out", str(tmp_path / "empty"))
    assert "must be a .json file path" in message and "empty" in message


# ---------------------------------------------------------------------------------- two processes (gloo)
def _ddp_eval_worker(rank: int, world: int, port: int, ckpt: str, extractor: str, out_dir: str) -> None:
    import torch.distributed as dist

    from tokgen.metrics import FeatureExtractor

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world,
                            timeout=timedelta(seconds=60))
    try:
        report, _ = evaluate_tokenizer(Tokenizer1D.from_checkpoint(ckpt), build_data("shapes", image_size=16, num_images=20),
                                       [2, 8], ["psnr"], [FeatureExtractor(extractor, probe=(3, 16))], batch_size=4,
                                       progress=False)
        with open(os.path.join(out_dir, f"rank{rank}.json"), "w") as f:
            json.dump(report.metrics, f)
    finally:
        dist.destroy_process_group()


def test_two_processes_match_one(tiny_ckpt, standin_extractor, tmp_path):
    """Each process scores every 2nd image; torchmetrics' state sync must give the single-process numbers."""
    import torch.multiprocessing as mp

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    mp.spawn(_ddp_eval_worker, args=(2, port, tiny_ckpt, standin_extractor, str(tmp_path)), nprocs=2, join=True)
    from tokgen.metrics import FeatureExtractor

    single, _ = evaluate_tokenizer(Tokenizer1D.from_checkpoint(tiny_ckpt), build_data("shapes", image_size=16, num_images=20),
                                   [2, 8], ["psnr"], [FeatureExtractor(standin_extractor, probe=(3, 16))], batch_size=4,
                                   progress=False)
    for rank in range(2):
        got = json.loads((tmp_path / f"rank{rank}.json").read_text())
        for metric in ("psnr", "fid_standin"):
            for label in ("2", "8"):
                assert got[metric][label] == pytest.approx(single.metrics[metric][label], rel=1e-5)
