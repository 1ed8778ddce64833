"""`tokgen sample` / sample/images.py: PNG grids per budget, identical images on 1 and 2 processes,
one clear error for each bad input."""
import os
import subprocess
import sys

import pytest
import torch
from PIL import Image

from conftest import free_port
from tokgen.cli import main
from tokgen.generator import GPT, GPTConfig, tokenizer_identity
from tokgen.tokenizers import Tokenizer1D

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def save_tokenizer(path, config, seed=0):
    torch.manual_seed(seed)
    tok = Tokenizer1D(config)
    torch.save({"state_dict": {f"tokenizer.{k}": v for k, v in tok.state_dict().items()},
                "tokgen": {"kind": "tokenizer1d", "tokenizer_config": config.to_dict()}}, path)
    return str(path)


def save_generator(path, tokenizer_path, **overrides):
    """A generator checkpoint in the layout `tokgen fit` writes, bound to the tokenizer at tokenizer_path."""
    tok = Tokenizer1D.from_checkpoint(tokenizer_path)
    values = dict(vocab_size=tok.quantizer.codebook_size, block_size=tok.num_tokens, num_classes=3,
                  dim=32, n_layer=2, n_head=2, hidden_dim=64)
    values.update(overrides)
    torch.manual_seed(1)
    gen = GPT(GPTConfig(**values))
    torch.save({"state_dict": {f"generator.{k}": v for k, v in gen.state_dict().items()},
                "tokgen": {"kind": "generator", "generator_config": gen.config.to_dict(),
                           "tokenizer": tokenizer_identity(tok, tokenizer_path)}}, path)
    return str(path)


@pytest.fixture
def models(tiny_config, tmp_path):
    tok = save_tokenizer(tmp_path / "tok.ckpt", tiny_config())  # 16x16, K = 8, 125 codes
    return tok, save_generator(tmp_path / "gen.ckpt", tok)


def cli_error(argv):
    with pytest.raises(SystemExit) as info:
        main(argv)
    return str(info.value.code)


def test_sample_writes_a_grid_per_budget_and_every_image(models, tmp_path):
    tok, gen = models
    main(["sample", "--tokenizer", tok, "--generator", gen, "--budgets", "1,4,8", "--classes", "0,2", "--num", "3",
          "--cfg", "2.0", "--out", str(tmp_path / "s.png"), "--out-dir", str(tmp_path / "imgs"), "--batch-size", "4"])
    for k in (1, 4, 8):
        grid = Image.open(tmp_path / f"s_k{k}.png")
        assert grid.size == (3 * 17 + 1, 2 * 17 + 1)  # 3 columns x 2 classes of 16 px + 1 px padding
        assert sorted(os.listdir(tmp_path / "imgs" / f"k{k}")) == [
            "000000_c0.png", "000001_c0.png", "000002_c0.png", "000003_c2.png", "000004_c2.png", "000005_c2.png"]
    a = torch.tensor(list(Image.open(tmp_path / "imgs" / "k1" / "000000_c0.png").getdata()))
    b = torch.tensor(list(Image.open(tmp_path / "imgs" / "k8" / "000000_c0.png").getdata()))
    assert not torch.equal(a, b)  # more tokens, a different (finer) image
    main(["sample", "--tokenizer", tok, "--generator", gen, "--budget", "4", "--num", "2",
          "--out", str(tmp_path / "one.png")])
    assert Image.open(tmp_path / "one.png").size == (2 * 17 + 1, 3 * 17 + 1)  # all 3 classes by default


def test_same_seed_same_images_on_one_and_two_processes(models, tmp_path):
    tok, gen = models
    args = ["--tokenizer", tok, "--generator", gen, "--budgets", "2,8", "--num", "5", "--batch-size", "4",
            "--cfg", "2.0", "--top-k", "50", "--device", "cpu", "--seed", "3"]
    script = os.path.join(ROOT, "sample", "images.py")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}  # 2 CPU processes, also on GPU hosts
    one = subprocess.run([sys.executable, script, *args, "--out", str(tmp_path / "p1.png"),
                          "--out-dir", str(tmp_path / "p1")], capture_output=True, text=True, env=env, timeout=120)
    assert one.returncode == 0, one.stderr[-2000:]
    # accelerate's multi-process launcher (CPU-only machine: 2 processes on the gloo backend)
    two = subprocess.run([sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
                          "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
                          "--main_process_port", str(free_port()), script, *args,
                          "--out", str(tmp_path / "p2.png"), "--out-dir", str(tmp_path / "p2")],
                         capture_output=True, text=True, env=env, timeout=120)
    assert two.returncode == 0, two.stderr[-2000:]
    assert two.stdout.count("budget k=8") == 1  # only the main process writes the grid
    for k in (2, 8):
        assert (tmp_path / f"p1_k{k}.png").read_bytes() == (tmp_path / f"p2_k{k}.png").read_bytes()
        names = sorted(os.listdir(tmp_path / "p1" / f"k{k}"))
        assert len(names) == 15 and names == sorted(os.listdir(tmp_path / "p2" / f"k{k}"))
        for name in names:
            assert (tmp_path / "p1" / f"k{k}" / name).read_bytes() == (tmp_path / "p2" / f"k{k}" / name).read_bytes()
    # a different seed gives different images
    main(["sample", *args[:-2], "--seed", "4", "--out", str(tmp_path / "p3.png")])
    assert (tmp_path / "p3_k8.png").read_bytes() != (tmp_path / "p1_k8.png").read_bytes()


