"""Training the generator through the CLI on token shards: it learns a class-dependent pattern, stores the
tokenizer identity in the checkpoint, resumes, and refuses shards that do not fit the model."""
import json
import os

import pytest
import torch
import yaml
from safetensors.torch import save_file

from tokgen.cli import lightning_main
from tokgen.data.tokens import FORMAT, INDEX_NAME
from tokgen.generator import GPT, generate

V, K, C, N = 20, 6, 4, 256
IDENTITY = {"checkpoint": None, "codebook_size": V, "num_tokens": K, "config": {}, "fingerprint": "0123456789abcdef"}


def pattern(labels):
    """codes[b, t] = (3 * label + t) % V: fully determined by the class."""
    return (3 * labels[:, None] + torch.arange(K)[None]) % V


def planted_lengths(labels):
    """The length rule of the EOS test: class c keeps 1 + c codes (1, 2, 3, 4 of K = 6)."""
    return 1 + labels


def write_shards(folder, n=N, identity=IDENTITY, lengths=None):
    os.makedirs(folder, exist_ok=True)
    labels = torch.arange(n) % C
    codes = pattern(labels)
    lengths = torch.full((n,), K) if lengths is None else lengths(labels)
    codes = codes.masked_fill(torch.arange(K)[None] >= lengths[:, None], 0)  # zero-padded past each length
    save_file({"codes": codes.to(torch.int16), "lengths": lengths.to(torch.int32),
               "labels": labels}, os.path.join(folder, "shard_00000.safetensors"))
    index = {"format": FORMAT, "version": 1, "split": "train", "num_examples": n, "shard_size": n, "num_shards": 1,
             "num_tokens": K, "codebook_size": V, "num_classes": C, "tokenizer": identity, "complete": True,
             "shards": [{"file": "shard_00000.safetensors", "num_examples": n, "start": 0}]}
    with open(os.path.join(folder, INDEX_NAME), "w") as f:
        json.dump(index, f)
    return str(folder)


def write_recipe(tmp_path, max_steps=60, lengths=None, **generator):
    gen = {"vocab_size": V, "block_size": K, "num_classes": C, "dim": 32, "n_layer": 2, "n_head": 2, "hidden_dim": 64}
    gen.update(generator)
    cfg = {
        "seed_everything": 0,
        "trainer": {"accelerator": "cpu", "devices": 1, "max_steps": max_steps, "val_check_interval": 30,
                    "check_val_every_n_epoch": None, "log_every_n_steps": 10, "enable_progress_bar": False,
                    "default_root_dir": str(tmp_path / "run")},
        "checkpoint": {"every_n_train_steps": 30},
        "model": {"class_path": "tokgen.lit.GeneratorModule", "init_args": {
            "generator": gen, "optim": {"lr": 3e-3, "warmup_steps": 5, "weight_decay": 0.0}, "ema_decay": 0.9}},
        "data": {"class_path": "tokgen.data.TokenShardDataModule", "init_args": {
            "path": write_shards(tmp_path / "tokens", lengths=lengths), "val_size": 32, "batch_size": 32}},
    }
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return str(path)


def test_generator_learns_class_pattern_and_checkpoint_holds_tokenizer_identity(tmp_path):
    cli = lightning_main(["fit", "--config", write_recipe(tmp_path)])
    assert cli.trainer.callback_metrics["val/loss"] < 0.5  # ln(20) = 3.0 at initialisation
    ckpt_path = str(tmp_path / "run" / "checkpoints" / "last.ckpt")
    meta = torch.load(ckpt_path, weights_only=True)["tokgen"]
    assert meta["kind"] == "generator" and meta["tokenizer"] == IDENTITY and meta["optimizer_steps"] == 60
    model = GPT.from_checkpoint(ckpt_path)
    assert model.tokenizer_info == IDENTITY
    labels = torch.arange(C)
    codes, _ = generate(model, labels, K, temperature=0)
    assert torch.equal(codes, pattern(labels))
    sampled, _ = generate(model, labels.repeat(4), K, cfg_scale=2.0, temperature=0.3,
                          generator=torch.Generator().manual_seed(0))
    assert (sampled == pattern(labels.repeat(4))).float().mean() > 0.9

    # resume from last.ckpt continues the step count
    resumed = lightning_main(["fit", "--config", write_recipe(tmp_path, max_steps=70), "--ckpt_path", ckpt_path])
    assert resumed.trainer.global_step == 70 and resumed.model.optimizer_steps == 70
    assert resumed.model.tokenizer_info == IDENTITY

    # resuming on shards written by other tokenizer weights is refused
    write_shards(tmp_path / "tokens", identity={**IDENTITY, "fingerprint": "fedcba9876543210"})
    with pytest.raises(ValueError, match="trained on codes of tokenizer weights 0123456789abcdef"):
        lightning_main(["fit", "--config", str(tmp_path / "recipe.yaml"), "--trainer.max_steps=80",
                        "--ckpt_path", ckpt_path])


def test_eos_generator_learns_the_planted_length_rule(tmp_path):
    """Shards whose length follows the class (1 + class codes, then EOS): a generator trained with use_eos ends
    every sample where the rule says, with the class's codes before it."""
    lightning_main(["fit", "--config", write_recipe(tmp_path, max_steps=90, lengths=planted_lengths, use_eos=True)])
    model = GPT.from_checkpoint(str(tmp_path / "run" / "checkpoints" / "last.ckpt"))
    labels = torch.arange(C).repeat(8)
    codes, lengths = generate(model, labels, K, stop_at_eos=True, temperature=0.5, slots=8,
                              generator=torch.Generator().manual_seed(0))
    assert (lengths == planted_lengths(labels)).float().mean() >= 0.95, lengths.view(8, C)
    keep = torch.arange(K)[None] < lengths[:, None]
    assert (codes == pattern(labels))[keep].float().mean() >= 0.95


@pytest.mark.parametrize("override, message", [
    ({"vocab_size": 30}, "codebook_size=20 but model.init_args.generator.vocab_size=30"),
    ({"block_size": 4}, "num_tokens=6 but model.init_args.generator.block_size=4"),
    ({"num_classes": 7}, "num_classes=4 but model.init_args.generator.num_classes=7"),
])
def test_model_that_does_not_fit_the_shards_fails_early(tmp_path, override, message):
    with pytest.raises(ValueError, match=message):
        lightning_main(["fit", "--config", write_recipe(tmp_path, max_steps=2, **override)])
