"""One --data resolver for every command: the same names, files and inline specs everywhere."""
import pytest

from tokgen.data.spec import data_accepted, resolve_data_spec
from tokgen.metrics.datasets import build_data


def test_one_set_of_rules_and_one_error():
    with pytest.raises(FileNotFoundError, match=r"missing\.json: file not found; accepted: shapes, fmnist"):
        resolve_data_spec("missing.json")
    with pytest.raises(ValueError, match=r"'kinetics' is not accepted; use moving_shapes, folder:PATH"):
        resolve_data_spec("kinetics", video={})
    assert data_accepted().startswith("shapes, fmnist, folder:PATH") and "inline spec" in data_accepted(video=True)
    assert resolve_data_spec("moving_shapes", 32, video={"num_frames": 4}) == {
        "class_path": "tokgen.data.VideoDataModule",
        "init_args": {"dataset": "moving_shapes", "image_size": 32, "num_frames": 4}}
    with pytest.raises(ValueError, match="mismatched num frames: .* has num_frames=8 but the model expects num_frames=4"):
        resolve_data_spec("{class_path: VideoDataModule, init_args: {num_frames: 8}}", video={"num_frames": 4})


def test_eval_reads_an_inline_spec_like_tokenize():
    data = build_data("{class_path: ShapesDataModule, init_args: {test_size: 8}}", image_size=16)
    assert len(data) == 8 and data.image_size == 16 and data.key["data"]["init_args"]["image_size"] == 16
