"""Trajectory extraction on moving_shapes: recall / purity against ground truth, count stability, output format."""
import numpy as np
import pytest
import torch

from tokgen.data.video import MovingShapesDataset
from tokgen.video import (ExtractionConfig, PrecomputedMasks, Trajectories, extract_trajectories, rag_merge,
                          track_scores)
from tokgen.video.io import to_uint8_frames

CLIPS = 6


@pytest.fixture(scope="module")
def clips():
    short = MovingShapesDataset(CLIPS, num_frames=16, image_size=64, seed=123)
    long = MovingShapesDataset(CLIPS, num_frames=32, image_size=64, seed=123)
    return [short[i] for i in range(CLIPS)], [long[i] for i in range(CLIPS)]


@pytest.fixture(scope="module")
def extracted(clips):
    short, long = clips
    return [extract_trajectories(c["video"]) for c in short], [extract_trajectories(c["video"]) for c in long]


def test_moving_shapes_is_deterministic_and_longer_clips_extend_shorter(clips):
    short, long = clips
    again = MovingShapesDataset(CLIPS, num_frames=16, image_size=64, seed=123)[2]
    assert torch.equal(again["video"], short[2]["video"])
    assert torch.equal(long[2]["video"][:16], short[2]["video"])  # same scene whatever the clip length
    assert short[2]["video"].shape == (16, 3, 64, 64) and short[2]["video"].abs().max() <= 1
    tracks = short[2]["tracks"]
    assert tracks.shape == (16, 64, 64) and int(tracks.max()) == int(short[2]["num_shapes"])


def test_recall_and_purity_against_ground_truth(clips, extracted):
    scores = [track_scores(t.ids, c["tracks"].numpy()) for t, c in zip(extracted[0], clips[0])]
    recall = np.mean([s["recall"] for s in scores])
    purity = np.mean([s["purity"] for s in scores])
    assert recall >= 0.9, scores
    assert purity >= 0.9, scores


def test_count_stays_stable_when_clip_length_doubles(extracted):
    n16 = np.array([t.num for t in extracted[0]])
    n32 = np.array([t.num for t in extracted[1]])
    assert 0.8 <= n32.mean() / n16.mean() <= 1.2, (n16, n32)
    assert np.mean(np.abs(n32 / n16 - 1) <= 0.2) >= 0.8, (n16, n32)


def test_output_format_ordered_largest_first(extracted):
    traj = extracted[0][0]
    T, H, W = traj.ids.shape
    assert (T, H, W) == (16, 64, 64) and traj.ids.min() == 0
    areas = traj.areas
    assert len(areas) == traj.num and (areas > 0).all() and (np.diff(areas) <= 0).all()
    masks = traj.masks
    assert masks.shape == (traj.num, T, H, W) and (masks.sum(0) == 1).all()  # every pixel in exactly one
    presence, boxes = traj.presence, traj.boxes
    assert presence.shape == (traj.num, T) and boxes.shape == (traj.num, T, 4)
    assert np.array_equal(presence, masks.any((2, 3)))
    k, t = np.argwhere(presence)[-1]
    ys, xs = np.nonzero(masks[k, t])
    np.testing.assert_allclose(boxes[k, t], [xs.min() / W, ys.min() / H, (xs.max() + 1) / W, (ys.max() + 1) / H])
    assert (boxes[~presence] == 0).all()


def test_external_masks_plug_in(clips):
    clip = clips[0][1]
    gt = clip["tracks"].numpy()
    source = PrecomputedMasks({0: gt[0], 8: gt[8]})
    traj = extract_trajectories(clip["video"], {"min_area": 0.0}, mask_source=source)
    assert track_scores(traj.ids, gt)["recall"] == 1.0
    canon = Trajectories.from_id_map(gt + 5)
    assert canon.num == len(np.unique(gt)) and (np.diff(canon.areas) <= 0).all()


def test_rag_merge_joins_similar_neighbours_only():
    labels = np.repeat(np.arange(4)[None], 4, 0).repeat(2, 1)  # 4 vertical stripes (4 x 8)
    lab = np.zeros((4, 8, 3), np.float32)
    lab[:, 4:, 0] = 50.0  # stripes 0, 1 dark; 2, 3 bright
    lab[:, 2:4, 1] = 3.0  # small difference between stripes 0 and 1
    merged = rag_merge(labels, lab, threshold=10.0)
    assert len(np.unique(merged)) == 2 and merged[0, 0] == merged[0, 3] and merged[0, 0] != merged[0, 4]


def test_max_trajectories_caps_the_count(clips):
    traj = extract_trajectories(clips[0][1]["video"], {"max_trajectories": 2})
    assert traj.num <= 2 and (traj.masks.sum(0) == 1).all()


@pytest.mark.parametrize("bad, match", [
    (np.zeros((0, 8, 8, 3), np.uint8), "zero frames"),
    (np.zeros((4, 8, 8), np.uint8), r"\(T, H, W, 3\) uint8"),
    (torch.zeros(4, 1, 8, 8), r"\(T, 3, H, W\)"),
])
def test_bad_frames_fail_with_one_clear_error(bad, match):
    with pytest.raises(ValueError, match=match):
        extract_trajectories(bad)


