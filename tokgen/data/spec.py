"""``--data``: one resolver for every command that reads a data set (tokenize, eval, train-features, refit-halting,
video-eval).

A ``--data`` value is one of

- a name: ``shapes``, ``fmnist`` or ``folder:PATH`` (images), or for a video tokenizer ``moving_shapes`` or
  ``folder:PATH`` (a folder of videos);
- a YAML/JSON file holding a datamodule spec (``class_path`` + ``init_args``) or a whole training recipe, whose
  ``data:`` section is used (so ``--data configs/tokenizer/fmnist_small.yaml`` means the data that tokenizer was
  trained on);
- that spec inline, e.g. ``'{class_path: ShapesDataModule, init_args: {test_size: 8}}'`` (a class name without a
  module means ``tokgen.data``).

:func:`resolve_data_spec` turns it into ``{"class_path": ..., "init_args": {...}}``, checks that the class is a
``LightningDataModule`` that takes those arguments, and fills in what the model fixes (image size, channels, a
video tokenizer's frame count and extraction settings): a spec that sets one of them to another value is an error,
since the model could not read that data. The caller instantiates the class (:func:`build_datamodule`).
"""
from __future__ import annotations

import importlib
import inspect
import os
from collections.abc import Mapping

from .base import check_init_args, read_yaml

IMAGE_NAMES = {
    "shapes": "tokgen.data.ShapesDataModule",
    "fmnist": "tokgen.data.FashionMNISTDataModule",
    "folder": "tokgen.data.ImageFolderDataModule",
}
VIDEO_NAMES = {"moving_shapes": "tokgen.data.VideoDataModule", "folder": "tokgen.data.VideoDataModule"}
SPEC_FILE_SUFFIXES = (".yaml", ".yml", ".json")


def data_accepted(video: bool = False) -> str:
    """What ``--data`` accepts, for help texts and errors."""
    names = "moving_shapes, folder:PATH (a folder of videos)" if video else "shapes, fmnist, folder:PATH"
    return (f"{names}, a YAML/JSON file with a datamodule spec (class_path + init_args) or a recipe with a data: "
            f"section, or an inline spec")


DATA_ACCEPTED = data_accepted()


def resolve_data_spec(spec: str, image_size: int | None = None, channels: int | None = None,
                      video: Mapping | None = None, named_args: Mapping[str, Mapping] | None = None,
                      expected_by: str = "model") -> dict:
    """--data value -> {"class_path": ..., "init_args": {...}} (see the module docstring).

    ``image_size`` / ``channels`` / the entries of ``video`` (a video tokenizer's other fixed VideoDataModule
    settings, e.g. num_frames, trajectories, extraction; names then mean videos) are what the ``expected_by`` model
    reads: filled in where the class takes them, an error where the spec sets another value. ``named_args``:
    extra init_args per name (e.g. ``{"folder": {"val_root": PATH}}``), applied to names only, never to a file or
    inline spec, which say what they mean themselves."""
    names = IMAGE_NAMES if video is None else VIDEO_NAMES
    name, _, arg = spec.partition(":")
    if name in names and (name == "folder") == bool(arg):
        init = {"root": arg} if name == "folder" else {}
        if video is not None:
            init["dataset"] = name
        init.update((named_args or {}).get(name, {}))
        resolved = {"class_path": names[name], "init_args": init}
    elif os.path.isfile(spec):
        loaded = read_yaml(spec, f"--data {spec}")  # YAML is a superset of JSON
        resolved = loaded.get("data", loaded) if isinstance(loaded, dict) else None
    elif spec.lstrip().startswith("{"):
        resolved = read_yaml(spec, f"--data {spec!r}")
    elif spec.endswith(SPEC_FILE_SUFFIXES):
        raise FileNotFoundError(f"--data {spec}: file not found; accepted: {data_accepted(video is not None)}")
    else:
        raise ValueError(f"--data {spec!r} is not accepted; use {data_accepted(video is not None)}")
    if not isinstance(resolved, dict) or "class_path" not in resolved:
        raise ValueError(f"--data {spec!r} holds no datamodule spec: expected class_path and init_args at the top "
                         f"or under data:")
    if not isinstance(resolved.get("init_args") or {}, dict):
        raise ValueError(f"--data {spec!r}: init_args must be a mapping of argument names to values")
    resolved = {"class_path": resolved["class_path"], "init_args": dict(resolved.get("init_args") or {})}
    if "." not in resolved["class_path"]:
        resolved["class_path"] = f"tokgen.data.{resolved['class_path']}"
    cls = import_datamodule(resolved["class_path"])
    init = check_init_args(cls, resolved["init_args"], f"--data {spec}")
    params = inspect.signature(cls.__init__).parameters
    fixed = {"image_size": image_size, "channels": channels, **(video or {})}
    for key, want in fixed.items():
        if want is None or key not in params:
            continue
        if key in init and init[key] != want:
            raise ValueError(f"mismatched {key.replace('_', ' ')}: --data {spec} has {key}={init[key]} but the "
                             f"{expected_by} expects {key}={want}; set init_args.{key}: {want} or leave it out")
        init[key] = want
    return resolved


def import_datamodule(path: str) -> type:
    """``module.Class`` -> the LightningDataModule class, or a ValueError naming the path."""
    from lightning import LightningDataModule

    module, _, name = path.rpartition(".")
    try:
        cls = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError, ValueError):
        raise ValueError(f"datamodule class {path!r} cannot be imported; e.g. tokgen.data.FashionMNISTDataModule") from None
    if not (inspect.isclass(cls) and issubclass(cls, LightningDataModule)):
        raise ValueError(f"{path!r} is not a LightningDataModule class")
    return cls


def build_datamodule(resolved: Mapping):
    """A resolved spec (:func:`resolve_data_spec`) -> the datamodule instance."""
    return import_datamodule(resolved["class_path"])(**resolved["init_args"])
