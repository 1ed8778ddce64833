"""Streaming data (litdata chunks): ``tokgen prepare-data`` round trips, rank/worker disjointness under 2-process
gloo DDP, mid-epoch resume (loader state and through a Lightning checkpoint), a tokenizer fit, bad inputs."""
from __future__ import annotations

import hashlib
import itertools
import json
import os

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp
import yaml
from lightning.pytorch import Callback, LightningModule, Trainer
from PIL import Image
from safetensors.torch import save_file

from conftest import ROOT, free_port
from tokgen.cli import main
from tokgen.data import ImageFolderDataModule, TokenShardDataModule
from tokgen.data.streaming import StreamingImageDataModule, StreamingTokenDataModule, prepare_images, prepare_tokens
from tokgen.data.tokens import FORMAT, FORMAT_VERSION, INDEX_NAME, shard_name

N_IMAGES, SIZE = 40, 16


def make_folder(root, n=N_IMAGES):
    """n random RGB PNGs of varied sizes in two class subfolders."""
    rng = np.random.default_rng(0)
    for i in range(n):
        cls = root / "ab"[i % 2]
        cls.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (18 + i % 7, 17 + i % 5, 3), dtype=np.uint8)).save(cls / f"{i:03d}.png")
    return root


@pytest.fixture(scope="module")
def chunks(tmp_path_factory):
    """The tiny folder and its chunks (PNG, 4 samples per chunk, 4 held out for validation)."""
    base = tmp_path_factory.mktemp("stream")
    folder = make_folder(base / "images")
    out = base / "chunks"
    prepare_images(str(folder), str(out), SIZE, val_fraction=0.1, chunk_size=4, workers=2)
    return folder, out


def key(image):
    """Identity of one sample: its pixels (images in [-1, 1] map back to uint8 exactly)."""
    return hashlib.sha1(image.add(1).mul(127.5).round().to(torch.uint8).numpy().tobytes()).hexdigest()


def all_keys(out):
    dm = StreamingImageDataModule(str(out), random_flip=False)
    dm.setup()
    return sorted(key(dm.train_set[i]["image"]) for i in range(len(dm.train_set)))


# --------------------------------------------------------------------------------------------------
# prepare-data round trips
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("encoding", ["png", "raw"])
def test_prepare_images_round_trip_equals_image_folder(chunks, tmp_path, encoding):
    folder, out = chunks
    if encoding != "png":
        out = tmp_path / encoding
        main(["prepare-data", "images", "--input", str(folder), "--out", str(out), "--image-size", str(SIZE),
              "--val-fraction", "0.1", "--chunk-size", "4", "--workers", "1", "--encoding", encoding])
    ref = ImageFolderDataModule(str(folder), image_size=SIZE, val_fraction=0.1, random_flip=False)
    ref.setup()
    dm = StreamingImageDataModule(str(out), image_size=SIZE, num_classes=2, random_flip=False)
    dm.setup()
    assert dm.classes == ["a", "b"] and dm.image_size == SIZE and dm.num_classes == 2
    for split in ("train", "val"):
        want, got = getattr(ref, f"{split}_set"), getattr(dm, f"{split}_set")
        assert len(got) == len(want) == {"train": 36, "val": 4}[split]
        for i in range(len(want)):  # chunks keep the folder order
            a, b = want[i], got[i]
            assert b["image"].dtype == torch.float32 and b["image"].shape == (3, SIZE, SIZE)
            assert torch.equal(a["image"], b["image"]) and int(a["label"]) == int(b["label"])
    batch = next(iter(dm.val_dataloader()))
    assert batch["image"].shape == (4, 3, SIZE, SIZE) and batch["label"].dtype == torch.int64


