"""The one base of every tokgen model: what it is built from, and the two ways it is saved and loaded.

A model class names its config dataclass (``config_class``) and its ``kind``, the string that its training module
writes into ``checkpoint["tokgen"]["kind"]``; tokgen finds the class of any checkpoint from that string
(:meth:`TokgenModel.class_for_kind`). Two file formats, both loaded strictly (every key of the model and no other,
see :mod:`tokgen.weights`) into a model that tokgen builds itself from the saved config, so no file runs code:

- a Lightning checkpoint written by ``tokgen fit`` (:meth:`TokgenModel.from_checkpoint`): the config sits in
  ``checkpoint["tokgen"][config_key]`` and the weights under ``<module_attr>.*`` in the state dict, or
  ``ema_<module_attr>.*`` for the EMA copy, which is preferred;
- a hub-style folder (:meth:`TokgenModel.save_pretrained` / :meth:`TokgenModel.from_pretrained`):
  ``config.json`` (the config's fields, plus ``"_tokgen"``: the kind, the class and the training metadata the
  model carries) and ``model.safetensors``. Folders read locally unless the caller allows the Hugging Face Hub.
"""
from __future__ import annotations

import json
import os
from typing import ClassVar

from torch import nn

from .config import DictConfig
from .weights import load_state_strict, read_safetensors

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
META_KEY = "_tokgen"  # config.json entry that is not a config field: kind, class, training metadata


