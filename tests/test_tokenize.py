"""`tokgen tokenize`: shards equal the tokenizer's codes, resume skips finished shards, clear errors;
TokenShardDataModule reads them back."""
import json
import os

import pytest
import torch
import yaml

from tokgen.cli import main
from tokgen.commands.tokenize import build_split
from tokgen.data.spec import resolve_data_spec
from tokgen.data import TokenShardDataModule
from tokgen.data.tokens import load_token_shards, read_index
from tokgen.tokenizers import Tokenizer1D


def save_tokenizer(path, config):
    """A checkpoint in the layout `tokgen fit` writes (random weights are enough here)."""
    torch.manual_seed(0)
    tok = Tokenizer1D(config)
    torch.save({"state_dict": {f"tokenizer.{k}": v for k, v in tok.state_dict().items()},
                "tokgen": {"kind": "tokenizer1d", "tokenizer_config": config.to_dict()}}, path)
    return str(path)


def run_tokenize(ckpt, out, *extra):
    main(["tokenize", "--ckpt", ckpt, "--data", "shapes", "--split", "train", "--out", str(out),
          "--limit", "70", "--shard-size", "32", "--batch-size", "16", "--no-progress", *extra])


def cli_error(argv):
    with pytest.raises(SystemExit) as info:
        main(argv)
    return str(info.value.code)


def test_shards_hold_the_tokenizer_codes_and_resume(tiny_config, tmp_path):
    ckpt = save_tokenizer(tmp_path / "tok.ckpt", tiny_config())
    out = tmp_path / "tokens"
    run_tokenize(ckpt, out)
    index = read_index(str(out))
    assert index["complete"] and index["num_shards"] == 3 and [s["num_examples"] for s in index["shards"]] == [32, 32, 6]
    assert index["codebook_size"] == 125 and index["num_tokens"] == 8 and index["num_classes"] == 3
    assert index["tokenizer"]["checkpoint"] == os.path.abspath(ckpt) and len(index["tokenizer"]["fingerprint"]) == 16
    _, codes, lengths, labels = load_token_shards(str(out))
    assert codes.dtype == torch.int16 and codes.shape == (70, 8) and (lengths == 8).all()

    dataset, _ = build_split(resolve_data_spec("shapes", 16, 3), "train")
    items = [dataset[i] for i in range(70)]
    tok = Tokenizer1D.from_checkpoint(ckpt)
    assert torch.equal(codes.long(), tok.encode(torch.stack([it["image"] for it in items])))
    assert torch.equal(labels, torch.stack([it["label"] for it in items]))

    # simulate a run killed after the first shard: the next run re-encodes only the missing ones
    first = out / "shard_00000.safetensors"
    stamp = first.stat().st_mtime_ns
    os.remove(out / "shard_00001.safetensors")
    os.remove(out / "shard_00002.safetensors")
    index["shards"], index["complete"] = index["shards"][:1], False
    (out / "index.json").write_text(json.dumps(index))
    with pytest.raises(ValueError, match="unfinished .*32 of 70"):
        TokenShardDataModule(str(out))
    run_tokenize(ckpt, out)
    assert first.stat().st_mtime_ns == stamp
    _, again, _, _ = load_token_shards(str(out))
    assert torch.equal(again, codes) and read_index(str(out))["complete"]

    # resuming with other settings is refused
    msg = cli_error(["tokenize", "--ckpt", ckpt, "--data", "shapes", "--out", str(out), "--limit", "70",
                     "--shard-size", "16", "--no-progress"])
    assert "another shard_size" in msg and "new --out folder" in msg


def test_token_shard_datamodule(tiny_config, tmp_path):
    ckpt = save_tokenizer(tmp_path / "tok.ckpt", tiny_config())
    run_tokenize(ckpt, tmp_path / "train")
    dm = TokenShardDataModule(str(tmp_path / "train"), val_size=10, batch_size=8)
    assert (dm.codebook_size, dm.num_tokens, dm.num_classes, dm.image_size) == (125, 8, 3, 16)
    dm.setup("fit")
    assert len(dm.train_set) == 60 and len(dm.val_set) == 10
    batch = next(iter(dm.train_dataloader()))
    assert batch["codes"].shape == (8, 8) and batch["codes"].dtype == torch.int64
    assert batch["length"].shape == (8,) and batch["label"].shape == (8,)
    short = TokenShardDataModule(str(tmp_path / "train"), val_path=str(tmp_path / "train"), max_tokens=4, batch_size=8)
    short.setup("fit")
    assert short.num_tokens == 4 and len(short.val_set) == 70
    assert next(iter(short.val_dataloader()))["codes"].shape == (8, 4)
    none = TokenShardDataModule(str(tmp_path / "train"), val_size=0)
    none.setup("fit")
    assert none.val_dataloader() == []
    with pytest.raises(FileNotFoundError, match="tokgen tokenize"):
        TokenShardDataModule(str(tmp_path / "missing")).setup("fit")


def test_data_specs_and_errors(tiny_config, tmp_path):
    assert resolve_data_spec("folder:/x/y", 16, 3) == {
        "class_path": "tokgen.data.ImageFolderDataModule", "init_args": {"root": "/x/y", "image_size": 16, "channels": 3}}
    assert resolve_data_spec("fmnist", 32, 1)["init_args"] == {"image_size": 32, "channels": 1}
    spec = tmp_path / "spec.yaml"
    spec.write_text(yaml.safe_dump({"data": {"class_path": "ShapesDataModule", "init_args": {"max_shapes": 2}}}))
    assert resolve_data_spec(str(spec), 16, 3) == {"class_path": "tokgen.data.ShapesDataModule",
                                                  "init_args": {"max_shapes": 2, "image_size": 16}}
    assert resolve_data_spec('{"class_path": "tokgen.data.ShapesDataModule"}', 16, 3)["init_args"] == {"image_size": 16}

    ckpt = save_tokenizer(tmp_path / "tok.ckpt", tiny_config())
    base = ["tokenize", "--ckpt", ckpt, "--out", str(tmp_path / "o"), "--no-progress"]
    assert "--data 'imagenet' is not accepted" in cli_error([*base, "--data", "imagenet"])
    assert "--split 'dev' is not accepted" in cli_error([*base, "--data", "shapes", "--split", "dev"])
    # a recipe made for 32x32 images does not fit a 16x16 tokenizer
    recipe = os.path.join(os.path.dirname(__file__), "..", "configs", "tokenizer", "shapes_tiny.yaml")
    assert "image_size=32 but the tokenizer expects image_size=16" in cli_error([*base, "--data", recipe])
    assert "checkpoint not found" in cli_error(["tokenize", "--ckpt", str(tmp_path / "no.ckpt"), "--data", "shapes",
                                                "--out", str(tmp_path / "o")])
