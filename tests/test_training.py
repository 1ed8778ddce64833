"""Training through the CLI: a short fit, resume from last.ckpt, DDP on 2 CPU processes, bad input."""
import os

import pytest
import torch
import yaml
from conftest import set_keys
from lightning.pytorch import Callback

from tokgen.cli import lightning_main, main
from tokgen.tokenizers import Tokenizer1D


def write_recipe(tmp_path, **overrides):
    cfg = {
        "seed_everything": 0,
        "trainer": {"accelerator": "cpu", "devices": 1, "max_steps": 30, "val_check_interval": 15,
                    "check_val_every_n_epoch": None, "limit_val_batches": 2, "log_every_n_steps": 5,
                    "enable_progress_bar": False, "default_root_dir": str(tmp_path / "run")},
        "checkpoint": {"every_n_train_steps": 10},
        "model": {"class_path": "tokgen.lit.TokenizerModule", "init_args": {
            "tokenizer": {"image_size": 16, "patch_size": 4, "width": 32, "encoder_depth": 1, "decoder_depth": 1,
                          "num_heads": 2, "num_tokens": 8, "quantizer": {"kind": "fsq", "levels": [5, 5, 5]}},
            "optim": {"lr": 2e-3, "warmup_steps": 5},
            "nested_dropout": "pow2", "ema_decay": 0.9}},
        "data": {"class_path": "tokgen.data.ShapesDataModule", "init_args": {
            "image_size": 16, "train_size": 2000, "val_size": 32, "batch_size": 16}},
    }
    set_keys(cfg, overrides)
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return str(path)


def test_fit_writes_checkpoint_grid_and_loads(tmp_path):
    recipe = write_recipe(tmp_path)
    cli = lightning_main(["fit", "--config", recipe])
    run = tmp_path / "run"
    assert (run / "checkpoints" / "last.ckpt").is_file()
    assert (run / "samples" / "val_latest.png").is_file()
    metrics = cli.trainer.callback_metrics
    for k in (1, 2, 4, 8):
        assert f"val/psnr_k{k}" in metrics
    assert metrics["val/psnr_k8"] > 10.0  # far above a random decoder (~5 dB) after 30 steps
    tok = Tokenizer1D.from_checkpoint(str(run / "checkpoints" / "last.ckpt"))
    x = torch.rand(2, 3, 16, 16) * 2 - 1
    assert torch.equal(tok.encode(x), cli.model.ema_tokenizer.eval().encode(x))


class KillAt(Callback):
    def __init__(self, step):
        self.step = step

    def on_train_batch_end(self, trainer, *args):
        if trainer.global_step == self.step:
            raise RuntimeError("simulated kill")


class CheckResumed(Callback):
    def __init__(self, ckpt):
        self.ckpt = ckpt
        self.checked = False

    def on_train_start(self, trainer, pl_module):
        assert trainer.global_step == self.ckpt["global_step"]
        state = trainer.optimizers[0].state_dict()
        saved = self.ckpt["optimizer_states"][0]
        assert len(state["state"]) == len(saved["state"]) > 0
        for i, s in saved["state"].items():
            assert torch.equal(state["state"][i]["exp_avg"], s["exp_avg"])
            assert torch.equal(state["state"][i]["exp_avg_sq"], s["exp_avg_sq"])
        assert pl_module.generator_steps == self.ckpt["global_step"]
        self.checked = True


def test_resume_after_kill_restores_step_and_optimizer(tmp_path):
    recipe = write_recipe(tmp_path)
    cli = lightning_main(["fit", "--config", recipe], run=False)
    cli.trainer.callbacks.append(KillAt(14))
    with pytest.raises(RuntimeError, match="simulated kill"):
        cli.trainer.fit(cli.model, cli.datamodule)
    last = tmp_path / "run" / "checkpoints" / "last.ckpt"
    ckpt = torch.load(last, weights_only=True)
    assert ckpt["global_step"] == 10

    cli2 = lightning_main(["fit", "--config", recipe], run=False)
    check = CheckResumed(ckpt)
    cli2.trainer.callbacks.append(check)
    cli2.trainer.fit(cli2.model, cli2.datamodule, ckpt_path="last")
    assert check.checked
    assert cli2.trainer.global_step == 30


