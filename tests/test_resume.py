"""Exact resume after SIGKILL, atomic checkpoint writes, and --ckpt_path inputs that are refused (exit code 2, one
line naming the file) or recovered from (a damaged last.ckpt falls back to the newest intact step checkpoint)."""
import glob
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest
import torch

from tokgen.checkpoint import checkpoint_kind, load_checkpoint
from tokgen.cli import lightning_main, main
from tokgen.generator import GPT
from tokgen.resume import AtomicCheckpointIO, remove_stale_temp_files
from tokgen.tokenizers import Tokenizer1D, load_tokenizer

from test_generator_training import write_recipe as generator_recipe  # tiny token shards + generator recipe
from test_training import KillAt  # raises in on_train_batch_end at a given step

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RECIPE = os.path.join(ROOT, "configs", "tokenizer", "shapes_tiny.yaml")
# shapes_tiny at 16x16, width 16, one block each side; 32 training images in batches of 4: 8 steps per epoch
TINY = ["--model.init_args.tokenizer.image_size=16", "--data.init_args.image_size=16",
        "--model.init_args.tokenizer.width=16", "--model.init_args.tokenizer.encoder_depth=1",
        "--model.init_args.tokenizer.decoder_depth=1", "--model.init_args.tokenizer.num_heads=2",
        "--data.init_args.train_size=32", "--data.init_args.val_size=8", "--data.init_args.batch_size=4",
        "--trainer.val_check_interval=10", "--trainer.limit_val_batches=1", "--trainer.num_sanity_val_steps=0",
        "--checkpoint.every_n_train_steps=3",
        "--trainer.enable_progress_bar=false", "--trainer.enable_model_summary=false", "--trainer.logger=false"]
STEPS_PER_EPOCH = 8


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """The killed `tokgen fit` process computes with one thread; the in-process runs compared with it must too
    (and tiny models train fastest on one thread of a busy machine)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def fit_args(root, *extra):
    return ["fit", "--config", RECIPE, f"--trainer.default_root_dir={root}", *TINY, *extra]


def tokgen_fit(root, *extra) -> subprocess.Popen:
    """A real `tokgen fit` process on this checkout (one thread, so two runs compute bit-identically)."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([ROOT, os.environ.get("PYTHONPATH", "")]),
           "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-m", "tokgen.cli", *fit_args(root, *extra)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def flatten(tree, prefix=""):
    if isinstance(tree, dict):
        for k, v in tree.items():
            yield from flatten(v, f"{prefix}/{k}")
    elif isinstance(tree, (list, tuple)):
        for i, v in enumerate(tree):
            yield from flatten(v, f"{prefix}/{i}")
    else:
        yield prefix, tree


def assert_same_training_state(path_a, path_b):
    """Weights (incl. EMA), optimizer and LR schedule, random streams, step counters and data position equal
    bit for bit (torch.equal on every tensor)."""
    a, b = (torch.load(p, map_location="cpu", weights_only=True) for p in (path_a, path_b))
    assert any(k.startswith("ema_tokenizer.") for k in a["state_dict"])
    assert a["global_step"] == b["global_step"] and a["tokgen"] == b["tokgen"]
    trees = {"state_dict": (a["state_dict"], b["state_dict"]),
             "optimizer_states": (a["optimizer_states"], b["optimizer_states"]),
             "lr_schedulers": (a["lr_schedulers"], b["lr_schedulers"]),
             "rng": (a["callbacks"]["TrainingRng"], b["callbacks"]["TrainingRng"]),
             "data": (a["loops"]["fit_loop"]["state_dict"]["combined_loader"],
                      b["loops"]["fit_loop"]["state_dict"]["combined_loader"])}
    for name, (ta, tb) in trees.items():
        fa, fb = dict(flatten(ta, name)), dict(flatten(tb, name))
        assert fa.keys() == fb.keys(), name
        tensors = 0
        for key, va in fa.items():
            if isinstance(va, torch.Tensor):
                assert torch.equal(va, fb[key]), key
                tensors += 1
            else:
                assert va == fb[key], key
        assert tensors > 0 or name in ("lr_schedulers", "data"), name


# ----------------------------------------------------------------------------------------------------------------
# exact resume
# ----------------------------------------------------------------------------------------------------------------


