"""Bad inputs across every command and the Python API: each is refused with exit code 2 (CLI) or one
ValueError / FileNotFoundError (API), one short message that names the value (and file) and what is accepted,
no traceback, and no partial output left behind.

CLI cases run in-process (``tokgen.cli.main``, stderr captured); three real subprocesses prove that nothing
else reaches the user's terminal. Checkpoints are tiny random models saved once per module.
"""
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch
import yaml
from conftest import set_keys
from PIL import Image

from tokgen.cli import main
from tokgen.generator import GPT, GPTConfig, generate, tokenizer_identity
from tokgen.tokenizers import Tokenizer1D, TokenizerConfig

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NO_GPU = not torch.cuda.is_available()


# ---------------------------------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def work(tmp_path_factory):
    """Tiny tokenizer (16x16, K=8, FSQ 125 codes) and generator checkpoints, image folders with one bad file
    each, a plain file to put outputs "under", a clip, and a finished token folder."""
    d = tmp_path_factory.mktemp("bad_inputs")
    cfg = TokenizerConfig.from_dict(dict(image_size=16, patch_size=4, width=32, encoder_depth=1, decoder_depth=1,
                                         num_heads=2, num_tokens=8, quantizer={"kind": "fsq", "levels": [5, 5, 5]}))
    torch.manual_seed(0)
    tok = Tokenizer1D(cfg)
    tok_path = str(d / "tok.ckpt")
    torch.save({"state_dict": {f"tokenizer.{k}": v for k, v in tok.state_dict().items()},
                "tokgen": {"kind": "tokenizer1d", "tokenizer_config": cfg.to_dict()}}, tok_path)
    gen = GPT(GPTConfig(vocab_size=125, block_size=8, num_classes=3, dim=32, n_layer=1, n_head=2, hidden_dim=64))
    gen_path = str(d / "gen.ckpt")
    torch.save({"state_dict": {f"generator.{k}": v for k, v in gen.state_dict().items()},
                "tokgen": {"kind": "generator", "generator_config": gen.config.to_dict(),
                           "tokenizer": tokenizer_identity(tok, tok_path)}}, gen_path)

    rng = np.random.default_rng(0)
    good = [rng.integers(0, 255, (20, 20, 3), dtype=np.uint8) for _ in range(3)]
    for name in ("truncated", "textjpg"):
        folder = d / name / "cls"
        folder.mkdir(parents=True)
        for i, a in enumerate(good):
            Image.fromarray(a).save(folder / f"good{i}.png")
    Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(d / "full.png")
    data = (d / "full.png").read_bytes()
    (d / "truncated" / "cls" / "bad.png").write_bytes(data[: len(data) // 2])
    (d / "textjpg" / "cls" / "notes.jpg").write_text("this is not a JPEG\n")
    (d / "afile").write_text("a plain file\n")

    from tokgen.video import write_video

    write_video(str(d / "clip8.gif"), rng.integers(0, 255, (4, 8, 8, 3), dtype=np.uint8))
    main(["tokenize", "--ckpt", tok_path, "--data", "shapes", "--split", "train", "--out", str(d / "tokens"),
          "--limit", "8", "--shard-size", "4", "--batch-size", "4", "--no-progress"])
    return {"dir": d, "tok": tok_path, "gen": gen_path, "truncated": str(d / "truncated"),
            "textjpg": str(d / "textjpg"), "bad_png": str(d / "truncated" / "cls" / "bad.png"),
            "bad_jpg": str(d / "textjpg" / "cls" / "notes.jpg"), "afile": str(d / "afile"),
            "clip8": str(d / "clip8.gif"), "tokens": str(d / "tokens")}


def unwritable_dir(tmp_path) -> str:
    """A folder this process cannot create files in (a read-only folder; as root, /sys)."""
    if os.geteuid() != 0:
        folder = tmp_path / "readonly"
        folder.mkdir()
        folder.chmod(0o555)
        return str(folder)
    if os.path.isdir("/sys") and _cannot_create("/sys"):
        return "/sys"
    pytest.skip("no unwritable folder available to root here")


def _cannot_create(folder: str) -> bool:
    try:
        open(os.path.join(folder, ".tokgen_probe"), "w").close()
    except OSError:
        return True
    os.remove(os.path.join(folder, ".tokgen_probe"))
    return False


def cli_error(capsys, argv, *needles, absent=()):
    """Run ``tokgen argv`` in-process: exit code 2, one short message on stderr containing every needle, no
    traceback, no path of ``absent`` created. Returns the message."""
    capsys.readouterr()
    with pytest.raises(SystemExit) as info:
        main(argv)
    err = capsys.readouterr().err
    assert info.value.code == 2, err
    assert "Traceback" not in err
    message = err.strip()
    assert "usage:" not in message and len(message.splitlines()) <= 3, message
    for needle in needles:
        assert str(needle) in message, f"{needle!r} not in {message!r}"
    for path in absent:
        assert not os.path.exists(path), f"{path} was left behind"
    return message


# ---------------------------------------------------------------------------------------------------- fit
def recipe(tmp_path, **overrides):
    cfg = {"seed_everything": 0,
           "trainer": {"accelerator": "cpu", "devices": 1, "max_steps": 1, "limit_val_batches": 1,
                       "enable_progress_bar": False, "enable_model_summary": False, "logger": False,
                       "default_root_dir": str(tmp_path / "run")},
           "model": {"class_path": "tokgen.lit.TokenizerModule", "init_args": {
               "tokenizer": {"image_size": 16, "patch_size": 4, "width": 32, "encoder_depth": 1, "decoder_depth": 1,
                             "num_heads": 2, "num_tokens": 8, "quantizer": {"kind": "fsq", "levels": [5, 5, 5]}},
               "optim": {"lr": 2e-3, "warmup_steps": 1}, "ema_decay": 0.9}},
           "data": {"class_path": "tokgen.data.ShapesDataModule", "init_args": {
               "image_size": 16, "train_size": 16, "val_size": 4, "batch_size": 4}}}
    set_keys(cfg, overrides)
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return str(path)


OPTIM = "model.init_args.optim"
TOKENIZER = "model.init_args.tokenizer"


@pytest.mark.parametrize("key,value,needles", [
    (f"{OPTIM}.grad_clip", -1, ["optim.grad_clip", "-1", ">= 0"]),  # used to turn clipping off silently
    (f"{OPTIM}.min_lr_ratio", 5, ["optim.min_lr_ratio", "5", "[0, 1]"]),  # used to raise the LR 5x
    (f"{OPTIM}.warmup_steps", -3, ["optim.warmup_steps", "-3", "non-negative int"]),
    (f"{OPTIM}.lr", 0, ["optim.lr", "0", "> 0"]),
    (f"{TOKENIZER}.mlp_ratio", 0, ["mlp_ratio", "0", "> 0"]),
    ("model.init_args.ema_decay", 2.0, ["ema_decay=2.0", "[0, 1)"]),
    ("data.init_args.batch_size", 0, ["batch_size", "positive int", "got 0"]),
])
def test_fit_refuses_bad_values(tmp_path, capsys, key, value, needles):
    cli_error(capsys, ["fit", "--config", recipe(tmp_path, **{key: value})], *needles, absent=[tmp_path / "run"])


@pytest.mark.parametrize("extra,needles", [
    (["--trainer.max_stepz=3"], ["trainer.max_stepz", "'3'", "did you mean trainer.max_steps"]),
    (["--trainer.max_steps=abc"], ["trainer.max_steps", "int", "abc"]),
    (["--model.class_path", "tokgen.lit.TokenizerModul"], ["model", "'tokgen.lit.TokenizerModul'", "accepted"]),
])
def test_fit_config_errors_are_short(tmp_path, capsys, extra, needles):
    message = cli_error(capsys, ["fit", "--config", recipe(tmp_path), *extra], *needles, absent=[tmp_path / "run"])
    assert "usage:" not in message


def test_fit_typo_in_recipe_and_data_yaml(tmp_path, capsys):
    path = recipe(tmp_path, **{f"{OPTIM}.warmup_stepz": 1})
    cli_error(capsys, ["fit", "--config", path], f"{OPTIM}.warmup_stepz", "(value 1)", "did you mean warmup_steps",
              "accepted: lr,", absent=[tmp_path / "run"])
    data = tmp_path / "data.yaml"
    data.write_text(yaml.safe_dump({"class_path": "tokgen.data.ShapesDataModule",
                                    "init_args": {"image_size": 16, "trian_size": 64}}))
    cli_error(capsys, ["fit", "--config", recipe(tmp_path), "--data", str(data)], "data.init_args.trian_size",
              "(value 64)", "did you mean train_size", absent=[tmp_path / "run"])
    cli_error(capsys, ["fit", "--config", str(tmp_path / "missing.yaml")], "missing.yaml", "does not exist")
    cli_error(capsys, ["fitt"], "'fitt'", "did you mean 'fit'", "accepted: fit,")


@pytest.mark.skipif(not NO_GPU, reason="this machine has a GPU")
def test_fit_on_a_missing_gpu_is_one_line(tmp_path, capsys):
    cli_error(capsys, ["fit", "--config", recipe(tmp_path), "--trainer.accelerator", "cuda"], "CUDAAccelerator",
              "not available", "['cpu']", absent=[tmp_path / "run"])


@pytest.mark.parametrize("folder,bad", [("truncated", "bad_png"), ("textjpg", "bad_jpg")])
def test_fit_names_an_unreadable_image(work, tmp_path, capsys, folder, bad):
    data = {"class_path": "tokgen.data.ImageFolderDataModule",
            "init_args": {"root": work[folder], "val_root": work[folder], "image_size": 16, "batch_size": 2}}
    cli_error(capsys, ["fit", "--config", recipe(tmp_path, data=data)], work[bad], "unreadable", "accepted: complete")


# ---------------------------------------------------------------------------------------------------- eval
def test_eval_bad_inputs(work, tmp_path, capsys):
    tok, d = work["tok"], work["dir"]
    base = ["eval", "--ckpt", tok, "--data", "shapes", "--num-images", "4", "--metrics", "psnr", "--no-progress",
            "--no-stats-cache"]
    out = str(tmp_path / "r.json")
    cli_error(capsys, [*base, "--out", os.path.join(work["afile"], "r.json")], "afile", "is a file", "accepted")
    nowhere = unwritable_dir(tmp_path)
    cli_error(capsys, [*base, "--out", os.path.join(nowhere, "r.json")], nowhere, "not writable", "accepted")
    cli_error(capsys, [*base, "--budgets", "0", "--out", out], "'0'", "1..8", absent=[out])
    cli_error(capsys, [*base, "--budgets", "99", "--out", out], "'99'", "1..8", absent=[out])
    cli_error(capsys, [*base, "--budgets", "1,x", "--out", out], "'x'", "1..8", absent=[out])
    cli_error(capsys, [*base, "--metrics", "psnr,sharpness", "--out", out], "'sharpness'", "accepted: fid, psnr",
              absent=[out])
    cli_error(capsys, [*base, "--num-images", "1", "--out", out], "--num-images", ">= 2", "got 1", absent=[out])
    cli_error(capsys, [*base, "--batch-size", "0", "--out", out], "--batch-size", "positive int", absent=[out])
    cli_error(capsys, [*base, "--image-size", "32", "--out", out], "--image-size 32", "accepted: --image-size 16",
              absent=[out])
    cli_error(capsys, [*base, "--split", "holdout"], "'holdout'", "choose from")
    cli_error(capsys, ["eval", "--ckpt", tok, "--data", "mnist", "--metrics", "psnr", "--out", out], "'mnist'",
              "use shapes, fmnist, folder:PATH", absent=[out])
    cli_error(capsys, [*base[:5], "--target-errors", "0.1,abc", "--out", out], "'abc'", "0.05,0.08", absent=[out])
    cli_error(capsys, [*base[:5], "--target-errors=-0.1", "--out", out], "'-0.1'", "numbers > 0", absent=[out])
    if NO_GPU:  # one line, not a CUDA traceback
        cli_error(capsys, [*base, "--device", "cuda", "--out", out], "--device cuda", "no CUDA GPU",
                  "accepted: cpu", absent=[out])
    cli_error(capsys, [*base, "--device", "tpu9", "--out", out], "'tpu9'", "accepted: cpu, cuda", absent=[out])


def test_eval_data_yaml_typo_and_syntax(work, tmp_path, capsys):
    out = str(tmp_path / "r.json")
    typo = tmp_path / "typo.yaml"
    typo.write_text(yaml.safe_dump({"data": {"class_path": "tokgen.data.ShapesDataModule",
                                             "init_args": {"image_size": 16, "tset_size": 8}}}))
    base = ["eval", "--ckpt", work["tok"], "--metrics", "psnr", "--no-progress", "--no-stats-cache", "--out", out]
    cli_error(capsys, [*base, "--data", str(typo)], str(typo), "'tset_size'", "did you mean 'test_size'",
              "accepted: image_size", absent=[out])
    broken = tmp_path / "broken.yaml"
    broken.write_text("data:\n  class_path: tokgen.data.ShapesDataModule\n  init_args: {image_size: 16\n")
    cli_error(capsys, [*base, "--data", str(broken)], str(broken), "not valid YAML", "line", "accepted",
              absent=[out])


@pytest.mark.parametrize("folder,bad", [("truncated", "bad_png"), ("textjpg", "bad_jpg")])
def test_eval_names_an_unreadable_image(work, tmp_path, capsys, folder, bad):
    out = str(tmp_path / "r.json")
    cli_error(capsys, ["eval", "--ckpt", work["tok"], "--data", f"folder:{work[folder]}", "--metrics", "psnr",
                       "--no-progress", "--no-stats-cache", "--out", out], work[bad], "unreadable", "accepted",
              absent=[out, str(tmp_path / "r.md")])


# ---------------------------------------------------------------------------------------------------- sample
SAMPLING = [
    (["--top-p", "-0.5"], ["--top-p=-0.5", "(0, 1]"]),  # used to pick the least likely code
    (["--top-p", "1.5"], ["--top-p=1.5", "(0, 1]"]),
    (["--cfg", "-2"], ["--cfg=-2.0", ">= 0"]),
    (["--temperature", "-1"], ["--temperature=-1.0", ">= 0", "0 = greedy"]),
    (["--temperature", "nan"], ["--temperature=nan", "finite"]),
    (["--top-k", "-3"], ["--top-k=-3", "int >= 0"]),
    (["--cfg-schedule", "cosine"], ["'cosine'", "constant, linear"]),
    (["--num", "0"], ["--num", "positive", "got 0"]),
    (["--budget", "0"], ["token budget 0", ">= 1"]),
    (["--budget", "99"], ["token budget 99", "accepted 1..8"]),
    (["--budgets", "1,a"], ["--budgets '1,a'", "integers"]),
    (["--classes", "7"], ["class id 7", "accepted 0..2"]),
    (["--device", "cuda"], ["--device 'cuda'", "auto or cpu"]),
    (["--threads", "0"], ["--threads", "positive", "got 0"]),
    (["--fps", "0"], ["--fps", "> 0", "got 0"]),
]


@pytest.mark.parametrize("extra,needles", SAMPLING)
def test_sample_refuses_bad_options(work, tmp_path, capsys, extra, needles):
    out = str(tmp_path / "s.png")
    cli_error(capsys, ["sample", "--tokenizer", work["tok"], "--generator", work["gen"], "--num", "1",
                       "--out", out, *extra], *needles, absent=[out])


def test_sample_outputs_checked_before_sampling(work, tmp_path, capsys):
    base = ["sample", "--tokenizer", work["tok"], "--generator", work["gen"], "--num", "1"]
    under_file = os.path.join(work["afile"], "s.png")
    cli_error(capsys, [*base, "--out", under_file], "afile", "is a file", "accepted")
    nowhere = unwritable_dir(tmp_path)
    cli_error(capsys, [*base, "--out", os.path.join(nowhere, "s.png")], nowhere, "not writable")
    out = str(tmp_path / "s.png")
    cli_error(capsys, [*base, "--out", out, "--out-dir", os.path.join(work["afile"], "imgs")], "--out-dir", "afile",
              absent=[out])
    cli_error(capsys, [*base, "--out", out, "--out-dir", work["afile"]], "--out-dir", "exists and is a file",
              absent=[out])
    cli_error(capsys, [*base, "--out", out, "--metrics-json", str(tmp_path / "m.txt")], "--metrics-json",
              "ending in .json", absent=[out])
    cli_error(capsys, [*base, "--out", str(tmp_path / "s.txt")], "--out", "s.txt", "ending in .png",
              absent=[tmp_path / "s.txt"])


# ---------------------------------------------------------------------------------------------------- tokenize
def test_tokenize_bad_inputs(work, tmp_path, capsys):
    out = str(tmp_path / "tokens")
    base = ["tokenize", "--ckpt", work["tok"], "--data", "shapes", "--limit", "4", "--no-progress"]
    cli_error(capsys, [*base, "--out", os.path.join(work["afile"], "tokens")], "afile", "is a file")
    cli_error(capsys, [*base, "--out", work["afile"]], "exists and is a file", "accepted: a folder path")
    nowhere = unwritable_dir(tmp_path)
    cli_error(capsys, [*base, "--out", os.path.join(nowhere, "tokens")], nowhere, "not writable")
    cli_error(capsys, [*base, "--out", out, "--split", "holdout"], "'holdout'", "train, val, test", absent=[out])
    cli_error(capsys, [*base, "--out", out, "--shard-size", "0"], "--shard-size", "positive", absent=[out])
    cli_error(capsys, [*base, "--out", out, "--limit", "0"], "--limit", "positive", absent=[out])
    cli_error(capsys, [*base, "--out", out, "--num-workers", "-1"], "--num-workers", "non-negative", absent=[out])
    if NO_GPU:
        cli_error(capsys, [*base, "--out", out, "--device", "cuda"], "--device cuda", "no CUDA GPU", absent=[out])
    cli_error(capsys, [*base, "--out", out, "--device", "cuda:x"], "'cuda:x'", "accepted", absent=[out])
    typo = tmp_path / "typo.yaml"
    typo.write_text(yaml.safe_dump({"class_path": "tokgen.data.ShapesDataModule", "init_args": {"trian_size": 8}}))
    cli_error(capsys, [*base[:3], "--data", str(typo), "--out", out], "'trian_size'", "did you mean 'train_size'",
              "accepted", absent=[out])
    cli_error(capsys, [*base[:3], "--data", "{class_path: [", "--out", out], "not valid YAML", "accepted",
              absent=[out])


def folder_spec(root: str) -> str:
    """Inline --data spec whose val split is every image of ``root`` (so the bad file is read)."""
    return json.dumps({"class_path": "tokgen.data.ImageFolderDataModule",
                       "init_args": {"root": root, "val_root": root, "random_flip": False}})


@pytest.mark.parametrize("folder,bad,workers", [("truncated", "bad_png", "0"), ("textjpg", "bad_jpg", "0"),
                                                ("truncated", "bad_png", "1")])
def test_tokenize_names_an_unreadable_image_and_leaves_no_folder(work, tmp_path, capsys, folder, bad, workers):
    """Also from a DataLoader worker process (torch puts the worker's traceback into the message)."""
    out = str(tmp_path / "tokens")
    message = cli_error(capsys, ["tokenize", "--ckpt", work["tok"], "--data", folder_spec(work[folder]), "--split",
                                 "val", "--out", out, "--no-progress", "--num-workers", workers],
                        work[bad], "unreadable", "accepted", absent=[out])
    assert message.startswith(f"tokgen tokenize: error: image file {work[bad]}")


def test_a_corrupt_shard_in_a_finished_token_folder(work, tmp_path, capsys):
    from tokgen.data import TokenShardDataModule

    folder = tmp_path / "tokens"
    shutil.copytree(work["tokens"], folder)
    shard = folder / "shard_00001.safetensors"
    shard.write_bytes(shard.read_bytes()[:40])
    with pytest.raises(ValueError, match="shard_00001.safetensors is unreadable.*re-run the same `tokgen tokenize`"):
        TokenShardDataModule(str(folder), val_size=0, batch_size=2).setup("fit")
    (folder / "index.json").write_text("{ not json")
    with pytest.raises(ValueError, match="index.json is not valid JSON"):
        TokenShardDataModule(str(folder), val_size=0, batch_size=2)
    data = {"class_path": "tokgen.data.TokenShardDataModule", "init_args": {"path": str(folder)}}
    cli_error(capsys, ["fit", "--config", recipe(tmp_path, data=data)], "index.json", "not valid JSON")


# ---------------------------------------------------------------------------------------------------- video
def test_video_tokenize_bad_inputs(work, tmp_path, capsys):
    clip, out = work["clip8"], str(tmp_path / "o.gif")
    cli_error(capsys, ["video-tokenize", clip, "--size", "0", "--out", out], "--size", ">= 12", "got 0", absent=[out])
    cli_error(capsys, ["video-tokenize", clip, "--size", "8", "--out", out], "--size", ">= 12", "got 8", absent=[out])
    cli_error(capsys, ["video-tokenize", clip, "--out", os.path.join(work["afile"], "o.gif")], "afile", "is a file")
    nowhere = unwritable_dir(tmp_path)
    cli_error(capsys, ["video-tokenize", clip, "--out", os.path.join(nowhere, "o.gif")], nowhere, "not writable")
    cli_error(capsys, ["video-tokenize", clip, "--out", str(tmp_path / "o.txt")], "o.txt", ".gif, .mp4",
              absent=[tmp_path / "o.txt"])
    cli_error(capsys, ["video-tokenize", clip, "--out", out, "--recon", str(tmp_path / "r.gif")], "--recon",
              "needs --ckpt", absent=[out])
    cli_error(capsys, ["video-tokenize", str(tmp_path / "none.mp4"), "--out", out], "none.mp4", "not found",
              absent=[out])
    cli_error(capsys, ["video-tokenize", clip, "--fps", "0", "--out", out], "--fps", "> 0", absent=[out])
    cli_error(capsys, ["video-tokenize", clip, "--out", out, "--extraction", "[1]"], "--extraction", "JSON object",
              absent=[out])


def test_video_eval_bad_inputs(work, tmp_path, capsys):
    from test_video_generation import save_video_tokenizer

    out = str(tmp_path / "v.json")
    video = save_video_tokenizer(tmp_path / "video.ckpt")  # 8 trajectory slots
    cli_error(capsys, ["video-eval", "--ckpt", video, "--budgets", "0,2", "--out", out], "'0'", "1..8", absent=[out])
    cli_error(capsys, ["video-eval", "--ckpt", video, "--budgets", "2,x", "--out", out], "'x'", "1..8", absent=[out])
    cli_error(capsys, ["video-eval", "--ckpt", work["tok"], "--out", out], work["tok"], "not a video tokenizer",
              absent=[out])
    cli_error(capsys, ["video-tokenize", work["clip8"], "--ckpt", work["tok"], "--out", str(tmp_path / "o.gif")],
              work["tok"], "not a video tokenizer", absent=[tmp_path / "o.gif"])
    base = ["video-eval", "--ckpt", str(tmp_path / "never_loaded.ckpt")]  # options are checked first
    cli_error(capsys, [*base, "--num-clips", "0", "--out", out], "--num-clips", "positive", absent=[out])
    cli_error(capsys, [*base, "--batch-size", "0", "--out", out], "--batch-size", "positive", absent=[out])
    cli_error(capsys, [*base, "--out", os.path.join(work["afile"], "v.json")], "afile", "is a file")
    cli_error(capsys, [*base, "--data", "kinetics", "--out", out], "'kinetics'", "moving_shapes, folder:PATH",
              absent=[out])


def test_extract_trajectories_refuses_frames_too_small_for_flow():
    from tokgen.video import extract_trajectories

    with pytest.raises(ValueError, match=r"frames of 8x8 .* too small for optical flow; accepted: .* >= 12"):
        extract_trajectories(np.zeros((3, 8, 8, 3), dtype=np.uint8))


# ---------------------------------------------------------------------------------------------------- refit / features
def test_refit_halting_and_train_features_check_before_work(work, tmp_path, capsys):
    base = ["refit-halting", "--ckpt", work["tok"], "--data", "shapes"]
    out = str(tmp_path / "refit.ckpt")
    cli_error(capsys, [*base, "--out", work["tok"]], "is the input checkpoint", "new file")
    cli_error(capsys, [*base, "--out", os.path.join(work["afile"], "r.ckpt")], "afile", "is a file")
    cli_error(capsys, [*base, "--out", out, "--calibrate", "2", "--target-errors", "0.1"], "--calibrate", "(0, 1]",
              "got 2", absent=[out])
    cli_error(capsys, [*base, "--out", out, "--steps", "0"], "--steps", "positive", absent=[out])
    if NO_GPU:
        cli_error(capsys, [*base, "--out", out, "--device", "cuda"], "no CUDA GPU", absent=[out])
    cli_error(capsys, [*base, "--out", out, "--eps-range", "0.1"], "--eps-range '0.1'", "lo,hi", absent=[out])
    halting = os.path.join(os.path.dirname(__file__), "fixtures", "halting_tokenizer.ckpt")  # a classifier head
    for flag, value, saved in (("--head", "error-model", "halt_head=classifier"),
                               ("--error-metric", "l2", "error_metric=l1")):
        cli_error(capsys, ["refit-halting", "--ckpt", halting, "--data", "shapes", "--out", out, flag, value],
                  f"{flag} {value.replace('-', '_') if flag == '--head' else value}", saved, "a refit keeps",
                  absent=[out])
    feat = str(tmp_path / "f.pt")
    cli_error(capsys, ["train-features", "--data", "shapes", "--out", os.path.join(work["afile"], "f.pt")],
              "afile", "is a file")
    cli_error(capsys, ["train-features", "--data", "shapes", "--out", feat, "--epochs", "0"], "--epochs", "> 0",
              absent=[feat])
    cli_error(capsys, ["train-features", "--data", "shapes", "--out", feat, "--lr", "-1"], "--lr", "> 0",
              absent=[feat])


# ---------------------------------------------------------------------------------------------------- Python API
def test_api_refuses_bad_values(work):
    from tokgen.commands.checks import check_output_path
    from tokgen.data.folder import open_image
    from tokgen.lit import OptimConfig

    with pytest.raises(ValueError, match=r"optim.grad_clip must be a number >= 0, got -1"):
        OptimConfig(grad_clip=-1)
    with pytest.raises(ValueError, match=r"optim.beta2 must be a number in \[0, 1\), got 1"):
        OptimConfig(beta2=1)
    with pytest.raises(ValueError, match=r"mlp_ratio must be a number > 0, got -2"):
        TokenizerConfig(mlp_ratio=-2)
    model = GPT.from_checkpoint(work["gen"])
    labels = torch.tensor([0])
    with pytest.raises(ValueError, match=r"top_p=0 must be in \(0, 1\]"):
        generate(model, labels, 4, top_p=0)
    with pytest.raises(ValueError, match=r"temperature=-0.5 must be >= 0"):
        generate(model, labels, 4, temperature=-0.5)
    with pytest.raises(ValueError, match=r"cfg_scale=-1 must be >= 0"):
        generate(model, labels, 4, cfg_scale=-1)
    with pytest.raises(ValueError, match=r"top_k=-1 must be an int >= 0"):
        generate(model, labels, 4, top_k=-1)
    with pytest.raises(ValueError, match=r"image file .*bad.png is unreadable"):
        open_image(work["bad_png"])
    with pytest.raises(ValueError, match=r"image file .*notes.jpg is unreadable"):
        open_image(work["bad_jpg"])
    from tokgen.metrics.datasets import SampleFolder

    with pytest.raises(ValueError, match=r"image file .*bad.png is unreadable"):  # gFID sample folders too
        SampleFolder(work["truncated"], image_size=20, channels=3)
    with pytest.raises(ValueError, match=r"--out .*afile.* is a file"):
        check_output_path("--out", os.path.join(work["afile"], "sub", "x.json"))
    with pytest.raises(ValueError, match=r"--out '' is empty"):
        check_output_path("--out", "")


def test_sixteen_bit_png_reads_scaled_to_8_bit(tmp_path):
    """A 16-bit greyscale PNG used to be clipped to 255 (99% white); it must read as v / 257."""
    from tokgen.data.folder import open_image
    from tokgen.metrics.datasets import build_data

    values = (np.arange(32 * 32, dtype=np.uint32).reshape(32, 32) * 64).astype(np.uint16)
    (tmp_path / "imgs").mkdir()
    Image.fromarray(values).save(tmp_path / "imgs" / "deep.png")
    assert Image.open(tmp_path / "imgs" / "deep.png").mode.startswith("I")
    rgb = np.asarray(open_image(str(tmp_path / "imgs" / "deep.png")))
    expected = np.rint(values / 257.0).astype(np.uint8)
    assert rgb.shape == (32, 32, 3) and np.array_equal(rgb[..., 0], expected) and np.array_equal(rgb[..., 2], expected)
    assert (rgb == 255).mean() < 0.01
    image = build_data(f"folder:{tmp_path / 'imgs'}", image_size=32).dataset[0]["image"]  # [-1, 1] via the loader
    assert torch.allclose((image[0] + 1) * 127.5, torch.from_numpy(expected).float(), atol=1e-3)


# ---------------------------------------------------------------------------------------------------- subprocesses
def start_tokgen(*args, cwd):
    """Start ``python -m tokgen.cli args`` (this checkout first on the path) as a real process."""
    env = {**os.environ, "PYTHONPATH": ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""), "OMP_NUM_THREADS": "1"}
    env.pop("TOKGEN_DEBUG", None)
    return subprocess.Popen([sys.executable, "-m", "tokgen.cli", *args], cwd=cwd, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def test_real_processes_print_one_short_error_and_exit_2(work, tmp_path):
    """What the user's terminal shows: exit status 2, the short message only (no traceback, no usage text,
    no Lightning warnings about the command line), and no output files. Both processes run at once."""
    out = tmp_path / "tokens"
    fit = start_tokgen("fit", "--config", recipe(tmp_path), "--trainer.max_stepz=3", cwd=tmp_path)
    tok = start_tokgen("tokenize", "--ckpt", work["tok"], "--data", folder_spec(work["truncated"]), "--split", "val",
                       "--out", str(out), "--no-progress", cwd=tmp_path)
    (_, fit_err), (_, tok_err) = fit.communicate(timeout=300), tok.communicate(timeout=300)

    assert fit.returncode == 2
    assert fit_err.startswith("tokgen fit: error: trainer.max_stepz: unknown option"), fit_err
    assert len(fit_err.strip().splitlines()) <= 3 and "Traceback" not in fit_err
    assert "usage:" not in fit_err and "args parameter" not in fit_err
    assert not (tmp_path / "run").exists()

    assert tok.returncode == 2 and "Traceback" not in tok_err
    assert tok_err.strip().splitlines()[-1].startswith(f"tokgen tokenize: error: image file {work['bad_png']}")
    assert not out.exists()


def test_a_normal_fit_prints_no_unactionable_warnings(tmp_path, capsys, monkeypatch, recwarn):
    """``tokgen fit`` as the console script runs it (argv from sys.argv): neither LightningCLI's warning about
    getting the arguments twice nor Lightning's note that tensorboard is not installed is printed."""
    monkeypatch.setattr(sys, "argv", ["tokgen", "fit", "--config", recipe(tmp_path, **{"trainer.logger": None})])
    main()
    printed = capsys.readouterr().err + "".join(str(w.message) for w in recwarn)
    assert "args parameter" not in printed and "tensorboardX" not in printed
    assert list((tmp_path / "run" / "lightning_logs").glob("version_*/hparams.yaml"))  # the CSV logger as before