def test_bad_inputs_give_one_clear_error_each(tiny_config, models, tmp_path):
    tok, gen = models
    base = ["sample", "--tokenizer", tok, "--generator", gen, "--out", str(tmp_path / "x.png"), "--num", "1"]
    assert "token budget 9 is above the tokenizer's K=8 (accepted 1..8)" in cli_error([*base, "--budget", "9"])
    assert "token budget 12 is above the tokenizer's K=8" in cli_error([*base, "--budgets", "1,12"])
    short = save_generator(tmp_path / "short.ckpt", tok, block_size=4)
    msg = cli_error(["sample", "--tokenizer", tok, "--generator", short, "--budget", "6"])
    assert "token budget 6 is above the generator's context block_size=4 (accepted 1..4)" in msg
    assert "class id 3 is out of range: the generator has 3 classes (accepted 0..2)" in cli_error(
        [*base, "--classes", "0,3"])
    assert "class id -1 is out of range" in cli_error([*base, "--classes=-1"])

    # generator trained on another tokenizer: other vocabulary, other K, same shape but other quantizer
    big = save_tokenizer(tmp_path / "big.ckpt", tiny_config(quantizer={"kind": "fsq", "levels": [8, 5, 5, 5]}))
    msg = cli_error(["sample", "--tokenizer", big, "--generator", gen])
    assert "trained on another tokenizer: vocabulary of 125 codes, but tokenizer" in msg and "codebook_size=1000" in msg
    long = save_tokenizer(tmp_path / "long.ckpt", tiny_config(num_tokens=16))
    msg = cli_error(["sample", "--tokenizer", long, "--generator", gen])
    assert "trained on another tokenizer: sequences of K=8 tokens, but tokenizer" in msg and "K=16" in msg
    assert "tok.ckpt" in msg  # names the tokenizer it was trained on
    same_size = save_tokenizer(tmp_path / "other_fsq.ckpt", tiny_config(quantizer={"kind": "fsq", "levels": [25, 5]}))
    msg = cli_error(["sample", "--tokenizer", same_size, "--generator", gen])  # 125 codes and K = 8, other codes
    assert "trained on another tokenizer: quantizer {'kind': 'fsq', 'levels': [5, 5, 5]}" in msg
    assert "not a tokgen generator checkpoint" in cli_error(["sample", "--tokenizer", tok, "--generator", tok])
    assert "checkpoint not found" in cli_error(["sample", "--tokenizer", tok, "--generator", str(tmp_path / "no")])
    assert "--cfg-schedule 'cosine' is not accepted" in cli_error([*base, "--cfg-schedule", "cosine"])


def test_other_weights_of_the_same_tokenizer_only_warn(tiny_config, models, tmp_path, capsys):
    tok, gen = models
    retrained = save_tokenizer(tmp_path / "retrained.ckpt", tiny_config(), seed=5)
    main(["sample", "--tokenizer", retrained, "--generator", gen, "--num", "1", "--out", str(tmp_path / "w.png")])
    assert "warning: tokenizer" in capsys.readouterr().err


def always_zero_classifier(path: str) -> str:
    """A stand-in classifier in the `tokgen train-features` file format that labels every image class 0."""
    from tokgen.metrics import FeatureNet, save_feature_extractor

    net = FeatureNet(channels=3, num_classes=3, width=4, feature_dim=4)
    with torch.no_grad():
        net.head.weight.zero_()
        net.head.bias.copy_(torch.tensor([1.0, 0.0, 0.0]))
    save_feature_extractor(net, path, {"name": "test"})
    return path


def test_classifier_accuracy_per_budget(models, tmp_path):
    import json

    tok, gen = models
    path = always_zero_classifier(str(tmp_path / "clf.safetensors"))
    from tokgen.commands.sample import main as sample_main

    result = sample_main(["--tokenizer", tok, "--generator", gen, "--budgets", "2,8", "--classes", "0,1,2",
                   "--num", "2", "--out", str(tmp_path / "c.png"), "--classifier", path,
                   "--metrics-json", str(tmp_path / "m.json")])
    assert result["accuracy"] == {2: pytest.approx(1 / 3), 8: pytest.approx(1 / 3)}
    report = json.loads((tmp_path / "m.json").read_text())
    assert report["accuracy"] == {"2": pytest.approx(1 / 3), "8": pytest.approx(1 / 3)} and report["classes"] == [0, 1, 2]