def test_prepare_images_jpeg_is_close_to_the_pixels(tmp_path):
    folder = tmp_path / "images"
    folder.mkdir()
    ramp = np.linspace(0, 1, 24)[None, :, None]
    for i, colour in enumerate(np.random.default_rng(1).uniform(0, 255, (6, 3))):  # smooth images, flat layout
        Image.fromarray((ramp * colour + (1 - ramp) * colour[::-1]).repeat(24, 0).astype(np.uint8)).save(
            folder / f"{i}.png")
    prepare_images(str(folder), str(tmp_path / "out"), SIZE, class_subfolders=False, val_fraction=0.5,
                   encoding="jpeg")
    ref = ImageFolderDataModule(str(folder), image_size=SIZE, class_subfolders=False, val_fraction=0.5,
                                random_flip=False)
    ref.setup()
    dm = StreamingImageDataModule(str(tmp_path / "out"), random_flip=False)
    dm.setup()
    assert dm.num_classes == 1 and len(dm.train_set) == len(ref.train_set) == 3
    for i in range(3):
        error = (ref.train_set[i]["image"] - dm.train_set[i]["image"]).abs()
        assert 0 < error.mean() < 0.03 and int(dm.train_set[i]["label"]) == 0  # lossy, but a few levels only



def test_prepare_data_detects_a_flat_folder_like_fit(tmp_path, capsys):
    """`tokgen prepare-data images` on a folder of images (no class subfolders) without --flat: detected, one
    class, as `tokgen fit`'s ImageFolderDataModule detects it."""
    from tokgen.cli import main

    folder = tmp_path / "photos"
    folder.mkdir()
    for i, colour in enumerate(np.random.default_rng(2).uniform(0, 255, (4, 3))):
        Image.fromarray(np.full((20, 20, 3), colour, dtype=np.uint8)).save(folder / f"{i}.png")
    main(["prepare-data", "images", "--input", str(folder), "--out", str(tmp_path / "out"), "--image-size", str(SIZE),
          "--val-fraction", "0.25"])
    dm = StreamingImageDataModule(str(tmp_path / "out"), random_flip=False)
    dm.setup()
    assert dm.num_classes == 1 and len(dm.train_set) == 3 and len(dm.val_set) == 1

def write_token_shards(path, n=30, K=6, codebook=50):
    g = torch.Generator().manual_seed(0)
    codes = torch.randint(0, codebook, (n, K), generator=g).to(torch.int16)
    lengths = torch.randint(1, K + 1, (n,), generator=g).to(torch.int32)
    labels = torch.randint(0, 3, (n,), generator=g)
    os.makedirs(path)
    save_file({"codes": codes, "lengths": lengths, "labels": labels}, os.path.join(path, shard_name(0)))
    index = {"format": FORMAT, "version": FORMAT_VERSION, "complete": True, "num_examples": n, "num_tokens": K,
             "codebook_size": codebook, "num_classes": 3, "shard_size": n,
             "tokenizer": {"fingerprint": "x", "config": {"image_size": 32, "channels": 3}},
             "shards": [{"file": shard_name(0), "num_examples": n}]}
    with open(os.path.join(path, INDEX_NAME), "w") as f:
        json.dump(index, f)


def test_prepare_tokens_round_trip(tmp_path):
    write_token_shards(str(tmp_path / "shards"))
    main(["prepare-data", "tokens", "--input", str(tmp_path / "shards"), "--out", str(tmp_path / "tok"),
          "--val-size", "6", "--chunk-size", "8"])
    ref = TokenShardDataModule(str(tmp_path / "shards"), val_size=6, max_tokens=4)
    ref.setup()
    dm = StreamingTokenDataModule(str(tmp_path / "tok"), max_tokens=4, batch_size=4)
    assert (dm.codebook_size, dm.num_tokens, dm.num_classes, dm.image_size) == (50, 4, 3, 32)  # known before setup
    dm.setup()
    for split in ("train", "val"):
        want, got = getattr(ref, f"{split}_set"), getattr(dm, f"{split}_set")
        assert len(got) == len(want) == {"train": 24, "val": 6}[split]
        for i in range(len(want)):
            for name in ("codes", "length", "label"):
                assert got[i][name].dtype == torch.int64 and torch.equal(got[i][name], want[i][name])
    batch = next(iter(dm.train_dataloader()))
    assert batch["codes"].shape == (4, 4) and batch["length"].max() <= 4


# --------------------------------------------------------------------------------------------------
# DDP: disjoint ranks and workers
# --------------------------------------------------------------------------------------------------


