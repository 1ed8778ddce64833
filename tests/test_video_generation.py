"""Trajectory tokens as a generator sequence: `tokgen tokenize` on a video tokenizer writes token shards with one
length per clip (its number of trajectories), the generator recipe trains on them, and `tokgen sample` writes
tiled GIF / MP4 clips, the same for the same seed, with one clear error per bad input.

The video tokenizer here has random weights: shard layout, lengths (they come from trajectory extraction) and
output shapes do not depend on training, and decoding random codes exercises the same path as trained ones.
The generator is trained for two steps through its recipe on those shards (only to produce a real checkpoint).
"""
import argparse
import os

import pytest
import torch
from PIL import Image

from conftest import CPU_OVERRIDES, ROOT, build_on_meta
from tokgen.cli import lightning_main, main
from tokgen.commands.sample import generate_budgets
from tokgen.commands.sample import main as sample
from tokgen.commands.sample_video import decode_clips
from tokgen.data.tokens import load_token_shards, read_index
from tokgen.data.video import VideoDataModule
from tokgen.generator import GPT
from tokgen.metrics import to_unit
from tokgen.video import ExtractionConfig, TrajectoryTokenizer, TrajectoryTokenizerConfig, VideoTokenizer
from tokgen.video.io import count_frames

FRAMES, SIZE, SLOTS, GROUPS = 4, 32, 8, 4
# the codes of configs/video/moving_shapes_fsq_tiny.yaml: 4 FSQ codes per trajectory, 4096 entries each
FSQ = {"kind": "fsq", "levels": [8, 8, 8, 8], "dim": 4, "groups": GROUPS}
GEN_RECIPE = os.path.join(ROOT, "configs/generator/moving_shapes_traj_tiny.yaml")
EXTRACTION = {"max_trajectories": SLOTS}


def save_video_tokenizer(path, quantizer=FSQ):
    """A video tokenizer checkpoint in the layout `tokgen fit` writes (random weights, see the module docstring)."""
    torch.manual_seed(0)
    config = TrajectoryTokenizerConfig.from_dict(dict(
        image_size=SIZE, num_frames=FRAMES, patch_size=8, width=32, num_heads=2, encoder_depth=1, decoder_depth=1,
        decoder_width=32, max_tokens=SLOTS, quantizer=quantizer))
    model = TrajectoryTokenizer(config)
    torch.save({"state_dict": {f"tokenizer.{k}": v for k, v in model.state_dict().items()},
                "tokgen": {"kind": "video_tokenizer", "video_tokenizer_config": config.to_dict(),
                           "extraction": ExtractionConfig.from_dict(EXTRACTION).to_dict()}}, path)
    return str(path)


def cli_error(argv):
    with pytest.raises(SystemExit) as info:
        main(argv)
    return str(info.value.code)


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory):
    """video tokenizer -> 20 clips tokenized into shards of 8 -> generator recipe trained 2 steps."""
    tmp = tmp_path_factory.mktemp("video_gen")
    tok = save_video_tokenizer(tmp / "video_tok.ckpt")
    shards = tmp / "tokens"
    main(["tokenize", "--ckpt", tok, "--data", "moving_shapes", "--split", "train", "--out", str(shards),
          "--limit", "20", "--shard-size", "8", "--batch-size", "4", "--no-progress"])
    lightning_main(["fit", "--config", GEN_RECIPE, *CPU_OVERRIDES, f"--trainer.default_root_dir={tmp / 'gen'}",
                    "--trainer.max_steps=2", "--trainer.enable_progress_bar=false", "--trainer.logger=false",
                    "--trainer.num_sanity_val_steps=0", "--checkpoint.every_n_train_steps=2",
                    f"--data.init_args.path={shards}", "--data.init_args.val_size=4", "--data.init_args.batch_size=4",
                    "--model.init_args.generator.dim=32", "--model.init_args.generator.n_layer=1",
                    "--model.init_args.generator.n_head=2"])
    gen = tmp / "gen" / "checkpoints" / "last.ckpt"
    assert gen.is_file()
    return tok, str(shards), str(gen)


