"""Safe checkpoint reading: tensors and plain containers only, never arbitrary pickled code."""
from __future__ import annotations

import os

import torch

from .weights import error_summary, load_state_strict


def load_checkpoint(path: str, map_location: str = "cpu", mmap: bool = False) -> dict:
    """torch.load with weights_only=True and one clear error for missing or corrupt files (``mmap``: map the
    tensors instead of reading them, for a quick look at the metadata)."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"checkpoint not found: {path}")
    if os.path.getsize(path) == 0:
        raise ValueError(f"checkpoint {path} is empty (0 bytes; a save that was interrupted?)")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True, mmap=mmap)
    except Exception as err:  # truncated zip, wrong format, pickled objects outside the safe list
        raise ValueError(
            f"checkpoint {path} is corrupt or not a tokgen/Lightning checkpoint ({error_summary(err)})"
        ) from None
    if not isinstance(ckpt, dict) or "state_dict" not in ckpt:
        raise ValueError(f"checkpoint {path} is not a Lightning checkpoint (no 'state_dict' entry)")
    return ckpt


def checkpoint_kind(path: str) -> str | None:
    """The model kind a tokgen checkpoint holds (``checkpoint["tokgen"]["kind"]``, e.g. ``tokenizer1d``,
    ``halting_tokenizer``, ``video_tokenizer``, ``generator``); None when it has no tokgen metadata."""
    return (load_checkpoint(path, mmap=True).get("tokgen") or {}).get("kind")


def checkpoint_nested_dropout(path: str) -> str | None:
    """How a tokenizer checkpoint was trained over prefixes (``checkpoint["tokgen"]["nested_dropout"]``):
    ``"none"`` means fixed-length (only k = K trained); None when not recorded."""
    return (load_checkpoint(path, mmap=True).get("tokgen") or {}).get("nested_dropout")


def load_module_weights(model: torch.nn.Module, ckpt: dict, name: str, path: str, use_ema: bool = True) -> None:
    """Load ``model`` from the LightningModule entries ``ema_<name>.*`` (preferred when use_ema) or ``<name>.*``,
    failing with one message when the weights do not match the model built from the saved config."""
    state = ckpt["state_dict"]
    prefix = f"ema_{name}." if use_ema and any(k.startswith(f"ema_{name}.") for k in state) else f"{name}."
    weights = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
    load_state_strict(model, weights, f"checkpoint {path} ({prefix}*)")