def ddp_worker(rank, world, port, out, result):
    torch.distributed.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        dm = StreamingImageDataModule(str(out), random_flip=False, batch_size=3, num_workers=2)
        dm.setup("fit")
        keys = [key(img) for batch in dm.train_dataloader() for img in batch["image"]]
        with open(f"{result}.{rank}", "w") as f:
            json.dump(keys, f)
    finally:
        torch.distributed.destroy_process_group()


def test_two_rank_gloo_ddp_sees_disjoint_samples_covering_the_set(chunks, tmp_path):
    _, out = chunks
    result = str(tmp_path / "keys")
    mp.start_processes(ddp_worker, args=(2, free_port(), out, result), nprocs=2, start_method="fork")
    seen = [json.load(open(f"{result}.{rank}")) for rank in range(2)]
    assert len(seen[0]) == len(seen[1]) == 18  # 36 training samples, 2 ranks, 2 workers each, batches of 3
    assert not set(seen[0]) & set(seen[1])
    assert len(set(seen[0])) == 18  # the two workers of a rank do not repeat each other either
    assert sorted(seen[0] + seen[1]) == all_keys(out)


# --------------------------------------------------------------------------------------------------
# Resume
# --------------------------------------------------------------------------------------------------


def epoch_keys(loader, stop=None):
    """Sample keys of each batch, of the whole epoch or of its first ``stop`` batches (no batch fetched beyond)."""
    return [[key(img) for img in batch["image"]] for batch in itertools.islice(loader, stop)]


@pytest.mark.parametrize("num_workers", [0, 2])
def test_resume_from_loader_state_yields_exactly_the_remaining_batches(chunks, num_workers):
    _, out = chunks

    def fresh():
        return StreamingImageDataModule(str(out), random_flip=False, batch_size=4, num_workers=num_workers, seed=3)

    full = epoch_keys(fresh().train_dataloader())
    assert len(full) == 9 and sorted(sum(full, [])) == all_keys(out)
    first = fresh()
    head = epoch_keys(first.train_dataloader(), stop=4)
    state = first.state_dict()
    resumed = fresh()
    resumed.load_state_dict(state)  # as Lightning does from a checkpoint, before the loader exists
    tail = epoch_keys(resumed.train_dataloader())
    assert head == full[:4] and tail == full[4:]
    assert epoch_keys(fresh().train_dataloader()) == full  # the order is a function of the seed and epoch


class Recorder(LightningModule):
    """Records the samples of every training batch it receives."""

    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(1))
        self.seen = []

    def training_step(self, batch, batch_idx):
        self.seen.append([key(img) for img in batch["image"]])
        return (self.w * batch["image"].mean()).sum() + self.w.square().sum()

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


class SaveAndKill(Callback):
    """Writes a checkpoint after training step ``step`` (as ModelCheckpoint does), then kills the run."""

    def __init__(self, step, path):
        self.step, self.path, self.seen = step, path, None

    def on_train_batch_end(self, trainer, pl_module, *args):
        if trainer.global_step == self.step:
            self.seen = list(pl_module.seen)
            trainer.save_checkpoint(self.path)
            raise RuntimeError("simulated kill")


def test_lightning_ckpt_resume_continues_the_epoch(chunks, tmp_path):
    _, out = chunks
    ckpt = str(tmp_path / "mid.ckpt")

    def run(callbacks=(), ckpt_path=None):
        model = Recorder()
        trainer = Trainer(max_epochs=1, accelerator="cpu", devices=1, logger=False, enable_progress_bar=False,
                          enable_model_summary=False, limit_val_batches=0, default_root_dir=str(tmp_path),
                          enable_checkpointing=False, callbacks=list(callbacks))
        trainer.fit(model, StreamingImageDataModule(str(out), random_flip=False, batch_size=4, seed=5),
                    ckpt_path=ckpt_path)
        return model.seen

    full = run()
    assert len(full) == 9
    kill = SaveAndKill(3, ckpt)
    with pytest.raises(RuntimeError, match="simulated kill"):
        run([kill])  # killed mid-epoch, after the trainer had already fetched batch 4
    head = kill.seen
    tail = run(ckpt_path=ckpt)
    assert head == full[:3] and tail == full[3:]