def test_tokenize_writes_one_length_per_clip(pipeline):
    tok, shards, _ = pipeline
    index = read_index(shards)
    assert index["complete"] and [s["num_examples"] for s in index["shards"]] == [8, 8, 4]
    assert (index["num_tokens"], index["codebook_size"], index["num_classes"]) == (SLOTS * GROUPS, 4096, 0)
    assert index["codes_per_token"] == GROUPS
    assert index["data"]["init_args"] == {"dataset": "moving_shapes", "image_size": SIZE, "num_frames": FRAMES,
                                          "trajectories": True,
                                          "extraction": ExtractionConfig.from_dict(EXTRACTION).to_dict()}
    _, codes, lengths, labels = load_token_shards(shards)
    assert codes.shape == (20, SLOTS * GROUPS) and (labels == 0).all()

    # the same clips and extraction settings: lengths are GROUPS x the trajectory counts, codes the tokenizer's (a
    # trajectory's GROUPS codes consecutive), 0 past them
    dm = VideoDataModule(dataset="moving_shapes", num_frames=FRAMES, image_size=SIZE, extraction=EXTRACTION)
    dm.setup()
    items = [dm.train_set[i] for i in range(20)]
    assert lengths.tolist() == [GROUPS * int(it["num_trajectories"]) for it in items]
    assert lengths.min() >= GROUPS and len(set(lengths.tolist())) > 1  # the count follows the clip
    lengths = lengths // GROUPS
    model = VideoTokenizer.from_checkpoint(tok)
    with torch.no_grad():
        _, expected, mask, _ = model.encode(torch.stack([it["video"] for it in items]),
                                            torch.stack([it["traj_ids"] for it in items]))
    assert torch.equal(mask, torch.arange(SLOTS)[None] < lengths[:, None])
    assert expected.shape == (20, SLOTS, GROUPS) and len(set(expected[0, 0].tolist())) > 1  # distinct groups
    assert torch.equal(codes.long().view(20, SLOTS, GROUPS), expected.masked_fill(~mask[..., None], 0))
    # sampling decodes codes like the tokenizer decodes its own tokens
    with torch.no_grad():
        z_q, _, _, _ = model.encode(torch.stack([it["video"] for it in items[:4]]),
                                    torch.stack([it["traj_ids"] for it in items[:4]]))
        recon, _ = model.decode(z_q, mask[:4])
    assert torch.equal(decode_clips(model, codes[:4].long().view(4, SLOTS, GROUPS), lengths[:4].long()),
                       (to_unit(recon) * 255).round().to(torch.uint8))


def test_sample_writes_tiled_clips_same_seed_same_clips(pipeline, tmp_path):
    tok, _, gen = pipeline
    base = ["--tokenizer", tok, "--generator", gen, "--num", "3", "--seed", "0", "--batch-size", "2"]
    result = sample([*base, "--budgets", "2,8", "--out", str(tmp_path / "a.gif"), "--out-dir", str(tmp_path / "clips")])
    assert result["trajectories"] == {2: 2.0, 8: 8.0}  # without --eos: exactly k trajectories
    for k in (2, 8):
        gif = Image.open(tmp_path / f"a_k{k}.gif")
        assert gif.n_frames == FRAMES and gif.size == (3 * (SIZE + 1) + 1, SIZE + 2)  # 3 clips in a row, 1 px padding
        assert sorted(os.listdir(tmp_path / "clips" / f"k{k}")) == ["000000.gif", "000001.gif", "000002.gif"]
        assert Image.open(tmp_path / "clips" / f"k{k}" / "000000.gif").size == (SIZE, SIZE)
    assert (tmp_path / "a_k2.gif").read_bytes() != (tmp_path / "a_k8.gif").read_bytes()  # more trajectories

    sample([*base, "--budget", "8", "--batch-size", "3", "--out", str(tmp_path / "b.gif")])  # other batches, same clips
    assert (tmp_path / "b.gif").read_bytes() == (tmp_path / "a_k8.gif").read_bytes()
    sample([*base, "--budget", "8", "--seed", "1", "--out", str(tmp_path / "c.gif")])
    assert (tmp_path / "c.gif").read_bytes() != (tmp_path / "a_k8.gif").read_bytes()

    result = sample([*base, "--budget", "8", "--eos", "--out", str(tmp_path / "e.mp4")])  # the model picks the count
    assert 1 <= result["trajectories"][8] <= 8 and count_frames(str(tmp_path / "e.mp4")) == FRAMES


def test_eos_ends_clips_between_trajectories(pipeline):
    """With G codes per trajectory, `tokgen sample --eos` lets EOS follow whole trajectories only: with EOS made
    likely, every sampled length is a multiple of G, and clips still differ in their trajectory counts."""
    _, _, gen = pipeline
    model = GPT.from_checkpoint(gen)
    bias = torch.zeros(model.config.output_size)
    bias[-1] = 4.0  # the EOS logit
    model.head.register_forward_hook(lambda module, inputs, out: out + bias)
    args = argparse.Namespace(seed=0, cfg=1.0, cfg_schedule="constant", temperature=1.0, top_k=0, top_p=None,
                              eos=True)
    budgets = generate_budgets(model, args, list(range(24)), [None] * 24, [2, 8], "cpu", shared=True,
                               codes_per_token=GROUPS)
    codes, lengths = budgets[8]
    assert codes.shape == (24, 8 * GROUPS) and (lengths % GROUPS == 0).all() and (lengths >= GROUPS).all()
    assert len(set(lengths.tolist())) > 1
    short, short_lengths = budgets[2]  # budget 2 = the first 2 trajectories of the same samples
    assert torch.equal(short, codes[:, : 2 * GROUPS]) and torch.equal(short_lengths, lengths.clamp(max=2 * GROUPS))


