import os
import socket

import pytest
import torch

torch.set_num_threads(2)
os.environ.setdefault("TOKGEN_TEST", "1")

FMNIST_RAW = "/usr/share/datasets/fashion-mnist"
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CPU_OVERRIDES = ["--trainer.accelerator=cpu", "--trainer.devices=1", "--trainer.strategy=auto",
                 "--trainer.precision=32-true", "--trainer.num_nodes=1"]


def free_port() -> int:
    """A free TCP port on localhost (for process-group rendezvous in multi-process tests)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def build_on_meta(recipe, tmp_path, extra=()):
    """Parse a recipe through the CLI with CPU trainer overrides (+ ``extra`` arguments) and build its model on the
    meta device."""
    from tokgen.cli import lightning_main

    with torch.device("meta"):
        return lightning_main(["--config", os.path.join(ROOT, recipe), *CPU_OVERRIDES,
                               f"--trainer.default_root_dir={tmp_path}", *extra], run=False)


@pytest.fixture
def tiny_config():
    from tokgen.tokenizers import TokenizerConfig

    def make(**overrides):
        values = dict(image_size=16, patch_size=4, width=32, encoder_depth=1, decoder_depth=1, num_heads=2,
                      num_tokens=8, quantizer={"kind": "fsq", "levels": [5, 5, 5]})
        values.update(overrides)
        return TokenizerConfig.from_dict(values)

    return make


def set_keys(cfg: dict, overrides: dict) -> dict:
    """Set dotted keys of a nested recipe dict in place, e.g. {"model.init_args.optim.lr": 1e-3}; returns cfg."""
    for key, value in overrides.items():
        node = cfg
        *parents, leaf = key.split(".")
        for p in parents:
            node = node[p]
        node[leaf] = value
    return cfg
