"""Your own images, end to end: the documented folder recipe trains on a flat folder of photo crops (held-out
split by file, a validation grid from all over the folder), `tokgen eval --floors` scores another folder against
the mean-image and 4x4 block-mean floors under a clear report name, and a fixed-length checkpoint scored at
k < K carries a note. Tiny model overrides keep it to seconds; the numbers are not the point here."""
import json
import os
import sys

import pytest
import torch

from tokgen.cli import main

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
from make_photo_crops import PHOTOS, write_photo_crops  # noqa: E402

TINY = ["--trainer.max_steps=4", "--trainer.val_check_interval=4", "--trainer.log_every_n_steps=1",
        "--checkpoint.every_n_train_steps=4", "--model.init_args.tokenizer.width=32",
        "--model.init_args.tokenizer.encoder_depth=1", "--model.init_args.tokenizer.decoder_depth=1",
        "--model.init_args.tokenizer.num_heads=2", "--model.init_args.tokenizer.patch_size=8",
        "--model.init_args.tokenizer.num_tokens=8", "--data.init_args.batch_size=8", "--data.init_args.val_size=16",
        "--trainer.accelerator=cpu", "--trainer.devices=1", "--trainer.precision=32-true"]


@pytest.fixture(scope="module")
def crops(tmp_path_factory):
    base = tmp_path_factory.mktemp("crops")
    write_photo_crops(str(base / "train"), 60, photos=PHOTOS["train"][:3])
    write_photo_crops(str(base / "heldout"), 12, photos=PHOTOS["heldout"][:2], seed=1)
    return base


def fit(crops, tmp_path, recipe, *extra):
    main(["fit", "--config", os.path.join(ROOT, "configs/tokenizer", recipe), *TINY,
          f"--data.init_args.root={crops / 'train'}", f"--trainer.default_root_dir={tmp_path}", *extra])
    return str(tmp_path / "checkpoints" / "last.ckpt")


def test_folder_recipe_trains_on_a_flat_folder_and_scores_against_floors(crops, tmp_path):
    ckpt = fit(crops, tmp_path / "run", "folder_small.yaml")
    assert os.path.isfile(ckpt) and (tmp_path / "run" / "samples" / "val_latest.png").stat().st_size > 0
    main(["eval", "--ckpt", ckpt, "--data", f"folder:{crops / 'heldout'}", "--metrics", "psnr", "--floors",
          "--budgets", "1,8", "--no-progress"])
    out = tmp_path / "run" / "eval" / "folder_heldout.json"  # named after the folder, not "<folder>_test"
    report = json.loads(out.read_text())
    floors = report["floors"]
    assert set(floors) == {"mean_image", "block_means_4x4"}
    assert 5 < floors["mean_image"] < floors["block_means_4x4"] < 40  # 48 numbers beat one mean image
    assert "note" not in report  # a nested recipe: every prefix is trained
    table = (tmp_path / "run" / "eval" / "folder_heldout.md").read_text()
    assert "mean image" in table and "block means 4x4" in table
    # the grid shows images spread over the folder: sorted names go photo by photo, so a spread grid mixes photos
    from PIL import Image

    assert Image.open(tmp_path / "run" / "eval" / "folder_heldout_recon.png").size[1] > 0


def test_fixed_length_checkpoint_scored_at_short_prefixes_gets_a_note(crops, tmp_path, capsys):
    ckpt = fit(crops, tmp_path / "fixed", "folder_small.yaml", "--model.init_args.nested_dropout=none")
    out = tmp_path / "fixed.json"
    main(["eval", "--ckpt", ckpt, "--data", f"folder:{crops / 'heldout'}", "--metrics", "psnr", "--budgets", "1,8",
          "--out", str(out), "--no-progress"])
    report = json.loads(out.read_text())
    assert "fixed-length" in report["note"] and "k = 8" in report["note"]
    assert "fixed-length" in capsys.readouterr().err


def test_floors_are_what_their_names_say(tmp_path):
    """On two hand-made 8x8 images the floors equal PSNRs computed by hand: the mean image of the set, and each
    image replaced by its 4x4 grid of 2x2 block means."""
    from tokgen.metrics.evaluate import psnr_floors
    from tokgen.metrics.image import psnr

    g = torch.Generator().manual_seed(0)
    images = (torch.randint(0, 256, (2, 3, 8, 8), generator=g).float() / 255)
    batch = {"image": images * 2 - 1}
    floors = psnr_floors([batch], torch.device("cpu"))
    mean = (images.mean(0, keepdim=True) * 255).round() / 255
    blocks = images.view(2, 3, 4, 2, 4, 2).mean((3, 5))
    blocks = (blocks.repeat_interleave(2, 2).repeat_interleave(2, 3) * 255).round() / 255
    assert abs(floors["mean_image"] - psnr(mean.expand_as(images), images).mean().item()) < 1e-4
    assert abs(floors["block_means_4x4"] - psnr(blocks, images).mean().item()) < 1e-4