def test_bad_config_names_value():
    with pytest.raises(ValueError, match="flow_preset"):
        ExtractionConfig(flow_preset="slow")
    with pytest.raises(ValueError, match=r"split_motion=-1 is invalid; expected a number >= 0 \(0: off\)"):
        ExtractionConfig(split_motion=-1)
    with pytest.raises(ValueError, match="unknown trajectory extraction config keys"):
        ExtractionConfig.from_dict({"segments": 3})


# ---------------------------------------------------------------------------------------------------- movers
HARD = {"min_shapes": 3, "max_shapes": 6, "mover_size_px": (4, 10), "camouflage": 0.3, "enter_fraction": 0.3,
        "occluders": 1}


def test_small_movers_become_trajectories_and_the_count_stays_flat():
    short = MovingShapesDataset(4, num_frames=16, image_size=128, seed=123, **HARD)
    long = MovingShapesDataset(4, num_frames=32, image_size=128, seed=123, **HARD)
    recall, n16, n32, off = [], [], [], []
    for i in range(4):
        clip = short[i]
        traj = extract_trajectories(clip["video"], {"movers": True})
        recall.append(track_scores(traj.ids, clip["tracks"].numpy())["recall"])
        off.append(track_scores(extract_trajectories(clip["video"], {"movers": False}).ids,
                                clip["tracks"].numpy())["recall"])
        n16.append(traj.num)
        n32.append(extract_trajectories(long[i]["video"], {"movers": True}).num)
    assert np.mean(recall) >= 0.85 and np.mean(recall) > np.mean(off) + 0.5, (recall, off)
    assert 0.8 <= np.mean(n32) / np.mean(n16) <= 1.2, (n16, n32)


def test_harder_moving_shapes_options():
    clip = MovingShapesDataset(3, num_frames=16, image_size=64, seed=1, max_shapes=6, min_shapes=6,
                               mover_size_px=(4, 8), enter_fraction=1.0, occluders=2)[0]
    tracks = clip["tracks"].numpy()
    present = np.stack([(tracks == j).any((1, 2)) for j in range(1, 7)])  # (6, T)
    assert not present[:, 0].any() and present.any(1).all()  # every shape enters after frame 0
    areas = np.array([(tracks == j).sum((1, 2)).max() for j in range(1, 7)])
    assert (areas <= np.pi * 4**2 + 8).all()  # diameters of at most 8 px
    with pytest.raises(ValueError, match="mover_size_px"):
        MovingShapesDataset(1, image_size=32, mover_size_px=(4, 40))
    with pytest.raises(ValueError, match="camouflage"):
        MovingShapesDataset(1, camouflage=2.0)


def test_photo_clips_have_mover_masks_and_a_moving_camera():
    from tokgen.data.photo_clips import PhotoMoversDataset

    data = PhotoMoversDataset(2, num_frames=8, image_size=64, min_movers=2, max_movers=2, mover_size_px=(6, 10),
                              enter_fraction=0.0, seed=3)
    clip = data[0]
    assert clip["video"].shape == (8, 3, 64, 64) and clip["video"].abs().max() <= 1
    assert set(np.unique(clip["tracks"].numpy())) == {0, 1, 2}
    assert not torch.equal(clip["video"][0], clip["video"][-1])
    assert torch.equal(PhotoMoversDataset(2, num_frames=16, image_size=64, min_movers=2, max_movers=2,
                                          mover_size_px=(6, 10), enter_fraction=0.0, seed=3)[0]["video"][:8],
                       clip["video"])
    static = PhotoMoversDataset(1, num_frames=8, image_size=64, min_movers=2, max_movers=2, mover_size_px=(6, 10),
                                enter_fraction=0.0, camera=False, seed=3)[0]
    traj = extract_trajectories(static["video"], {"movers": True})
    assert track_scores(traj.ids, static["tracks"].numpy())["recall"] >= 0.5


def test_constant_frames_warn_and_restart_trajectories():
    clip = MovingShapesDataset(1, num_frames=16, image_size=64, seed=4)[0]["video"].clone()
    black = torch.full_like(clip, -1.0)
    with pytest.warns(UserWarning, match="frames 0-15 .* constant.*one trajectory"):
        assert extract_trajectories(black).num == 1
    clip[:4] = -1.0  # a black start
    with pytest.warns(UserWarning, match="frames 0-3 .* constant"):
        traj = extract_trajectories(clip)
    first = set(np.unique(traj.ids[:4]).tolist())
    assert len(first) == 1 and not first & set(np.unique(traj.ids[4:]).tolist())
    assert len(np.unique(traj.ids[4])) > 1