def test_eos_sampling_reports_each_samples_length(models, tmp_path):
    """--eos: every sample ends at its own EOS (streamed through --batch-size slots); the lengths in the
    metrics JSON equal a direct `generate` of the same samples, the grid and the length histogram (against
    a token folder's lengths) are written."""
    import json

    from tokgen.generator import generate, sample_uniforms

    tok, _ = models
    gen = save_generator(tmp_path / "gen_eos.ckpt", tok, use_eos=True)
    ckpt = torch.load(gen, weights_only=True)
    head = ckpt["state_dict"]["generator.head.weight"]
    head[-1] = 0.35  # EOS likely, so the lengths spread over 1..8
    torch.save(ckpt, gen)
    tokens = tmp_path / "tokens"
    main(["tokenize", "--ckpt", tok, "--data", "shapes", "--out", str(tokens), "--limit", "20", "--no-progress"])
    metrics = tmp_path / "m.json"
    main(["sample", "--tokenizer", tok, "--generator", gen, "--eos", "--num", "5", "--batch-size", "4",
          "--out", str(tmp_path / "s.png"), "--metrics-json", str(metrics), "--data-lengths", str(tokens)])
    report = json.loads(metrics.read_text())["lengths"]["8"]
    model = GPT.from_checkpoint(gen)
    labels = torch.tensor([c for c in range(3) for _ in range(5)])
    _, want = generate(model, labels, 8, stop_at_eos=True, uniforms=sample_uniforms(0, range(15), 8))
    assert report["sampled"]["histogram"] == torch.bincount(want, minlength=9).tolist()
    assert len(set(want.tolist())) > 1 and want.min() >= 1
    assert report["sampled"]["per_class_mean"]["1"] == want[5:10].float().mean().item()
    assert report["data"]["mean"] == 8.0 and abs(report["mean_ratio"] - want.float().mean().item() / 8) < 1e-6
    assert os.path.getsize(report["histogram"]) > 0 and report["histogram"].endswith("s_lengths.png")
    assert Image.open(tmp_path / "s.png").size[1] == 3 * (64 + 2)  # one row per class, tiles upscaled to 64 px
    assert "needs --eos" in cli_error(["sample", "--tokenizer", tok, "--generator", gen, "--data-lengths",
                                       str(tokens), "--out", str(tmp_path / "x.png")])


def test_length_report_compares_class_order_with_the_data(tmp_path):
    """report_lengths: the sampled mean against the data's, and the Spearman correlation of the per-class mean
    lengths (classes that need more tokens in the data should get more in the samples)."""
    from tokgen.commands.sample import report_lengths
    from tokgen.metrics.lengths import length_summary

    labels = [c for c in range(3) for _ in range(4)]
    data = length_summary(torch.tensor([2] * 4 + [5] * 4 + [9] * 4), 16, torch.tensor(labels))
    same_order = [(i, n) for i, n in enumerate([1, 2, 3, 2, 4, 5, 6, 5, 8, 9, 9, 10])]
    report = report_lengths(same_order, labels, 16, data, str(tmp_path / "a.png"))
    assert report["per_class_spearman"] == pytest.approx(1.0)
    assert report["mean_ratio"] == pytest.approx((64 / 12) / (64 / 12))
    reversed_order = [(i, 12 - n) for i, n in same_order]
    assert report_lengths(reversed_order, labels, 16, data, str(tmp_path / "b.png"))["per_class_spearman"] == pytest.approx(-1.0)
    assert os.path.getsize(tmp_path / "a_lengths.png") > 0


def test_num_samples_is_the_launcher_safe_spelling_of_num():
    """Under torchrun / accelerate the launcher's own parser reads ``--num`` as an abbreviation of its
    ``--numa-binding`` / ``--num_processes`` and stops; ``--num-samples`` is the same option, unambiguous there."""
    import argparse

    from tokgen.commands.sample import build_parser

    parser = build_parser()
    common = ["--tokenizer", "t.ckpt", "--generator", "g.ckpt", "--out", "o.png"]
    assert parser.parse_args(common + ["--num-samples", "3"]).num == 3 == parser.parse_args(common + ["--num", "3"]).num
    torchrun_like = argparse.ArgumentParser()
    torchrun_like.add_argument("--numa-binding")
    torchrun_like.add_argument("--numa_binding")
    torchrun_like.add_argument("script")
    torchrun_like.add_argument("script_args", nargs=argparse.REMAINDER)
    assert torchrun_like.parse_args(["s.py", "--num-samples", "3"]).script_args == ["--num-samples", "3"]
    with pytest.raises(SystemExit):  # what torchrun does with the short spelling
        torchrun_like.parse_args(["s.py", "--num", "3"])
