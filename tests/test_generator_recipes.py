"""Generator recipes parse through the CLI; paper-scale ones instantiate on the meta device with the
parameter counts the README states, and the FSDP variants wrap one transformer block per unit."""
import glob
import os

import pytest
import torch
import yaml
from jsonargparse import ArgumentParser
from lightning.pytorch.strategies import FSDPStrategy, Strategy

from conftest import ROOT, build_on_meta
from tokgen.generator.model import Block


# generator parameters (untied; vocabulary 64000 of the FlexTok-d18 tokenizer, 1000 classes + null)
PAPER_SCALE = {
    "configs/generator/imagenet_gpt_b.yaml": 184_026_624,
    "configs/generator/imagenet_gpt_b_fsdp.yaml": 184_026_624,
    "configs/generator/imagenet_gpt_l.yaml": 440_428_544,
    "configs/generator/imagenet_gpt_l_fsdp.yaml": 440_428_544,
    "configs/generator/imagenet_gpt_b_streaming.yaml": 184_026_624,
    "configs/generator/imagenet_gpt_l_streaming.yaml": 440_428_544,
}


@pytest.mark.parametrize("recipe", sorted(PAPER_SCALE))
def test_paper_scale_generator_instantiates_on_meta(recipe, tmp_path):
    cli = build_on_meta(recipe, tmp_path)
    model = cli.model.generator
    assert next(model.parameters()).is_meta
    assert model.num_parameters() == PAPER_SCALE[recipe]
    assert cli.model.ema_generator is None and not cli.model.sample_grid
    with open(os.path.join(ROOT, recipe)) as f:
        trainer = yaml.safe_load(f)["trainer"]
    assert trainer["devices"] == 8 and trainer["precision"] == "bf16-mixed"
    if "fsdp" in recipe:  # the strategy block builds an FSDPStrategy wrapping every transformer block
        parser = ArgumentParser()
        parser.add_argument("--strategy", type=Strategy | str)
        strategy = parser.instantiate(parser.parse_object({"strategy": trainer["strategy"]})).strategy
        assert isinstance(strategy, FSDPStrategy)
        assert Block in strategy.kwargs["auto_wrap_policy"]._module_classes
    else:
        assert trainer["strategy"] == "ddp"


@pytest.mark.parametrize("recipe", sorted(glob.glob("configs/generator/*.yaml", root_dir=ROOT)))
def test_every_generator_recipe_parses(recipe, tmp_path):
    cli = build_on_meta(recipe, tmp_path)
    c = cli.model.generator_config
    assert c.vocab_size >= 2 and c.block_size >= 1
    assert cli.datamodule.path.startswith("runs/tokens/")