# --------------------------------------------------------------------------------------------------
# A tokenizer recipe on streamed images
# --------------------------------------------------------------------------------------------------


def fit_three_steps(tmp_path, model, data):
    """``tokgen fit`` (LightningCLI) for 3 CPU steps with one validation batch; returns the CLI."""
    from tokgen.cli import lightning_main

    cfg = {
        "seed_everything": 0,
        "trainer": {"accelerator": "cpu", "devices": 1, "precision": "32-true", "max_steps": 3,
                    "val_check_interval": 3, "check_val_every_n_epoch": None, "limit_val_batches": 1,
                    "logger": False, "enable_progress_bar": False, "default_root_dir": str(tmp_path / "run")},
        "model": model,
        "data": data,
    }
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(yaml.safe_dump(cfg))
    return lightning_main(["fit", "--config", str(recipe)])


def test_fit_tiny_tokenizer_on_streaming_data(chunks, tmp_path):
    _, out = chunks
    cli = fit_three_steps(tmp_path, {"class_path": "tokgen.lit.TokenizerModule", "init_args": {
        "tokenizer": {"image_size": SIZE, "patch_size": 4, "width": 32, "encoder_depth": 1, "decoder_depth": 1,
                      "num_heads": 2, "num_tokens": 8, "quantizer": {"kind": "fsq", "levels": [5, 5, 5]}},
        "optim": {"lr": 2e-3, "warmup_steps": 1}}},
        {"class_path": "tokgen.data.streaming.StreamingImageDataModule", "init_args": {
            "path": str(out), "image_size": SIZE, "batch_size": 4}})
    assert cli.trainer.global_step == 3
    assert torch.isfinite(cli.trainer.callback_metrics["train/loss"])
    ckpt = torch.load(tmp_path / "run" / "checkpoints" / "last.ckpt", weights_only=False)
    state = ckpt["StreamingImageDataModule"]["train_loader"]
    assert state["num_samples_yielded"] == 3 * 4  # the position after the 3 trained batches


def test_fit_tiny_generator_on_streamed_tokens(tmp_path):
    write_token_shards(str(tmp_path / "shards"))
    prepare_tokens(str(tmp_path / "shards"), str(tmp_path / "tok"), val_size=6, chunk_size=8)
    cli = fit_three_steps(tmp_path, {"class_path": "tokgen.lit.GeneratorModule", "init_args": {
        "generator": {"vocab_size": 50, "block_size": 6, "num_classes": 3, "dim": 32, "n_layer": 1, "n_head": 2},
        "optim": {"lr": 1e-3, "warmup_steps": 1}}},
        {"class_path": "tokgen.data.streaming.StreamingTokenDataModule", "init_args": {
            "path": str(tmp_path / "tok"), "batch_size": 4}})
    assert cli.trainer.global_step == 3
    assert cli.model.tokenizer_info == {"fingerprint": "x", "config": {"image_size": 32, "channels": 3}}
    assert cli.trainer.callback_metrics and all(torch.isfinite(v) for v in cli.trainer.callback_metrics.values())


# --------------------------------------------------------------------------------------------------
# Bad inputs: one message naming the value, exit code 2, nothing left behind
# --------------------------------------------------------------------------------------------------