class GatherWeights(Callback):
    def __init__(self, out_dir):
        self.out_dir = out_dir

    def on_train_end(self, trainer, pl_module):
        vec = torch.cat([p.detach().flatten() for p in pl_module.tokenizer.parameters()])
        gathered = [torch.zeros_like(vec) for _ in range(trainer.world_size)]
        torch.distributed.all_gather(gathered, vec)
        diff = max((g - gathered[0]).abs().max().item() for g in gathered)
        moved = (vec - self.initial).abs().max().item()
        with open(os.path.join(self.out_dir, f"rank{trainer.global_rank}.txt"), "w") as f:
            f.write(f"{trainer.world_size} {diff} {moved}")

    def on_train_start(self, trainer, pl_module):
        self.initial = torch.cat([p.detach().flatten().clone() for p in pl_module.tokenizer.parameters()])


def test_ddp_spawn_two_processes_keep_weights_identical(tmp_path):
    recipe = write_recipe(tmp_path, **{"trainer.max_steps": 6, "trainer.devices": 2, "trainer.strategy": "ddp_spawn",
                                       "trainer.limit_val_batches": 0})
    cli = lightning_main(["fit", "--config", recipe], run=False)
    cli.trainer.callbacks.append(GatherWeights(str(tmp_path)))
    cli.trainer.fit(cli.model, cli.datamodule)
    for rank in (0, 1):
        world, diff, moved = (tmp_path / f"rank{rank}.txt").read_text().split()
        assert int(world) == 2
        assert float(diff) == 0.0  # ranks agree exactly
        assert float(moved) > 0.0  # and they did train


def test_unknown_yaml_key_is_named(tmp_path, capsys):
    recipe = write_recipe(tmp_path)
    cfg = yaml.safe_load(open(recipe))
    cfg["model"]["init_args"]["tokenizer"]["num_tokenz"] = 4
    open(recipe, "w").write(yaml.safe_dump(cfg))
    with pytest.raises(SystemExit):
        main(["fit", "--config", recipe])
    assert "num_tokenz" in capsys.readouterr().err


def test_missing_data_folder_is_named(tmp_path):
    recipe = write_recipe(tmp_path, data={"class_path": "tokgen.data.ImageFolderDataModule",
                                          "init_args": {"root": str(tmp_path / "nowhere"), "image_size": 16}})
    with pytest.raises(SystemExit) as err:
        main(["fit", "--config", recipe])
    assert str(tmp_path / "nowhere") in str(err.value.code)


def test_image_size_mismatch_between_data_and_model(tmp_path):
    recipe = write_recipe(tmp_path, **{"data.init_args.image_size": 32})
    with pytest.raises(SystemExit) as err:
        main(["fit", "--config", recipe])
    assert "image_size=32" in str(err.value.code) and "image_size=16" in str(err.value.code)


def test_corrupt_checkpoint_is_named(tmp_path):
    bad = tmp_path / "broken.ckpt"
    bad.write_bytes(b"PK\x03\x04 this is not a checkpoint")
    with pytest.raises(ValueError, match="broken.ckpt is corrupt"):
        Tokenizer1D.from_checkpoint(str(bad))
    with pytest.raises(FileNotFoundError, match="missing.ckpt"):
        Tokenizer1D.from_checkpoint(str(tmp_path / "missing.ckpt"))


def test_training_that_stops_between_saves_keeps_its_last_step(tmp_path):
    """max_steps (or a max_time limit) that falls between two scheduled saves: last.ckpt and a step file still
    hold the final optimizer step, not the last scheduled one."""
    recipe = write_recipe(tmp_path, **{"trainer.max_steps": 13, "trainer.val_check_interval": 13})
    lightning_main(["fit", "--config", recipe])
    ckpts = tmp_path / "run" / "checkpoints"
    assert sorted(p.name for p in ckpts.iterdir()) == ["last.ckpt", "step=0000010.ckpt", "step=0000013.ckpt"]
    for name in ("last.ckpt", "step=0000013.ckpt"):
        assert torch.load(ckpts / name, map_location="cpu", weights_only=False)["global_step"] == 13