def test_sigkill_mid_epoch_then_resume_last_is_bit_identical_to_an_uninterrupted_run(tmp_path, capsys):
    steps = 31  # not a multiple of every_n_train_steps: the final step file must still be written
    run = tokgen_fit(tmp_path / "run", f"--trainer.max_steps={steps}")
    lightning_main(fit_args(tmp_path / "ref", f"--trainer.max_steps={steps}"))  # uninterrupted, meanwhile
    ckpts = tmp_path / "run" / "checkpoints"
    deadline = time.time() + 300
    while not (ckpts / "step=0000009.ckpt").exists():  # step 9: the second epoch has begun
        assert run.poll() is None, run.stderr.read()[-3000:]
        assert time.time() < deadline
        time.sleep(0.002)
    run.send_signal(signal.SIGKILL)
    run.communicate()
    assert run.returncode == -signal.SIGKILL
    killed_at = load_checkpoint(str(ckpts / "last.ckpt"))["global_step"]  # intact whenever the kill came
    assert 6 <= killed_at < steps and killed_at % STEPS_PER_EPOCH != 0  # resumes mid-epoch

    capsys.readouterr()
    lightning_main(fit_args(tmp_path / "run", f"--trainer.max_steps={steps}", "--ckpt_path", "last"))
    err = capsys.readouterr().err
    assert "not resumable" not in err  # Lightning's warning for a loader that restarts its epoch
    for run_dir in ("ref", "run"):
        assert (tmp_path / run_dir / "checkpoints" / f"step={steps:07d}.ckpt").is_file()
    assert_same_training_state(tmp_path / "ref" / "checkpoints" / "last.ckpt", ckpts / "last.ckpt")
    assert not glob.glob(str(ckpts / ".*"))  # a temp file of a save the kill interrupted is gone


def test_resume_from_the_checkpoint_at_an_epoch_end_with_a_loader_worker_is_bit_identical(tmp_path):
    """Checkpoints every 4 steps with 8 steps per epoch: the kill after step 9 resumes from step 8, the last batch
    of epoch 0, and the resumed run crosses two more epoch boundaries. Batches come from a worker process and the
    run validates every 3 steps: the resumed process starts its validation loader at another step than the
    uninterrupted one did, which must not shift the training random stream."""
    extra = ["--trainer.max_steps=22", "--checkpoint.every_n_train_steps=4", "--data.init_args.num_workers=1",
             "--trainer.val_check_interval=3"]
    reference = lightning_main(fit_args(tmp_path / "ref", *extra))
    assert isinstance(reference.trainer.strategy.checkpoint_io, AtomicCheckpointIO)
    cli = lightning_main(fit_args(tmp_path / "run", *extra)[1:], run=False)
    cli.trainer.callbacks.append(KillAt(9))
    with pytest.raises(RuntimeError, match="simulated kill"):
        cli.trainer.fit(cli.model, cli.datamodule)
    last = tmp_path / "run" / "checkpoints" / "last.ckpt"
    assert torch.load(last, weights_only=True)["global_step"] == 8
    lightning_main(fit_args(tmp_path / "run", *extra, "--ckpt_path", "last"))
    assert_same_training_state(tmp_path / "ref" / "checkpoints" / "last.ckpt", last)


# ----------------------------------------------------------------------------------------------------------------
# atomic checkpoint writes
# ----------------------------------------------------------------------------------------------------------------


def test_failed_save_keeps_the_previous_checkpoint_and_leaves_no_temp_file(tmp_path, monkeypatch):
    path = tmp_path / "last.ckpt"
    io = AtomicCheckpointIO()
    io.save_checkpoint({"state_dict": {"w": torch.ones(4)}, "global_step": 1}, path)

    def half_written(obj, f):
        f.write(b"PK\x03\x04 partial")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(torch, "save", half_written)
    with pytest.raises(OSError, match="No space left"):
        io.save_checkpoint({"state_dict": {"w": torch.zeros(4)}, "global_step": 2}, path)
    monkeypatch.undo()
    assert torch.equal(load_checkpoint(str(path))["state_dict"]["w"], torch.ones(4))
    assert os.listdir(tmp_path) == ["last.ckpt"]


