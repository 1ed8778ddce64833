"""Trajectory tokenizer / decoder and the space-time patch baseline: shapes, masks, training, clear errors."""
import pytest
import torch
import torch.nn.functional as F

from tokgen.data.video import MovingShapesDataset, TrajectoryDataset
from tokgen.video import (PatchVideoTokenizer, PatchVideoTokenizerConfig, TrajectoryTokenizer,
                          TrajectoryTokenizerConfig, VideoTokenizer, VideoTokenizerConfig, evaluate_video_tokenizer)

SMALL = dict(image_size=32, num_frames=4, patch_size=8, width=32, num_heads=2, encoder_depth=1, decoder_depth=1,
             decoder_width=32, max_tokens=6)


def make(kind="trajectory", **kw):
    torch.manual_seed(0)
    values = dict(SMALL, kind=kind, **kw)
    if kind == "patch":
        for name in ("max_tokens", "patch_size", "decoder_width"):
            values.pop(name)
        values.setdefault("tubelet", [2, 16, 16])
        return PatchVideoTokenizer(PatchVideoTokenizerConfig.from_dict(values))
    return TrajectoryTokenizer(TrajectoryTokenizerConfig.from_dict(values))


@pytest.fixture(scope="module")
def batch():
    ds = TrajectoryDataset(MovingShapesDataset(4, num_frames=4, image_size=32, seed=7), {"max_trajectories": 6})
    items = [ds[i] for i in range(4)]
    return {k: torch.stack([it[k] for it in items]) for k in ("video", "traj_ids", "num_trajectories")}


def test_trajectory_tokens_shapes_and_masks(batch):
    model = make()
    video, ids = batch["video"], batch["traj_ids"]
    z_q, codes, token_mask, aux = model.encode(video, ids)
    assert z_q.shape == (4, 6, 16) and token_mask.shape == (4, 6)
    # one token per trajectory: the mask marks exactly the first num_trajectories slots, padding is zero
    expected = torch.arange(6)[None] < batch["num_trajectories"][:, None]
    assert torch.equal(token_mask, expected)
    assert (z_q[~token_mask] == 0).all()
    recon, alpha = model.decode(z_q, token_mask)
    assert recon.shape == video.shape and alpha.shape == (4, 6, 4, 32, 32)
    weights = alpha.softmax(1)
    assert torch.allclose(weights.sum(1), torch.ones(4, 4, 32, 32), atol=1e-5)
    assert (weights[~token_mask] == 0).all()  # padding slots never contribute
    # a prefix of trajectories decodes (coarse clip) and a token of another clip does not leak in
    keep = token_mask & (torch.arange(6) < 1)
    recon1, alpha1 = model.decode(z_q, keep)
    assert torch.isfinite(recon1).all() and (alpha1.softmax(1)[:, 0] == 1).all()
    # the token of a trajectory follows the pixels under its masks
    video2 = video.clone()
    video2[(ids[:, :, None] == 0).expand_as(video)] *= 0.5
    z2 = model.encode(video2, ids)[0]
    assert not torch.allclose(z2[:, 0], z_q[:, 0])


