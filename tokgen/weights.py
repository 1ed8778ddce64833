"""Loading model files without running code stored in them.

Weights are read from safetensors (tensors only) and loaded *strictly* into a model that tokgen builds itself, so a
file can neither execute code nor silently leave part of a model at its random initialisation: every key the model
expects must be in the file and the file may hold no other. TorchScript archives carry Python-like code that runs
when they are loaded and called; they are only opened when the caller says the file is trusted.
"""
from __future__ import annotations

import json
import os
import warnings
import zipfile

import torch
from torch import nn

MAX_LISTED_KEYS = 8  # keys named per list in a mismatch message (the count is always given)


def format_keys(keys: list[str]) -> str:
    """``n: a, b, c`` with at most MAX_LISTED_KEYS names and ``... (+m more)`` after them."""
    shown = ", ".join(keys[:MAX_LISTED_KEYS])
    more = f", ... (+{len(keys) - MAX_LISTED_KEYS} more)" if len(keys) > MAX_LISTED_KEYS else ""
    return f"{len(keys)}: {shown}{more}"


def error_summary(err: BaseException, limit: int = 200) -> str:
    """``Type: first line of the message`` (just ``Type`` when the message is empty, e.g. a bare EOFError)."""
    lines = str(err).strip().splitlines()
    return f"{type(err).__name__}: {lines[0][:limit]}" if lines else type(err).__name__


def load_state_strict(model: nn.Module, state: dict[str, torch.Tensor], source: str, assign: bool = False) -> None:
    """Load ``state`` into ``model`` requiring exactly its keys and shapes; otherwise one ValueError naming
    ``source`` and listing the missing and unexpected keys (or the mismatched shapes). ``assign``: the model's
    tensors become those of ``state`` (for a model built on the meta device)."""
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    if missing or unexpected:
        parts = ([f"missing keys {format_keys(missing)}"] if missing else []) + \
                ([f"unexpected keys {format_keys(unexpected)}"] if unexpected else [])
        raise ValueError(f"{source} does not match the {type(model).__name__} built from its config: "
                         f"{'; '.join(parts)}")
    shapes = [f"{k} {tuple(state[k].shape)} (expected {tuple(v.shape)})" for k, v in expected.items()
              if tuple(state[k].shape) != tuple(v.shape)]
    if shapes:
        raise ValueError(f"{source} does not match the {type(model).__name__} built from its config: wrong shapes "
                         f"{format_keys(shapes)}")
    model.load_state_dict(state, strict=True, assign=assign)


def read_safetensors(path: str, what: str) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """(tensors on CPU, string metadata) of a safetensors file; ValueError naming ``what`` and ``path`` when the file
    is not one."""
    from safetensors import safe_open

    try:
        with safe_open(path, framework="pt", device="cpu") as f:
            metadata = dict(f.metadata() or {})
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as err:  # header too large / not JSON / truncated data: all mean "not a safetensors file"
        reason = error_summary(err)
        raise ValueError(f"{what} {path} is not a readable safetensors file ({reason})") from None
    return tensors, metadata


def torch_archive_kind(path: str) -> str | None:
    """``"torchscript"`` for a TorchScript archive (a zip with ``code/``), ``"pickle"`` for another PyTorch zip
    archive (``torch.save``), None otherwise. Reads only the zip directory: nothing in the file is run."""
    if not zipfile.is_zipfile(path):
        return None
    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
    except (zipfile.BadZipFile, OSError):
        return None
    if any("/code/" in n or n.startswith("code/") or n.endswith("constants.pkl") for n in names):
        return "torchscript"
    return "pickle"


def refuse_untrusted_torchscript(path: str, what: str, trust_hint: str) -> None:
    """Raise the one-line refusal for a TorchScript ``path`` that the user has not trusted (``trust_hint`` says how
    to trust it, e.g. ``--trust-torchscript``)."""
    raise ValueError(
        f"{what} {path} is a TorchScript file: loading it runs code stored in the file, so it is refused; "
        f"save the model as safetensors weights + a tokgen class (`tokgen train-features` writes one) or, only if "
        f"you trust whoever wrote the file, allow it with {trust_hint}"
    )


def load_trusted_torchscript(path: str, what: str, trust_hint: str,
                             extra_files: tuple[str, ...] = ()) -> tuple[nn.Module, dict[str, str]]:
    """``torch.jit.load`` a file the user trusted with ``trust_hint`` (CPU, eval mode), with a deprecation note.
    Returns (module, {name: text} of the archive's ``extra_files``, "" where absent)."""
    warnings.warn(
        f"{what} {path}: loading a TorchScript file because of {trust_hint}; TorchScript extractors are deprecated "
        "(TorchScript runs code from the file): re-save the model as safetensors weights + a tokgen class",
        FutureWarning, stacklevel=3,
    )
    extra = {name: "" for name in extra_files}
    with warnings.catch_warnings():  # torch's own torch.jit deprecation warning: the note above says it once
        warnings.simplefilter("ignore", FutureWarning)
        warnings.simplefilter("ignore", DeprecationWarning)
        try:
            module = torch.jit.load(path, map_location="cpu", _extra_files=extra).eval()
        except Exception as err:
            reason = error_summary(err)
            raise ValueError(f"{what} {path} is not a loadable TorchScript file ({reason})") from None
    return module, extra


def json_entry(metadata: dict[str, str], key: str, path: str, what: str) -> dict:
    """The JSON object stored under ``key`` in a safetensors file's metadata; ValueError when absent or invalid."""
    if key not in metadata:
        raise ValueError(f"{what} {path} is a safetensors file without the {key!r} metadata entry (class, config); "
                         "write one with tokgen (e.g. `tokgen train-features`)")
    try:
        value = json.loads(metadata[key])
    except json.JSONDecodeError:
        raise ValueError(f"{what} {path}: its {key!r} metadata entry is not valid JSON") from None
    if not isinstance(value, dict):
        raise ValueError(f"{what} {path}: its {key!r} metadata entry must be a JSON object, got {type(value).__name__}")
    return value


def check_file(path: str, what: str, hint: str) -> None:
    """FileNotFoundError naming ``what`` and ``path`` (and ``hint``: what is expected) when ``path`` is no file."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{what} {path} not found; {hint}")
