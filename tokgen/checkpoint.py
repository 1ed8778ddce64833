"""Safe checkpoint reading: tensors and plain containers only, never arbitrary pickled code."""
from __future__ import annotations

import os

import torch


def load_checkpoint(path: str, map_location: str = "cpu") -> dict:
    """torch.load with weights_only=True and one clear error for missing or corrupt files."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:  # truncated zip, wrong format, pickled objects outside the safe list
        raise ValueError(
            f"checkpoint {path} is corrupt or not a tokgen/Lightning checkpoint "
            f"({type(err).__name__}: {str(err).splitlines()[0][:200]})"
        ) from None
    if not isinstance(ckpt, dict) or "state_dict" not in ckpt:
        raise ValueError(f"checkpoint {path} is not a Lightning checkpoint (no 'state_dict' entry)")
    return ckpt


def load_module_weights(model: torch.nn.Module, ckpt: dict, name: str, path: str, use_ema: bool = True) -> None:
    """Load ``model`` from the LightningModule entries ``ema_<name>.*`` (preferred when use_ema) or ``<name>.*``,
    failing with one message when the weights do not match the model built from the saved config."""
    state = ckpt["state_dict"]
    prefix = f"ema_{name}." if use_ema and any(k.startswith(f"ema_{name}.") for k in state) else f"{name}."
    weights = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
    missing, unexpected = model.load_state_dict(weights, strict=False)
    if missing or unexpected:
        raise ValueError(
            f"checkpoint {path} does not match its {name} config: missing {missing[:5]}, unexpected {unexpected[:5]}"
        )
