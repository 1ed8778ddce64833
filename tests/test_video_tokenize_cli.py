"""`tokgen video-tokenize` on a folder of clips (outputs, summary, errors) and the light command line: resolving a
tokgen command imports neither Lightning nor, for video-tokenize, torch."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from tokgen.cli import main
from tokgen.data.moving_shapes import MovingShapesDataset
from tokgen.video import extract_trajectories, read_clip
from tokgen.video.io import read_video, to_uint8_frames, write_video

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def clip_folder(tmp_path_factory):
    """Two readable clips (an MP4 and an upper-case .GIF), one unreadable .avi and a file that is not a clip."""
    root = tmp_path_factory.mktemp("clips")
    clips = MovingShapesDataset(2, num_frames=6, image_size=32, seed=11)
    write_video(str(root / "b.mp4"), to_uint8_frames(clips[0]["video"]))
    write_video(str(root / "A.GIF"), to_uint8_frames(clips[1]["video"]))
    (root / "broken.avi").write_bytes(b"\x00" * 64)
    (root / "notes.txt").write_text("not a clip")
    return root


def test_folder_mode_writes_every_clip_and_a_summary(clip_folder, tmp_path, capsys):
    out_dir = tmp_path / "out"
    main(["video-tokenize", str(clip_folder), "--out-dir", str(out_dir), "--size", "32"])
    captured = capsys.readouterr()
    assert f"skipped {clip_folder / 'broken.avi'}" in captured.err and "unreadable" in captured.err
    assert "video-tokenize" in captured.err and "3/3" in captured.err  # the progress bar reached the end
    assert sorted(os.listdir(out_dir)) == ["A_trajectories.gif", "b_trajectories.gif", "summary.json"]
    on_disk = json.loads((out_dir / "summary.json").read_text())
    assert [c["video"] for c in on_disk["clips"]] == [str(clip_folder / "A.GIF"), str(clip_folder / "b.mp4")]
    assert on_disk["failed"] == [{"video": str(clip_folder / "broken.avi"), "error": on_disk["failed"][0]["error"]}]
    assert "unreadable" in on_disk["failed"][0]["error"]
    for clip in on_disk["clips"]:  # each clip's result is the one-clip command's (same reading, same extraction)
        frames = read_clip(clip["video"], 0, 6, 1, 32)
        assert clip["frames"] == 6 and clip["size"] == 32 and clip["seconds"] > 0
        assert clip["trajectories"] == extract_trajectories(frames).num >= 1
        assert sum(clip["areas"]) == 6 * 32 * 32
        assert read_video(clip["overlay"]).shape == (6, 32, 32, 3)
    totals = on_disk["totals"]
    assert totals["clips"] == 3 and totals["processed"] == 2 and totals["failed"] == 1 and totals["frames"] == 12
    assert totals["trajectories"] == sum(c["trajectories"] for c in on_disk["clips"])
    assert totals["seconds"] >= sum(c["seconds"] for c in on_disk["clips"]) - 1e-3
    assert json.loads(captured.out.strip().splitlines()[-1])["summary"] == str(out_dir / "summary.json")


def test_folder_mode_mp4_outputs_and_shared_names(tmp_path, capsys):
    clips = tmp_path / "clips"
    clips.mkdir()
    frames = to_uint8_frames(MovingShapesDataset(1, num_frames=4, image_size=32, seed=2)[0]["video"])
    write_video(str(clips / "x.mp4"), frames)
    write_video(str(clips / "x.gif"), frames)
    main(["video-tokenize", str(clips), "--out-dir", str(tmp_path / "o"), "--out", ".MP4", "--no-progress"])
    assert sorted(os.listdir(tmp_path / "o")) == ["summary.json", "x_gif_trajectories.mp4", "x_mp4_trajectories.mp4"]
    assert "video-tokenize:" not in capsys.readouterr().err  # --no-progress: no bar


def test_folder_mode_errors_name_the_folder(tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "readme.md").write_text("no clips here")
    with pytest.raises(SystemExit, match="holds no clips"):
        main(["video-tokenize", str(empty), "--out-dir", str(tmp_path / "o")])
    assert str(empty) in capsys.readouterr().err
    with pytest.raises(SystemExit, match="give --out-dir"):
        main(["video-tokenize", str(empty)])
    with pytest.raises(SystemExit, match="folder of clips itself"):
        main(["video-tokenize", str(empty), "--out-dir", str(empty)])
    with pytest.raises(SystemExit, match=r"--out 'o\.gif'.*accepted: \.gif, \.mp4"):
        main(["video-tokenize", str(empty), "--out-dir", str(tmp_path / "o"), "--out", "o.gif"])
    assert not (tmp_path / "o").exists()


def test_folder_where_every_clip_fails_exits_with_an_error_after_the_summary(tmp_path):
    clips = tmp_path / "clips"
    clips.mkdir()
    (clips / "a.mp4").write_bytes(b"\x00" * 32)
    (clips / "b.mov").write_bytes(b"")
    with pytest.raises(SystemExit, match="none of the 2 clips") as exit_info:
        main(["video-tokenize", str(clips), "--out-dir", str(tmp_path / "o"), "--no-progress"])
    assert exit_info.value.code == 2
    summary = json.loads((tmp_path / "o" / "summary.json").read_text())
    assert summary["clips"] == [] and [f["video"] for f in summary["failed"]] == [str(clips / "a.mp4"),
                                                                                   str(clips / "b.mov")]
    assert summary["totals"]["processed"] == 0 and summary["totals"]["failed"] == 2


def test_one_clip_into_out_dir(tmp_path, capsys):
    frames = to_uint8_frames(MovingShapesDataset(1, num_frames=4, image_size=32, seed=4)[0]["video"])
    write_video(str(tmp_path / "c.mp4"), frames)
    main(["video-tokenize", str(tmp_path / "c.mp4"), "--out-dir", str(tmp_path / "o")])
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["overlay"] == str(tmp_path / "o" / "c_trajectories.gif")
    assert read_video(result["overlay"]).shape == (4, 128, 128, 3)  # default size 128, as without --out-dir


def _modules_after(code: str) -> set[str]:
    env = {**os.environ, "PYTHONPATH": ROOT + os.pathsep + os.environ.get("PYTHONPATH", "")}
    out = subprocess.run([sys.executable, "-c", code + "\nimport sys; print(' '.join(sys.modules))"], env=env,
                         capture_output=True, text=True, check=True, timeout=300).stdout
    return set(out.strip().splitlines()[-1].split())


def test_cli_entry_and_video_tokenize_import_no_lightning():
    heavy = {"lightning", "torch", "torchvision", "diffusers", "lpips", "torchmetrics"}
    loaded = _modules_after(
        "import importlib, tokgen.cli as cli\n"
        "module, func = cli.COMMANDS['video-tokenize'][0].split(':')\n"
        "assert callable(getattr(importlib.import_module(module), func))\n"
        "import tokgen.video.extract, tokgen.video.io, tokgen.video.segment, tokgen.video.movers\n"
        "cli.usage()")
    assert "tokgen.commands.video_tokenize" in loaded and not heavy & {m.split(".")[0] for m in loaded}


def test_video_tokenize_of_one_clip_runs_without_torch(tmp_path):
    frames = to_uint8_frames(MovingShapesDataset(1, num_frames=4, image_size=32, seed=4)[0]["video"])
    write_video(str(tmp_path / "c.mp4"), frames)
    loaded = _modules_after(f"from tokgen.cli import main\n"
                            f"main(['video-tokenize', {str(tmp_path / 'c.mp4')!r}, '--size', '32'])")
    assert {m.split(".")[0] for m in loaded}.isdisjoint({"lightning", "torch"})
    assert (tmp_path / "c_trajectories.gif").is_file()


def test_lightning_names_stay_available_from_tokgen_cli():
    loaded = _modules_after("from tokgen.cli import lightning_main, TokgenCLI, StepCheckpoint, ConfigError\n"
                            "import tokgen.lightning_cli as l\n"
                            "assert l.ConfigError is ConfigError and l.lightning_main is lightning_main")
    assert "lightning" in loaded


def test_help_lists_every_command(capsys):
    from tokgen.cli import COMMANDS

    main(["--help"])
    text = capsys.readouterr().out
    assert all(name in text for name in ["fit", *COMMANDS])
    with pytest.raises(SystemExit) as exit_info:
        main(["video-tokenize", "--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    assert "--out-dir" in text and "Folder mode" in text and "summary.json" in text