def under_segmented_clip():
    """A 16-frame 64x64 clip: a 20x20 patch of the background's own texture (same mean colour) slides right 2 px a
    frame over a static textured background; per-key-frame labels say "object / background" at frame 0 and
    merge everything into one segment at frame 8 (a segmenter that cannot see the object's edge)."""
    rng = np.random.default_rng(0)
    texture = np.repeat(np.repeat(rng.integers(60, 200, (32, 32, 3)), 2, axis=0), 2, axis=1).astype(np.uint8)
    patch = np.repeat(np.repeat(rng.integers(60, 200, (10, 10, 3)), 2, axis=0), 2, axis=1).astype(np.uint8)
    frames, truth = np.repeat(texture[None], 16, axis=0), np.zeros((16, 64, 64), dtype=np.int64)
    for t in range(16):
        x = 8 + 2 * t
        frames[t, 22:42, x:x + 20] = patch
        truth[t, 22:42, x:x + 20] = 1
    masks = PrecomputedMasks({0: truth[0], 8: np.zeros((64, 64), dtype=np.int64)})
    return frames, truth, masks


def test_a_trajectory_swallowed_by_a_key_frame_segment_survives_when_it_moves_apart():
    """Under-segmentation at a key frame must not end a track that still moves differently from the rest of the
    merged segment (``split_motion``); with the rule off, the object's trajectory ends at frame 8. Key frames are
    the precomputed ones, 0 and 8."""
    frames, truth, masks = under_segmented_clip()
    cfg = {"work_size": 0, "min_area": 0.0}
    kept = extract_trajectories(frames, cfg, mask_source=masks).ids
    obj = kept[0][truth[0] == 1]
    obj_id = np.bincount(obj).argmax()
    for t in (8, 12, 15):
        assert (kept[t][truth[t] == 1] == obj_id).mean() > 0.8, t
    # at the key frame the object keeps only the pixels that move with it: the trail that propagation left on the
    # uncovered background (7% of it by frame 7) goes back to the background
    assert (kept[8][truth[8] == 0] == obj_id).mean() < 0.02
    lost = extract_trajectories(frames, {**cfg, "split_motion": 0.0}, mask_source=masks).ids
    obj_id = np.bincount(lost[0][truth[0] == 1]).argmax()
    assert not (lost[12] == obj_id).any()


def test_settings_saved_partially_before_the_default_change_keep_extracting_as_trained():
    """Video checkpoints written before 2026-12-04 hold only the recipe's extraction keys: loading completes them
    with the defaults of that time (a key frame every 8 frames, no split_motion), so the model extracts as it was
    trained; settings saved since (every field) are kept as they are."""
    from tokgen.video import TrajectoryTokenizer
    from tokgen.video.extract import complete_legacy

    assert ExtractionConfig().keyframe_interval == 2 and ExtractionConfig().split_motion == 1.0
    old = complete_legacy({"max_trajectories": 8})
    assert old == {"max_trajectories": 8, "keyframe_interval": 8, "split_motion": 0.0}
    assert complete_legacy({"keyframe_interval": 4, "max_trajectories": 8})["keyframe_interval"] == 4
    full = ExtractionConfig(max_trajectories=8).to_dict()
    assert complete_legacy(full) == full
    model = TrajectoryTokenizer({"image_size": 32, "num_frames": 4, "patch_size": 8, "width": 32, "num_heads": 2,
                                 "encoder_depth": 1, "decoder_depth": 1, "decoder_width": 32, "max_tokens": 8})
    model.restore_metadata({"extraction": {"max_trajectories": 8}}, "old.ckpt")
    assert model.extraction == ExtractionConfig.from_dict(old).to_dict()
    model.restore_metadata({"extraction": full}, "new.ckpt")
    assert model.extraction == full
    model.extraction = {"max_trajectories": 8}  # set by a user: today's defaults
    assert model.extraction == full


def test_training_saves_every_extraction_field():
    """A video training module writes the resolved settings, so a later change of a default leaves the model's
    extraction as it was."""
    from tokgen.lit.video import VideoTokenizerModule
    from tokgen.video import VideoTokenizerConfig

    module = VideoTokenizerModule(VideoTokenizerConfig.from_dict({
        "kind": "trajectory", "image_size": 32, "num_frames": 4, "patch_size": 8, "width": 32, "num_heads": 2,
        "encoder_depth": 1, "decoder_depth": 1, "decoder_width": 32, "max_tokens": 8}))

    class Trainer:
        datamodule = type("DM", (), {"extraction": {"max_trajectories": 8}})()

    module._trainer = Trainer()
    saved = module.checkpoint_metadata()["extraction"]
    assert saved == ExtractionConfig(max_trajectories=8).to_dict()


def test_extraction_settings_from_the_command_line_are_typed_and_checked_early():
    """``--data.init_args.extraction.keyframe_interval 2`` reaches the free-form dict as the string "2": the video
    datamodule reads such strings as YAML scalars and checks the settings when it is built."""
    from tokgen.data.video import VideoDataModule

    dm = VideoDataModule(trajectories=True, extraction={"keyframe_interval": "2", "split_motion": "0.5",
                                                        "movers": "true", "flow_preset": "fast"})
    assert dm.extraction == {"keyframe_interval": 2, "split_motion": 0.5, "movers": True, "flow_preset": "fast"}
    with pytest.raises(ValueError, match="keyframe_interval='x' is invalid; expected a positive int"):
        VideoDataModule(trajectories=True, extraction={"keyframe_interval": "x"})