def test_patch_baseline_shapes_and_token_count():
    model = make("patch")
    assert model.num_tokens == (4 // 2) * 2 * 2
    video = torch.rand(2, 4, 3, 32, 32) * 2 - 1
    recon, extras = model(video)
    assert recon.shape == video.shape and extras["tokens"].shape == (2, 8, 16) and extras["token_mask"].all()
    cfg = PatchVideoTokenizerConfig(num_frames=16, image_size=64, tubelet=[4, 16, 16])
    assert cfg.num_tokens == 64 and PatchVideoTokenizerConfig(num_frames=32, image_size=64,
                                                         tubelet=[4, 16, 16]).num_tokens == 128


def test_fsq_quantizer_gives_codes(batch):
    model = make(quantizer={"kind": "fsq", "levels": [5, 5, 5]})
    z_q, codes, token_mask, _ = model.encode(batch["video"], batch["traj_ids"])
    assert z_q.shape[-1] == 3 and codes.shape == (4, 6) and codes.dtype == torch.long


@pytest.mark.parametrize("kind", ["trajectory", "patch"])
def test_a_few_training_steps_lower_the_loss(batch, kind):
    model = make(kind)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(25):
        recon, extras = model(batch["video"], batch["traj_ids"] if kind == "trajectory" else None)
        loss = F.mse_loss(recon, batch["video"])
        if extras["alpha_logits"] is not None:
            loss = loss + 0.1 * F.cross_entropy(extras["alpha_logits"].clamp_min(-1e4), batch["traj_ids"])
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert sum(losses[-5:]) / 5 < 0.9 * sum(losses[:5]) / 5, losses


def test_evaluate_per_number_of_tokens(batch):
    model = make()
    loader = [{"video": batch["video"], "traj_ids": batch["traj_ids"]}]
    out = evaluate_video_tokenizer(model, loader, budgets=[1, 6])
    assert out["clips"] == 4 and set(out["psnr"]) == {1, 6} and all(v > 0 for v in out["psnr"].values())
    # tokens_used: mean tokens decoded per clip
    assert out["tokens_used"][1] == 1.0 and out["tokens_used"][6] == float(batch["num_trajectories"].float().mean())
    with pytest.raises(ValueError, match="outside 1..6"):
        evaluate_video_tokenizer(model, loader, budgets=[7])


def test_resolution_or_length_not_trained_for_is_one_clear_error(batch):
    model = make()
    with pytest.raises(ValueError, match=r"trained for clips of 4 frames, 3 channels at 32x32"):
        model.encode(torch.zeros(1, 4, 3, 64, 64), torch.zeros(1, 4, 64, 64, dtype=torch.long))
    with pytest.raises(ValueError, match=r"trained for clips of 4 frames"):
        model.encode(torch.zeros(1, 2, 3, 32, 32), torch.zeros(1, 2, 32, 32, dtype=torch.long))
    with pytest.raises(ValueError, match=r"max_tokens=6"):
        model.encode(batch["video"], batch["traj_ids"] + 6)
    with pytest.raises(ValueError, match="needs the clip's trajectory id map"):
        model.encode(batch["video"])


def test_bad_config_names_value():
    with pytest.raises(ValueError, match="tubelet"):
        PatchVideoTokenizerConfig(num_frames=8, tubelet=[3, 16, 16])
    with pytest.raises(ValueError, match="kind='slots' is not supported; use one of"):
        VideoTokenizerConfig.from_dict({"kind": "slots"})
    with pytest.raises(ValueError, match="TrajectoryTokenizerConfig kind='patch': its kind is 'trajectory'"):
        TrajectoryTokenizerConfig(kind="patch")
    with pytest.raises(ValueError, match="patch_size=0 must be a positive int"):
        TrajectoryTokenizerConfig(patch_size=0)
    with pytest.raises(TypeError, match="build a TrajectoryTokenizerConfig or a PatchVideoTokenizerConfig"):
        VideoTokenizerConfig()
    with pytest.raises(TypeError, match="build a TrajectoryTokenizer or a PatchVideoTokenizer"):
        VideoTokenizer(TrajectoryTokenizerConfig())


def test_config_kind_picks_the_class():
    """One dispatch: a saved config's kind picks the config and model class; a config saved before the split
    (every field of both kinds) loads into its own kind's class."""
    both = dict(SMALL, tubelet=[2, 16, 16])
    traj = VideoTokenizerConfig.from_dict(dict(both, kind="trajectory"))
    patch = VideoTokenizerConfig.from_dict(dict(both, kind="patch"))
    assert type(traj) is TrajectoryTokenizerConfig and traj.max_tokens == 6 and not hasattr(traj, "tubelet")
    assert type(patch) is PatchVideoTokenizerConfig and patch.tubelet == [2, 16, 16] and not hasattr(patch, "max_tokens")
    assert type(VideoTokenizerConfig.from_dict({})) is TrajectoryTokenizerConfig  # no kind: the pre-split default
    assert VideoTokenizer.class_for_config(traj) is TrajectoryTokenizer
    assert VideoTokenizer.class_for_config(patch) is PatchVideoTokenizer
    assert PatchVideoTokenizer.make_config(dict(both, kind="patch")) == patch
    with pytest.raises(ValueError, match="a 'patch' video tokenizer config is not a TrajectoryTokenizerConfig; "
                                         "load it with PatchVideoTokenizer"):
        TrajectoryTokenizerConfig.from_dict(dict(both, kind="patch"))
    with pytest.raises(ValueError, match="builds a PatchVideoTokenizer, not a TrajectoryTokenizer"):
        TrajectoryTokenizer.class_for_config(patch)
    with pytest.raises(ValueError, match=r"unknown video tokenizer config keys \['depth'\]"):
        VideoTokenizerConfig.from_dict({"kind": "patch", "depth": 2})


def test_trajectory_moments_of_a_square():
    from tokgen.video import trajectory_moments

    ids = torch.zeros(1, 2, 8, 8, dtype=torch.long)
    ids[0, 0, 2:6, 4:8] = 1  # frame 0: a 4x4 square, rows 2..5, columns 4..7; absent in frame 1
    moments, present = trajectory_moments(ids, 3)
    assert moments.shape == (1, 3, 2, 4) and present.tolist() == [[[True, True], [True, False], [False, False]]]
    cy, cx, sy, sx = moments[0, 1, 0].tolist()
    assert (cy, cx) == pytest.approx((4 / 8, 6 / 8)) and sy == pytest.approx(sx) == pytest.approx((1.25 / 64) ** 0.5)
    assert (moments[0, 1, 1] == 0).all() and (moments[0, 2] == 0).all()


def test_trajectory_module_supervises_geometry_and_beats_the_mean_colour(batch):
    """Regression for the flat-grey tokenizer: a few steps must reconstruct better than each clip's mean colour."""
    from tokgen.lit.tokenizer import OptimConfig
    from tokgen.lit.video import VideoTokenizerModule
    from tokgen.video import video_psnr

    torch.manual_seed(0)
    module = VideoTokenizerModule(TrajectoryTokenizerConfig.from_dict(SMALL), OptimConfig(lr=5e-3))
    loss, logs = module.compute_loss(module.tokenizer, batch)
    assert {"rec", "alpha_ce", "geometry"} <= set(logs) and torch.isfinite(loss)
    recon, extras = module.tokenizer(batch["video"], batch["traj_ids"])
    assert extras["geometry"].shape == (4, 6, 4, 4)
    opt = torch.optim.AdamW(module.tokenizer.parameters(), lr=5e-3)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny ops: one thread is faster, and much faster on a busy machine
    try:
        for _ in range(60):
            loss, _ = module.compute_loss(module.tokenizer, batch)
            opt.zero_grad()
            loss.backward()
            opt.step()
    finally:
        torch.set_num_threads(threads)
    video = batch["video"]
    with torch.no_grad():
        recon, _ = module.tokenizer(video, batch["traj_ids"])
    mean_colour = video.mean(dim=(1, 3, 4), keepdim=True).expand_as(video)
    assert video_psnr(recon, video).mean() > video_psnr(mean_colour, video).mean() + 1.0
    with pytest.raises(ValueError, match="geometry_weight=-1"):
        VideoTokenizerModule(TrajectoryTokenizerConfig.from_dict(SMALL), geometry_weight=-1)


def test_a_fresh_process_finds_both_video_tokenizer_kinds():
    """tokgen.video imports lazily: a command that loads a video checkpoint through the base class (``tokgen
    video-eval``) must find the class of the saved kind without anything having imported it first."""
    import subprocess
    import sys

    code = ("from tokgen.video.tokenizer import VideoTokenizer\n"
            "print(VideoTokenizer.variant('trajectory').__name__, VideoTokenizer.variant('patch').__name__)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split() == ["TrajectoryTokenizer", "PatchVideoTokenizer"]
