"""Which tokenizer a generator speaks: an identity recorded with token shards and generator checkpoints, and
the checks run before sampling (vocabulary size, K, quantizer, weights fingerprint)."""
from __future__ import annotations

import hashlib
import os
import sys

import torch
from torch import nn


def weights_fingerprint(model: nn.Module) -> str:
    """Short sha256 of every parameter and buffer (names, shapes and bytes), in state-dict order."""
    h = hashlib.sha256()
    for name, tensor in model.state_dict().items():
        t = tensor.detach().cpu().contiguous().reshape(-1)  # 1-D: 0-dim buffers cannot be viewed as bytes
        h.update(f"{name}:{tuple(tensor.shape)}:{t.dtype}".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()[:16]


def tokenizer_identity(tokenizer, checkpoint: str | None = None, target_error: float | None = None,
                       threshold: float | None = None) -> dict:
    """What a generator must know about the tokenizer whose codes it models. Codes encoded with a halting
    tokenizer at a target error also carry the ``halting`` identity (see :func:`halting_identity`)."""
    identity = {
        "checkpoint": os.path.abspath(checkpoint) if checkpoint else None,
        "codebook_size": int(tokenizer.quantizer.codebook_size),
        "num_tokens": int(tokenizer.num_tokens),
        "config": tokenizer.config.to_dict(),
        "fingerprint": weights_fingerprint(tokenizer),
    }
    if target_error is not None:
        identity["halting"] = halting_identity(tokenizer, target_error, threshold)
    return identity


def halting_identity(tokenizer, target_error: float | None = None, threshold: float | None = None) -> dict:
    """What decides the lengths of a halting tokenizer's sequences: its halting head (and the target-error
    embedding that conditions it), the halting threshold and the target error. A generator trained on such
    lengths learned them from exactly this."""
    h = hashlib.sha256()
    for name, tensor in tokenizer.state_dict().items():
        if name.startswith(("halt_", "eps_embed")):
            t = tensor.detach().cpu().contiguous().reshape(-1)
            h.update(f"{name}:{tuple(tensor.shape)}".encode() + t.view(torch.uint8).numpy().tobytes())
    return {"fingerprint": h.hexdigest()[:16],
            "threshold": float(threshold if threshold is not None else tokenizer.config.halt_threshold
                               if target_error is None else tokenizer.threshold_at(target_error, 1)[0]),
            "target_error": None if target_error is None else float(target_error)}


def _code_space(quantizer: dict | None) -> dict | None:
    """The quantizer settings that define what a code means (kind, FSQ levels and codes per token); other
    settings may be added to the config over time without changing the codes."""
    if not quantizer:
        return None
    levels = quantizer.get("levels")
    space = {"kind": quantizer.get("kind"), "levels": [int(v) for v in levels] if levels else None}
    groups = int(quantizer.get("groups") or 1)
    return {**space, "groups": groups} if groups > 1 else space


def check_generator_tokenizer(generator, tokenizer, tokenizer_path: str = "the tokenizer", generator_path: str = "the generator") -> None:
    """Raise ValueError when the generator was trained on codes of a different tokenizer.

    Vocabulary size, K and the quantizer must match (errors); a different weights fingerprint with the
    same architecture (e.g. a later checkpoint of the same run) only prints a warning.
    """
    if tokenizer.quantizer.codebook_size is None:
        raise ValueError(f"tokenizer {tokenizer_path} has continuous tokens; the generator needs a discrete quantizer")
    have = {"codebook_size": int(tokenizer.quantizer.codebook_size), "num_tokens": int(tokenizer.num_tokens)}
    info = getattr(generator, "tokenizer_info", None) or {}
    trained = {"codebook_size": info.get("codebook_size", generator.config.vocab_size),
               "num_tokens": info.get("num_tokens")}
    hint = "sample with the tokenizer checkpoint the generator's token shards were made with"
    if info.get("checkpoint"):
        hint += f" ({info['checkpoint']})"
    if generator.config.vocab_size != have["codebook_size"] or trained["codebook_size"] != have["codebook_size"]:
        raise ValueError(
            f"generator {generator_path} was trained on another tokenizer: vocabulary of "
            f"{generator.config.vocab_size} codes, but tokenizer {tokenizer_path} has codebook_size="
            f"{have['codebook_size']}; {hint}"
        )
    if trained["num_tokens"] is not None and trained["num_tokens"] != have["num_tokens"]:
        raise ValueError(
            f"generator {generator_path} was trained on another tokenizer: sequences of K={trained['num_tokens']} "
            f"tokens, but tokenizer {tokenizer_path} has K={have['num_tokens']}; {hint}"
        )
    trained_space = _code_space((info.get("config") or {}).get("quantizer"))
    have_space = _code_space(tokenizer.config.to_dict().get("quantizer"))
    if trained_space is not None and trained_space != have_space:
        raise ValueError(
            f"generator {generator_path} was trained on another tokenizer: quantizer {trained_space}, "
            f"but tokenizer {tokenizer_path} has {have_space}; {hint}"
        )
    halting = info.get("halting")
    if halting:  # the generator learned lengths chosen by a halting head: only that head may decode them
        have = halting_identity(tokenizer, halting.get("target_error")) if hasattr(tokenizer, "halt_head") else None
        if have is None or have["fingerprint"] != halting["fingerprint"]:
            raise ValueError(
                f"generator {generator_path} was trained on lengths chosen by a halting head with fingerprint "
                f"{halting['fingerprint']} (target error {halting.get('target_error')}), but tokenizer "
                f"{tokenizer_path} " + ("is not a halting tokenizer" if have is None else
                                        f"has halting fingerprint {have['fingerprint']}") + f"; {hint}")
    fingerprint = weights_fingerprint(tokenizer) if info.get("fingerprint") else None
    if fingerprint and info["fingerprint"] != fingerprint:
        print(
            f"warning: tokenizer {tokenizer_path} has other weights (fingerprint {fingerprint}) "
            f"than the one generator {generator_path} was trained on ({info['fingerprint']}); codes may mean "
            f"something else",
            file=sys.stderr,
        )
