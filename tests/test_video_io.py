"""Video files: reading / writing, the video-folder datamodule, `tokgen video-tokenize`, and one clear error per
bad input (unreadable file, zero frames, clip shorter than configured)."""
import json

import numpy as np
import pytest
import torch

from tokgen.data.video import MovingShapesDataset, VideoDataModule, VideoFolderDataset
from tokgen.video.io import read_clip, read_video, to_uint8_frames, write_video


@pytest.fixture(scope="module")
def video_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("videos")
    frames = to_uint8_frames(MovingShapesDataset(1, num_frames=12, image_size=48, seed=3)[0]["video"])
    write_video(str(root / "a.mp4"), frames, fps=8)
    return root, frames


def _zero_frame_mp4(path):
    import av

    with av.open(str(path), mode="w") as container:
        stream = container.add_stream("libx264", rate=8)
        stream.width, stream.height, stream.pix_fmt = 32, 32, "yuv420p"
        container.start_encoding()  # write the header although no frame follows
        for packet in stream.encode():
            container.mux(packet)


def test_write_and_read_back(video_dir, tmp_path):
    root, frames = video_dir
    back = read_video(str(root / "a.mp4"))
    assert back.shape == frames.shape and back.dtype == np.uint8
    assert np.abs(back.astype(int) - frames.astype(int)).mean() < 6  # lossy H.264, close to the source
    write_video(str(tmp_path / "a.gif"), frames)
    assert read_video(str(tmp_path / "a.gif")).shape == frames.shape
    clip = read_clip(str(root / "a.mp4"), start=2, num_frames=4, stride=2, image_size=32)
    assert clip.shape == (4, 32, 32, 3)


def test_unreadable_video_is_one_clear_error(tmp_path):
    bad = tmp_path / "broken.mp4"
    bad.write_bytes(b"this is not a video")
    with pytest.raises(ValueError, match="unreadable"):
        read_video(str(bad))
    with pytest.raises(FileNotFoundError, match="video not found"):
        read_video(str(tmp_path / "missing.mp4"))


def test_zero_frame_video_is_one_clear_error(tmp_path):
    path = tmp_path / "empty.mp4"
    _zero_frame_mp4(path)
    assert path.is_file()
    with pytest.raises(ValueError, match="has zero frames"):
        read_video(str(path))
    with pytest.raises(ValueError, match="has zero frames"):
        VideoFolderDataset(str(path.parent), num_frames=2)


def test_clip_shorter_than_configured_length_is_one_clear_error(video_dir):
    root, _ = video_dir
    with pytest.raises(ValueError, match=r"12 frames, shorter than the configured clip length: num_frames=8 with "
                                         r"stride=2 needs at least 15"):
        VideoFolderDataset(str(root), num_frames=8, stride=2, image_size=32)
    with pytest.raises(ValueError, match="shorter than the configured clip"):
        read_clip(str(root / "a.mp4"), start=0, num_frames=20)


def test_video_folder_datamodule_with_trajectories(video_dir):
    root, _ = video_dir
    dm = VideoDataModule(dataset="folder", root=str(root), num_frames=4, stride=2, image_size=32, batch_size=1,
                         extraction={"max_trajectories": 6})
    batch = next(iter(dm.train_dataloader()))
    assert batch["video"].shape == (1, 4, 3, 32, 32) and batch["traj_ids"].shape == (1, 4, 32, 32)
    assert 1 <= int(batch["num_trajectories"][0]) <= 6
    assert len(dm.train_set) == 1  # 12 frames hold one clip of span (4 - 1) * 2 + 1 = 7


def test_video_tokenize_command(video_dir, tmp_path, capsys):
    from tokgen.cli import main

    root, _ = video_dir
    out = tmp_path / "overlay.gif"
    main(["video-tokenize", str(root / "a.mp4"), "--out", str(out), "--size", "48"])
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0].startswith("trajectories: ")
    result = json.loads(lines[-1])
    assert result["trajectories"] >= 2 and result["frames"] == 12
    assert read_video(str(out)).shape == (12, 48, 48, 3)


def test_video_tokenize_command_bad_video_exits_with_message(tmp_path):
    from tokgen.cli import main

    bad = tmp_path / "broken.avi"
    bad.write_bytes(b"\x00" * 64)
    with pytest.raises(SystemExit, match="unreadable"):
        main(["video-tokenize", str(bad)])


def test_video_datamodule_caches_rendered_clips_without_changing_them():
    """Moving-shapes clips are rendered once and kept (cache_mb); the cached items equal fresh renders, a
    zero budget renders every time, and a bad budget is one clear error."""
    dm = VideoDataModule(num_frames=4, image_size=32, train_size=6, val_size=2, trajectories=False, cache_mb=1)
    dm.setup()
    first = [dm.train_set[i]["video"] for i in range(6)]
    fresh = MovingShapesDataset(6, num_frames=4, image_size=32, seed=0)
    assert all(torch.equal(first[i], fresh[i]["video"]) for i in range(6))
    clip_mb = sum(v.numel() * v.element_size() for v in fresh[0].values()) / 2**20
    assert len(dm.train_set._cache) == min(6, int(1 / clip_mb))  # the budget bounds what is held
    assert dm.train_set[0]["video"] is first[0]  # served from memory
    nocache = VideoDataModule(num_frames=4, image_size=32, train_size=6, val_size=2, trajectories=False, cache_mb=0)
    nocache.setup()
    assert isinstance(nocache.train_set, MovingShapesDataset)
    with pytest.raises(ValueError, match="cache_mb=-1"):
        VideoDataModule(cache_mb=-1)