class TokgenModel(nn.Module):
    """Base of Tokenizer1D, HaltingTokenizer, FlowTokenizer, the video tokenizers (TrajectoryTokenizer and
    PatchVideoTokenizer, under their common base VideoTokenizer) and GPT.

    Class attributes of a model class:
        config_class: the config dataclass (a :class:`tokgen.config.DictConfig`) its ``__init__`` takes.
        kind: ``checkpoint["tokgen"]["kind"]`` of its checkpoints (unique per class).
        config_key: where the config sits in ``checkpoint["tokgen"]``.
        module_attr: the training module's attribute that holds it (the state-dict prefix of its weights).
        metadata: model attribute -> ``checkpoint["tokgen"]`` key of training metadata that loading restores
            and ``save_pretrained`` keeps (e.g. the generator's tokenizer identity).
        description, hint: how errors name the model, and what they suggest for a checkpoint of another kind.
    """

    config_class: ClassVar[type[DictConfig]]
    kind: ClassVar[str]
    config_key: ClassVar[str] = "tokenizer_config"
    module_attr: ClassVar[str] = "tokenizer"
    metadata: ClassVar[dict[str, str]] = {}
    description: ClassVar[str] = "tokgen model"
    hint: ClassVar[str] = "was it written by `tokgen fit`?"
    kinds: ClassVar[dict[str, type["TokgenModel"]]] = {}  # every model class by its kind

    config: DictConfig

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        if "kind" in cls.__dict__:
            other = TokgenModel.kinds.get(cls.kind)
            if other is not None and other.__qualname__ != cls.__qualname__:
                raise TypeError(f"model kind {cls.kind!r} of {cls.__qualname__} is already {other.__qualname__}'s")
            TokgenModel.kinds[cls.kind] = cls

    @classmethod
    def make_config(cls, config: DictConfig | dict | None) -> DictConfig:
        """``config`` as a ``config_class`` instance: None -> the defaults, a dict -> checked field by field."""
        if config is None:
            return cls.config_class()
        if isinstance(config, dict):
            return cls.config_class.from_dict(config)
        if not isinstance(config, cls.config_class):
            raise ValueError(f"{cls.__name__} needs a {cls.config_class.__name__} (or a dict), "
                             f"got {type(config).__name__}")
        return config

    @classmethod
    def class_for_kind(cls, kind: str | None) -> type["TokgenModel"]:
        """The class of ``cls``'s family that writes checkpoints of ``kind``; ``cls`` itself for an unknown kind
        or one outside the family (its loader then names what is missing)."""
        found = TokgenModel.kinds.get(kind)
        return found if found is not None and issubclass(found, cls) else cls

    @classmethod
    def class_for_config(cls, config: DictConfig) -> type["TokgenModel"]:
        """The class that builds a model from ``config``: ``cls`` itself, unless a family of classes shares one
        checkpoint kind and the config names the member (the video tokenizers)."""
        return cls

    def check_loaded(self) -> None:
        """Called once the weights are in: fail early on what the model needs from outside its files (e.g. a
        frozen VAE at its configured path). Nothing by default."""

    def restore_metadata(self, meta: dict, source: str) -> None:
        """Set the attributes named in ``metadata`` from ``meta`` (None where absent) and remember ``source``."""
        for attr, key in self.metadata.items():
            setattr(self, attr, meta.get(key))
        self.checkpoint_path = source

    # ------------------------------------------------------------------ Lightning checkpoints
    @classmethod
    def from_checkpoint(cls, path: str, use_ema: bool = True, map_location: str = "cpu"):
        """Load from a Lightning checkpoint written by ``tokgen fit`` (no YAML needed): build the model from the saved
        config and load its weights strictly, the EMA copy when saved and ``use_ema``. Returns it in eval mode."""
        from .checkpoint import load_checkpoint, load_module_weights

        ckpt = load_checkpoint(path, map_location=map_location)
        meta = ckpt.get("tokgen") or {}
        kind = meta.get("kind")  # checkpoints without one are read as cls's kind when they hold its config
        if cls.config_key not in meta or kind not in (None, cls.kind):
            owner = TokgenModel.kinds.get(kind)
            hint = f"load it with {owner.__name__}.from_checkpoint" if owner not in (None, cls) else cls.hint
            raise ValueError(f"checkpoint {path} is not a {cls.description} checkpoint (kind={kind or 'unknown'!r}, "
                             f"no {cls.config_key!r}); {hint}")
        config = cls.config_class.from_dict(meta[cls.config_key])
        model = cls.class_for_config(config)(config)
        load_module_weights(model, ckpt, cls.module_attr, path, use_ema)
        model.restore_metadata(meta, path)
        model.check_loaded()
        return model.eval()

    # ------------------------------------------------------------------ hub-style folders
    def save_pretrained(self, save_directory: str | os.PathLike) -> str:
        """Write ``config.json`` and ``model.safetensors`` (tensors only) into ``save_directory`` (created when
        missing); returns the folder. ``from_pretrained`` reads it back."""
        from safetensors.torch import save_file

        folder = os.fspath(save_directory)
        os.makedirs(folder, exist_ok=True)
        config = self.config.to_dict()
        config[META_KEY] = {"kind": self.kind, "class": type(self).__name__,
                            **{key: getattr(self, attr, None) for attr, key in self.metadata.items()}}
        with open(os.path.join(folder, CONFIG_FILE), "w") as f:
            json.dump(config, f, indent=2, sort_keys=True)
        # clones: tied weights (one tensor under two names) are stored under each name, as the state dict has them
        state = {k: v.detach().to("cpu", copy=True).contiguous() for k, v in self.state_dict().items()}
        save_file(state, os.path.join(folder, WEIGHTS_FILE), metadata={"format": "pt"})
        return folder

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str | os.PathLike, *, local_files_only: bool = True,
                        revision: str | None = None, cache_dir: str | None = None, force_download: bool = False,
                        token: str | None = None, map_location: str = "cpu"):
        """Load a model written by ``save_pretrained`` (``config.json`` + ``model.safetensors``), in eval mode.

        Local only by default: ``pretrained_model_name_or_path`` must be a folder on disk, and a missing one fails at
        once (nothing is downloaded). ``local_files_only=False`` also accepts a Hugging Face Hub repo id, downloaded
        (or read from the Hugging Face cache) by ``huggingface_hub``. The weights are loaded strictly: a file that
        lacks keys of the model (e.g. the decoder) or holds others is refused with both lists."""
        path = os.fspath(pretrained_model_name_or_path)
        if os.path.isdir(path):
            files = [os.path.join(path, name) for name in (CONFIG_FILE, WEIGHTS_FILE)]
            missing = [name for name, f in zip((CONFIG_FILE, WEIGHTS_FILE), files) if not os.path.isfile(f)]
            if missing:
                raise FileNotFoundError(f"{cls.__name__}.from_pretrained: {path} has no {' or '.join(missing)} "
                                        "(save_pretrained writes config.json + model.safetensors)")
        elif local_files_only:
            raise FileNotFoundError(
                f"{cls.__name__}.from_pretrained: {path} is not a local folder (expected config.json + "
                f"model.safetensors from save_pretrained); nothing is downloaded by default: pass "
                f"local_files_only=False to load a Hugging Face Hub repo id")
        else:
            from huggingface_hub import hf_hub_download

            files = [hf_hub_download(repo_id=path, filename=name, revision=revision, cache_dir=cache_dir,
                                     force_download=force_download, token=token) for name in (CONFIG_FILE, WEIGHTS_FILE)]
        config_file, weights_file = files
        try:
            with open(config_file) as f:
                config = json.load(f)
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise ValueError(f"{cls.__name__}.from_pretrained: {config_file} is not valid JSON ({err})") from None
        if not isinstance(config, dict):
            raise ValueError(f"{cls.__name__}.from_pretrained: {config_file} must hold a JSON object of config fields")
        meta = config.pop(META_KEY, None) or {}  # folders written before the base class have none
        kind = meta.get("kind")
        if kind is not None and kind != cls.kind:
            owner = TokgenModel.kinds.get(kind)
            use = f"load it with {owner.__name__}.from_pretrained" if owner else "it was written by another program"
            raise ValueError(f"{cls.__name__}.from_pretrained: {path} holds a {kind!r} model, not a {cls.kind!r} "
                             f"one; {use}")
        config = cls.config_class.from_dict(config)
        model = cls.class_for_config(config)(config)
        name = type(model).__name__
        state = read_safetensors(weights_file, f"{name} weights")[0]
        load_state_strict(model, state, f"{name} weights {weights_file}")
        model.restore_metadata(meta, path)
        model.check_loaded()
        return model.to(map_location).eval()