def bad_cases(tmp_path, folder):
    empty = tmp_path / "empty"
    (empty / "a").mkdir(parents=True)
    held = tmp_path / "held"
    held.mkdir()
    (held / "notes.txt").write_text("x")
    afile = tmp_path / "afile"
    afile.write_text("x")
    corrupt = tmp_path / "corrupt"
    (corrupt / "a").mkdir(parents=True)
    for i in range(3):  # two good images and, between them, one that is not an image
        (corrupt / "a" / f"{i}.png").write_bytes((folder / "a" / "000.png").read_bytes() if i != 1 else b"junk")
    common = ["--image-size", "16", "--workers", "1"]
    return [
        (["images", "--input", str(tmp_path / "missing"), "--out", str(tmp_path / "o1"), *common],
         "--input", "does not exist"),
        (["images", "--input", str(empty), "--out", str(tmp_path / "o2"), *common], "no images found", str(empty)),
        (["images", "--input", str(folder), "--out", str(held), *common], "already holds data", "notes.txt"),
        (["images", "--input", str(folder), "--out", str(afile / "sub"), *common], "cannot be written", "afile"),
        (["images", "--input", str(folder), "--out", str(afile), *common], "existing file", "afile"),
        (["tokens", "--input", str(folder), "--out", str(tmp_path / "o3")], "token shards not found", "index.json"),
        (["images", "--input", str(corrupt), "--out", str(tmp_path / "o4"), "--image-size", "16", "--workers", "2",
          "--val-fraction", "0.4"], "cannot read image", "1.png"),
        (["images", "--input", str(folder), "--out", str(tmp_path / "o5"), *common, "--chunk-bytes", "lots"],
         "--chunk-bytes 'lots'"),
        (["images", "--input", str(folder), "--out", str(tmp_path / "o6"), "--image-size", "16", "--workers", "0"],
         "--workers must be a positive int, got 0"),
    ]


def test_prepare_data_bad_inputs_exit_2_with_one_clear_message(chunks, tmp_path, capsys):
    folder, _ = chunks
    for argv, *needles in bad_cases(tmp_path, folder):
        with pytest.raises(SystemExit) as exc:
            main(["prepare-data", *argv])
        assert exc.value.code == 2, argv
        err = capsys.readouterr().err
        last = err.strip().splitlines()[-1]  # after the progress bar, if writing had started
        assert last.startswith("tokgen prepare-data: error: ") and err.count("error:") == 1, err
        assert "Traceback" not in err, err
        for needle in needles:
            assert needle in last, (needle, err)
    leftovers = sorted(p.name for p in tmp_path.iterdir())
    assert leftovers == ["afile", "corrupt", "empty", "held"]  # no output or partial folder written
    assert os.listdir(tmp_path / "held") == ["notes.txt"]


def test_streaming_datamodule_bad_path_and_kind(chunks, tmp_path):
    _, out = chunks
    with pytest.raises(FileNotFoundError, match="prepare-data images"):
        StreamingImageDataModule(str(tmp_path / "nothing")).setup()
    with pytest.raises(ValueError, match="holds streamed images, not tokens"):
        StreamingTokenDataModule(str(out))
    unread = StreamingImageDataModule(str(tmp_path / "nothing"), image_size=SIZE)  # recipes build before the data
    assert (unread.image_size, unread.num_classes, unread.classes) == (SIZE, None, None)
    with pytest.raises(ValueError, match="image_size=32 but the streamed images"):
        StreamingImageDataModule(str(out), image_size=32)


# --------------------------------------------------------------------------------------------------
# Streaming recipes
# --------------------------------------------------------------------------------------------------

STREAMING_RECIPES = {
    "configs/tokenizer/imagenet_titok_l32_streaming.yaml": "StreamingImageDataModule",
    "configs/tokenizer/imagenet_flextok_d18_streaming.yaml": "StreamingImageDataModule",
    "configs/tokenizer/imagenet_flextok_d18_flow_streaming.yaml": "StreamingImageDataModule",
    "configs/generator/imagenet_gpt_b_streaming.yaml": "StreamingTokenDataModule",
    "configs/generator/imagenet_gpt_l_streaming.yaml": "StreamingTokenDataModule",
}


@pytest.mark.parametrize("recipe", sorted(STREAMING_RECIPES))
def test_streaming_recipe_equals_its_base_but_for_the_data(recipe):
    def load(path):
        with open(os.path.join(ROOT, path)) as f:
            return yaml.safe_load(f)

    streaming, base = load(recipe), load(recipe.replace("_streaming.yaml", ".yaml"))
    assert streaming["data"]["class_path"] == f"tokgen.data.streaming.{STREAMING_RECIPES[recipe]}"
    assert base["data"]["init_args"]["batch_size"] == streaming["data"]["init_args"]["batch_size"]
    del streaming["data"], base["data"]
    assert streaming == base
