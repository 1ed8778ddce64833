"""Files never run code: feature extractors / classifiers / REPA networks load as safetensors weights of an
allow-listed tokgen class; a TorchScript file (whose code would write a file here) is refused on every path unless
trusted; ``from_pretrained`` is local-only and strict."""
import os
import subprocess
import sys
import time
import warnings
import zipfile

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from test_flow_decoder import flow_config, shapes_images, write_flow_recipe
from test_sample import save_generator, save_tokenizer

from tokgen.cli import main
from tokgen.lit import FlowModule
from tokgen.metrics import FeatureExtractor, FeatureNet, load_feature_network, save_feature_extractor
from tokgen.tokenizers import Tokenizer1D

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class WritesAFile(torch.nn.Module):
    """A hostile extractor: its forward (and classify) create the file ``target`` as a side effect."""

    def __init__(self, target: str):
        super().__init__()
        self.target = target

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        marker = torch.from_file(self.target, shared=True, size=8, dtype=torch.uint8)  # creates the file
        marker.fill_(1)
        return x.mean(dim=(2, 3)) + marker.sum().float() * 0

    @torch.jit.export
    def classify(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward(x)


@pytest.fixture
def hostile(tmp_path):
    """(TorchScript file, the file its code writes when run)."""
    path, marker = str(tmp_path / "features_evil.pt"), str(tmp_path / "written_by_the_file")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.jit.save(torch.jit.script(WritesAFile(marker)), path)
    return path, marker


def cli_refusal(capsys, argv: list[str], path: str) -> str:
    """Run the CLI in-process; assert exit status 2 and one stderr line naming ``path``; return that line."""
    with pytest.raises(SystemExit) as err:
        main(argv)
    assert err.value.code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and path in lines[0] and "Traceback" not in lines[0], lines
    return lines[0]


def small_net(seed: int = 0, **overrides) -> FeatureNet:
    torch.manual_seed(seed)
    return FeatureNet(**{"channels": 3, "num_classes": 3, "width": 4, "feature_dim": 6, **overrides}).eval()


# ------------------------------------------------------------------------------------- TorchScript is refused
def test_eval_refuses_torchscript_without_running_it(hostile, tmp_path, capsys):
    path, marker = hostile
    line = cli_refusal(capsys, ["eval", "--samples", str(tmp_path), "--data", "shapes", "--feature-extractor", path,
                                "--out", str(tmp_path / "r.json")], path)
    assert "TorchScript" in line and "runs code" in line and "--trust-torchscript" in line
    assert not os.path.exists(marker) and not os.path.exists(tmp_path / "r.json")


def test_eval_refusal_is_one_line_with_exit_status_2_in_a_real_process(hostile, tmp_path):
    path, marker = hostile
    env = {**os.environ, "PYTHONPATH": ROOT + os.pathsep + os.environ.get("PYTHONPATH", "")}
    proc = subprocess.run([sys.executable, "-m", "tokgen.cli", "eval", "--samples", str(tmp_path), "--data", "shapes",
                           "--feature-extractor", path], capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.strip().count("\n") == 0 and path in proc.stderr and "Traceback" not in proc.stderr
    assert not os.path.exists(marker)


def test_eval_loads_torchscript_only_with_the_flag(hostile, tmp_path, capsys):
    """With --trust-torchscript the file loads (its metric joins the accepted names) and its code runs (the probe
    wrote the marker): exactly what the flag warns about."""
    path, marker = hostile
    with pytest.warns(FutureWarning, match="deprecated"):
        line = cli_refusal(capsys, ["eval", "--samples", str(tmp_path), "--data", "shapes", "--feature-extractor",
                                    path, "--trust-torchscript", "--metrics", "bogus"], "fid_features_evil")
    assert "'bogus' not accepted" in line
    assert os.path.exists(marker)


def test_sample_refuses_torchscript_classifier_without_the_flag(hostile, tiny_config, tmp_path, capsys):
    path, marker = hostile
    tok = save_tokenizer(tmp_path / "tok.ckpt", tiny_config())
    gen = save_generator(tmp_path / "gen.ckpt", tok)
    argv = ["sample", "--tokenizer", tok, "--generator", gen, "--budgets", "2", "--classes", "0,1,2", "--num", "1",
            "--out", str(tmp_path / "s.png"), "--classifier", path]
    line = cli_refusal(capsys, argv, path)
    assert line.startswith("tokgen sample: error: --classifier") and "--trust-torchscript" in line
    assert not os.path.exists(marker) and not os.path.exists(tmp_path / "s.png")

    with pytest.warns(FutureWarning, match="deprecated"):
        main([*argv, "--trust-torchscript"])
    assert os.path.exists(marker) and os.path.exists(tmp_path / "s.png")


def test_repa_refuses_torchscript_unless_the_recipe_trusts_it(hostile, tmp_path, capsys):
    path, marker = hostile
    kwargs = dict(tokenizer=flow_config(repa_depth=1, repa_dim=3), repa_weight=0.5, repa_features=path)
    with pytest.raises(ValueError, match=r"features_evil.pt is a TorchScript file.*model.trust_torchscript: true"):
        FlowModule(**kwargs).setup("fit")
    assert not os.path.exists(marker)

    recipe = write_flow_recipe(tmp_path, tokenizer={"repa_depth": 1, "repa_dim": 3}, repa_weight=0.5,
                               repa_features=path)
    line = cli_refusal(capsys, ["fit", "--config", recipe], path)
    assert "REPA feature network" in line and "model.trust_torchscript: true" in line
    assert not os.path.exists(marker) and not os.path.exists(tmp_path / "run" / "checkpoints")

    module = FlowModule(**kwargs, trust_torchscript=True)
    with pytest.warns(FutureWarning, match="deprecated"):
        module.setup("fit")
    assert not os.path.exists(marker)  # loaded, not yet called
    assert module.repa_target(shapes_images(2)).shape == (2, 3)
    assert os.path.exists(marker)


# ------------------------------------------------------------------------------------- the safetensors format
def test_extractor_file_round_trips_without_torchscript(tmp_path):
    net = small_net(channels=1, num_classes=4, feature_dim=8)
    path = str(tmp_path / "features_toy.safetensors")
    meta = {"name": "toy", "input_size": 16, "channels": 1, "classes": ["a", "b", "c", "d"]}
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no torch.jit deprecation (or any other) warning on save or load
        save_feature_extractor(net, path, meta)
        loaded, loaded_meta = load_feature_network(path)
        extractor = FeatureExtractor(path, probe=(3, 32))
    assert not zipfile.is_zipfile(path)  # not a zip archive (TorchScript / torch.save)
    assert type(loaded) is FeatureNet and loaded_meta == meta and extractor.metric_name == "fid_toy"
    x = torch.rand(5, 1, 16, 16)
    with torch.no_grad():
        assert torch.equal(loaded(x), net(x)) and torch.equal(loaded.classify(x), net.classify(x))
    assert len(extractor.fingerprint) == 64  # file_sha256 keys the FID statistics cache


def test_safetensors_naming_a_class_outside_the_allow_list_is_refused(tmp_path, capsys):
    path = str(tmp_path / "features_other.safetensors")
    header = '{"class": "Linear", "config": {"in_features": 3, "out_features": 2}, "metadata": {"name": "x"}}'
    save_file(torch.nn.Linear(3, 2).state_dict(), path, metadata={"tokgen_extractor": header})
    with pytest.raises(ValueError, match="names class 'Linear', which is not an allowed extractor class; "
                                         "accepted: FeatureNet"):
        load_feature_network(path)
    line = cli_refusal(capsys, ["eval", "--samples", str(tmp_path), "--data", "shapes", "--feature-extractor", path],
                       path)
    assert "'Linear'" in line


def test_extractor_weights_load_strictly(tmp_path):
    path = str(tmp_path / "f.safetensors")
    save_feature_extractor(small_net(), path, {"name": "f"})
    state = load_file(path)
    with safe_open(path, "pt") as f:
        header = f.metadata()
    save_file({k: v for k, v in state.items() if not k.startswith("head.")} | {"extra": torch.zeros(2)}, path,
              metadata=header)
    with pytest.raises(ValueError, match=r"missing keys 2: head.weight, head.bias; unexpected keys 1: extra"):
        load_feature_network(path)

    # a config far larger than the stored tensors is built on the meta device and refused, not allocated
    header["tokgen_extractor"] = header["tokgen_extractor"].replace('"width": 4', '"width": 100000000')
    save_file(state, path, metadata=header)
    with pytest.raises(ValueError, match=r"wrong shapes 16: body.0.weight \(4, 3, 3, 3\) \(expected \(100000000, 3"):
        load_feature_network(path)


# ------------------------------------------------------------------------------------- from_pretrained
def test_from_pretrained_is_local_by_default_and_fails_fast(tmp_path):
    start = time.monotonic()
    with pytest.raises(FileNotFoundError) as err:
        Tokenizer1D.from_pretrained(tmp_path / "no_such_tokenizer")
    assert time.monotonic() - start < 2.0
    message = str(err.value)
    assert str(tmp_path / "no_such_tokenizer") in message and "local_files_only=False" in message
    with pytest.raises(FileNotFoundError, match="is not a local folder"):
        Tokenizer1D.from_pretrained("someone/some-repo")  # a hub id is not looked up unless asked


def test_from_pretrained_refuses_weights_without_the_decoder_or_with_extra_keys(tmp_path, tiny_config):
    torch.manual_seed(0)
    Tokenizer1D(tiny_config()).save_pretrained(tmp_path / "tok")
    weights = tmp_path / "tok" / "model.safetensors"
    state = load_file(weights)
    save_file({k: v for k, v in state.items() if not k.startswith("decoder.")}, weights)
    with pytest.raises(ValueError) as err:
        Tokenizer1D.from_pretrained(tmp_path / "tok")
    message = str(err.value)
    assert str(weights) in message and "missing keys" in message and "decoder.blocks.0.attn.qkv.weight" in message
    assert "unexpected" not in message

    save_file({**state, "decoder.extra_head.weight": torch.zeros(3)}, weights)
    with pytest.raises(ValueError, match=r"unexpected keys 1: decoder.extra_head.weight") as err:
        Tokenizer1D.from_pretrained(tmp_path / "tok")
    assert "missing" not in str(err.value)