KILL_DURING_SAVE = """
import os, signal, sys, torch
from tokgen.resume import AtomicCheckpointIO
io, path = AtomicCheckpointIO(), sys.argv[1]
io.save_checkpoint({"state_dict": {"w": torch.ones(4)}, "global_step": 1}, path)
os.fsync = lambda fd: os.kill(os.getpid(), signal.SIGKILL)  # killed after the new bytes, before the rename
io.save_checkpoint({"state_dict": {"w": torch.zeros(4)}, "global_step": 2}, path)
"""


def test_sigkill_during_a_save_keeps_the_previous_checkpoint(tmp_path):
    path = tmp_path / "last.ckpt"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([ROOT, os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run([sys.executable, "-c", KILL_DURING_SAVE, str(path)], env=env, capture_output=True)
    assert proc.returncode == -signal.SIGKILL, proc.stderr.decode()[-2000:]
    assert torch.equal(load_checkpoint(str(path))["state_dict"]["w"], torch.ones(4))
    orphans = glob.glob(str(tmp_path / ".last.ckpt.*.tmp"))
    assert len(orphans) == 1 and os.path.getsize(orphans[0]) > 0
    live = tmp_path / f".step=0000003.ckpt.{os.getpid()}.abcd.tmp"  # a save still running in this process
    live.write_bytes(b"in progress")
    assert remove_stale_temp_files(str(tmp_path)) == orphans
    assert sorted(os.listdir(tmp_path)) == sorted(["last.ckpt", live.name])


# ----------------------------------------------------------------------------------------------------------------
# --ckpt_path: damaged, missing, wrong; negative step counts
# ----------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A finished 7-step run (checkpoints at steps 3, 6, 7) and a generator checkpoint."""
    root = tmp_path_factory.mktemp("trained")
    lightning_main(fit_args(root / "tok", "--trainer.max_steps=7"))
    lightning_main(["fit", "--config", generator_recipe(root / "gen", max_steps=2), "--trainer.logger=false",
                    "--trainer.enable_progress_bar=false", "--trainer.enable_model_summary=false"])
    return {"ckpts": root / "tok" / "checkpoints", "generator": root / "gen" / "run" / "checkpoints" / "last.ckpt"}


def refused(capsys, argv, *expected):
    """Run the CLI, expect exit code 2 with one error line holding every ``expected`` text and no traceback."""
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if ": error: " in line]
    assert len(lines) == 1, err[-2000:]
    for text in expected:
        assert str(text) in lines[0], lines[0]
    return lines[0]


def test_ckpt_path_last_without_any_checkpoint_is_refused(tmp_path, capsys):
    refused(capsys, fit_args(tmp_path / "new", "--ckpt_path", "last"),
            "no checkpoint in", tmp_path / "new" / "checkpoints")
    assert not (tmp_path / "new").exists()  # nothing written


@pytest.mark.parametrize("damage", ["empty", "truncated", "missing"])
def test_ckpt_path_to_a_damaged_or_missing_file_is_refused(tmp_path, capsys, trained, damage):
    bad = tmp_path / "bad.ckpt"
    if damage == "empty":
        bad.write_bytes(b"")
        expected = "is empty (0 bytes"
    elif damage == "truncated":
        bad.write_bytes((trained["ckpts"] / "last.ckpt").read_bytes()[:20000])
        expected = "is corrupt"
    else:
        expected = "not found"
    refused(capsys, fit_args(tmp_path / "run", "--ckpt_path", str(bad)), bad, expected)
    assert not (tmp_path / "run").exists()


def test_validate_with_an_empty_checkpoint_is_refused(tmp_path, capsys):
    bad = tmp_path / "empty.ckpt"
    bad.write_bytes(b"")
    argv = fit_args(tmp_path / "run", "--ckpt_path", str(bad))
    refused(capsys, ["validate", *argv[1:]], bad, "is empty")


def test_ckpt_path_to_a_generator_checkpoint_is_refused_before_training(tmp_path, capsys, trained):
    path = trained["generator"]
    refused(capsys, fit_args(tmp_path / "run", "--ckpt_path", str(path)),
            path, "kind 'generator'", "does not fit the model", "TokenizerModule", "missing")
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_ckpt_path_of_another_width_is_refused_before_training(tmp_path, capsys, trained):
    path = trained["ckpts"] / "last.ckpt"
    refused(capsys, fit_args(tmp_path / "run", "--model.init_args.tokenizer.width=24", "--ckpt_path", str(path)),
            path, "does not fit the model", "another shape", "(16,) vs (24,)")


def test_weights_only_checkpoint_cannot_resume_training(tmp_path, capsys, trained):
    ckpt = torch.load(trained["ckpts"] / "last.ckpt", map_location="cpu", weights_only=True)
    del ckpt["optimizer_states"], ckpt["lr_schedulers"]
    path = tmp_path / "weights.ckpt"
    torch.save(ckpt, path)
    refused(capsys, fit_args(tmp_path / "run", "--ckpt_path", str(path)), path, "holds weights only")


def test_final_step_is_saved_also_without_step_checkpoints(tmp_path):
    lightning_main(fit_args(tmp_path, "--trainer.max_steps=5", "--checkpoint.every_n_train_steps=0"))
    ckpts = tmp_path / "checkpoints"
    assert sorted(os.listdir(ckpts)) == ["last.ckpt", "step=0000005.ckpt"]
    for name in os.listdir(ckpts):
        assert load_checkpoint(str(ckpts / name))["global_step"] == 5


@pytest.mark.parametrize("option, value, expected", [
    ("trainer.max_steps", -5, "trainer.max_steps must be -1 (no step limit) or an int >= 0, got -5"),
    ("checkpoint.every_n_train_steps", -2, "checkpoint.every_n_train_steps must be an int >= 0"),
])
def test_negative_step_counts_are_refused(tmp_path, capsys, option, value, expected):
    refused(capsys, fit_args(tmp_path / "run", f"--{option}={value}"), expected)
    assert not (tmp_path / "run").exists()


def test_damaged_last_ckpt_falls_back_to_the_newest_intact_step_checkpoint(tmp_path, capsys, trained):
    ckpts = tmp_path / "run" / "checkpoints"
    shutil.copytree(trained["ckpts"], ckpts)
    (ckpts / "last.ckpt").write_bytes(b"")  # what a non-atomic save killed at the wrong moment leaves
    step7 = ckpts / "step=0000007.ckpt"
    step7.write_bytes(step7.read_bytes()[:5000])  # truncated: skipped
    for age, name in enumerate(["step=0000007.ckpt", "step=0000006.ckpt", "step=0000003.ckpt"]):
        os.utime(ckpts / name, (time.time() - age, time.time() - age))
    cli = lightning_main(fit_args(tmp_path / "run", "--trainer.max_steps=9", "--ckpt_path", "last"))
    err = capsys.readouterr().err
    notes = [line for line in err.splitlines() if line.startswith("tokgen fit:")]
    assert notes == [f"tokgen fit: checkpoint {ckpts / 'last.ckpt'} is empty (0 bytes; a save that was interrupted?); "
                     f"resuming from the newest intact checkpoint {ckpts / 'step=0000006.ckpt'}"]
    assert cli.trainer.global_step == 9 and cli.model.generator_steps == 9
    assert load_checkpoint(str(ckpts / "last.ckpt"))["global_step"] == 9


def test_no_intact_checkpoint_at_all_is_refused_naming_the_files(tmp_path, capsys):
    ckpts = tmp_path / "run" / "checkpoints"
    ckpts.mkdir(parents=True)
    (ckpts / "last.ckpt").write_bytes(b"")
    (ckpts / "step=0000003.ckpt").write_bytes(b"PK\x03\x04 not a zip")
    refused(capsys, fit_args(tmp_path / "run", "--ckpt_path", "last"), "no intact checkpoint in",
            ckpts / "last.ckpt", "is empty", ckpts / "step=0000003.ckpt", "is corrupt")


@pytest.mark.parametrize("loader", [Tokenizer1D.from_checkpoint, GPT.from_checkpoint, load_tokenizer,
                                    checkpoint_kind, load_checkpoint])
def test_every_checkpoint_loader_names_an_empty_file(tmp_path, loader):
    bad = tmp_path / "empty.ckpt"
    bad.write_bytes(b"")
    with pytest.raises(ValueError, match=f"checkpoint {bad} is empty"):
        loader(str(bad))
