"""The video recipes parse through the CLI, build their models, and compare at equal token counts."""
import pytest

from conftest import build_on_meta


@pytest.mark.parametrize("recipe", ["configs/video/moving_shapes_tiny.yaml", "configs/video/moving_shapes_patch_tiny.yaml"])
def test_video_recipe_builds(recipe, tmp_path):
    cli = build_on_meta(recipe, tmp_path)
    module, dm = cli.model, cli.datamodule
    assert module.tokenizer.num_tokens == 8  # trajectory slots == space-time patches: equal token counts
    assert (dm.num_frames, dm.image_size) == (module.tokenizer_config.num_frames, module.tokenizer_config.image_size)
    assert dm.trajectories == module.tokenizer.needs_trajectories
    kind = "patch" if "patch" in recipe else "trajectory"
    assert type(module.tokenizer).__name__ == {"trajectory": "TrajectoryTokenizer", "patch": "PatchVideoTokenizer"}[kind]
    assert module.tokenizer_config.kind == kind


def test_mismatched_data_is_one_clear_error(tmp_path):
    cli = build_on_meta("configs/video/moving_shapes_tiny.yaml", tmp_path)
    cli.datamodule.image_size = 32

    class Trainer:
        datamodule = cli.datamodule

    cli.model._trainer = Trainer()
    with pytest.raises(ValueError, match="data image_size=32 does not match the video tokenizer's image_size=64"):
        cli.model.setup("fit")