def test_bad_inputs_give_one_clear_error_each(pipeline, tmp_path):
    tok, _, gen = pipeline
    base = ["sample", "--tokenizer", tok, "--generator", gen, "--num", "1"]
    assert "token budget 9 is above the video tokenizer's max_tokens=8 (accepted 1..8)" in cli_error(
        [*base, "--budget", "9", "--out", str(tmp_path / "x.gif")])
    assert "a video tokenizer samples clips; accepted extensions .gif, .mp4" in cli_error(
        [*base, "--out", str(tmp_path / "x.png")])
    continuous = save_video_tokenizer(tmp_path / "continuous.ckpt", {"kind": "identity", "dim": 16, "bound": "tanh"})
    msg = cli_error(["sample", "--tokenizer", continuous, "--generator", gen, "--out", str(tmp_path / "x.gif")])
    assert "has continuous tokens (identity quantizer)" in msg and "moving_shapes_fsq_tiny.yaml" in msg
    msg = cli_error(["tokenize", "--ckpt", continuous, "--data", "moving_shapes", "--out", str(tmp_path / "t")])
    assert "has continuous tokens (identity quantizer)" in msg
    # a recipe for other clips (64x64, 8 frames) does not fit this tokenizer (32x32, 4 frames)
    recipe = os.path.join(ROOT, "configs/video/moving_shapes_fsq_tiny.yaml")
    msg = cli_error(["tokenize", "--ckpt", tok, "--data", recipe, "--out", str(tmp_path / "t")])
    assert "image_size=64 but the tokenizer expects image_size=32" in msg
    assert "--data 'shapes' is not accepted; use moving_shapes, folder:PATH" in cli_error(
        ["tokenize", "--ckpt", tok, "--data", "shapes", "--out", str(tmp_path / "t")])


def test_recipes_fit_together(tmp_path):
    """The FSQ video recipe's codes are what the generator recipe models (vocabulary, sequence length: 4 codes
    per trajectory), and its token is as wide as the continuous recipe's."""
    video = build_on_meta("configs/video/moving_shapes_fsq_tiny.yaml", tmp_path).model.tokenizer
    continuous = build_on_meta("configs/video/moving_shapes_tiny.yaml", tmp_path).model.tokenizer
    gen = build_on_meta("configs/generator/moving_shapes_traj_tiny.yaml", tmp_path).model.generator_config
    assert video.quantizer.codebook_size == gen.vocab_size == 4096 and video.quantizer.codes_per_token == 4
    assert video.num_tokens * 4 == gen.block_size == 32 and gen.use_eos and gen.num_classes == 0
    assert video.quantizer.dim == continuous.quantizer.dim == 16


def test_realism_benchmark_scores_generated_clips(pipeline, capsys):
    """benchmarks/video_realism.py on the pipeline's checkpoints: one JSON line with the three sets' distances to
    the real clips; a set's distance to itself is 0, and the count histograms are distributions."""
    import json
    import sys

    import numpy as np

    sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
    from video_realism import STATS, distances, wasserstein_1d

    a = np.random.default_rng(0).normal(size=(50, len(STATS)))
    zero = distances(a, np.array([1, 2, 2]), a, np.array([1, 2, 2]), SLOTS)
    assert zero["traj_w1"] == 0 and zero["count_tv"] == 0
    assert abs(wasserstein_1d(np.zeros(10), np.ones(20)) - 1.0) < 1e-9
    from video_realism import main as realism

    tok, _, gen = pipeline
    realism(["--tokenizer", tok, "--generator", gen, "--num", "4", "--batch-size", "3"])
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["codes_per_trajectory"] == GROUPS and result["stats"] == list(STATS)
    for name in ("reference", "generated", "random"):
        assert result[name]["traj_w1"] >= 0 and 0 <= result[name]["count_tv"] <= 1
        assert abs(sum(result[name]["count_histogram"]) - 1) < 1e-3 and 1 <= result[name]["mean_count"] <= SLOTS
