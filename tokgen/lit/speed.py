"""Speed levers of the training modules, set per recipe under ``model.init_args.speed`` (:class:`SpeedConfig`).

- ``compile``: every transformer block (:class:`tokgen.nn.CheckpointableBlock`: ViT, flow AdaLN and GPT blocks)
  is compiled in place with ``block.compile()``, so the state-dict keys do not change (no ``_orig_mod``) and the
  quantizer / nested dropout / loss code around the blocks, with its data-dependent branches, stays eager.
  Identical blocks share one compiled graph. The generator's decode step is compiled separately
  (``generate(..., compile=True)``).
- ``activation_checkpointing``: every block recomputes its activations in backward (``torch.utils.checkpoint``,
  non-reentrant), trading ~1/3 more forward compute for the activation memory of ViT-L / GPT-L at larger batches.
- ``fused_adamw``: the fused AdamW kernel when every parameter is on CUDA; elsewhere the multi-tensor
  (``foreach``) implementation.
- ``tf32``: TF32 matmuls and convolutions (``torch.set_float32_matmul_precision("high")``) when training on CUDA;
  matters for fp32 recipes and the fp32 parts of bf16-mixed ones.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ..nn import CheckpointableBlock


@dataclass
class SpeedConfig:
    compile: bool = False  # torch.compile every transformer block in place (training)
    compile_backend: str = "inductor"  # torch.compile backend ("aot_eager" checks tracing without code generation)
    compile_mode: str | None = None  # torch.compile mode of the blocks (None = default; "max-autotune" tunes longer)
    activation_checkpointing: bool = False  # recompute each block's activations in backward (training only)
    fused_adamw: bool = True  # fused AdamW when the parameters are on CUDA (foreach otherwise)
    tf32: bool = True  # TF32 matmuls when training on CUDA

    def __post_init__(self):
        for name in ("compile", "activation_checkpointing", "fused_adamw", "tf32"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"speed.{name}={getattr(self, name)!r} must be true or false")
        if not isinstance(self.compile_backend, str) or not self.compile_backend:
            raise ValueError(f"speed.compile_backend={self.compile_backend!r} must be a torch.compile backend name, "
                             f"e.g. inductor or aot_eager")


def transformer_blocks(model: nn.Module) -> list[CheckpointableBlock]:
    """Every transformer block inside ``model`` (in module order)."""
    return [m for m in model.modules() if isinstance(m, CheckpointableBlock)]


def apply_speed(model: nn.Module, speed: SpeedConfig) -> int:
    """Set activation checkpointing on every transformer block of ``model`` and, with ``speed.compile``, compile
    each in place. Idempotent (a second call recompiles lazily, same keys). Returns the number of blocks."""
    blocks = transformer_blocks(model)
    for block in blocks:
        block.activation_checkpointing = speed.activation_checkpointing
        if speed.compile:
            options = {"backend": speed.compile_backend}
            if speed.compile_mode is not None:
                options["mode"] = speed.compile_mode
            block.compile(**options)
    return len(blocks)


def build_adamw(groups: list[dict], speed: SpeedConfig, **kwargs) -> torch.optim.AdamW:
    """AdamW over parameter ``groups``: fused when ``speed.fused_adamw`` and every parameter is on CUDA,
    otherwise the multi-tensor (foreach) implementation."""
    params = [p for g in groups for p in g["params"]]
    on_cuda = bool(params) and all(p.is_cuda for p in params)
    if speed.fused_adamw and on_cuda:
        return torch.optim.AdamW(groups, fused=True, **kwargs)
    return torch.optim.AdamW(groups, foreach=True, **kwargs)


def enable_tf32(device: torch.device, speed: SpeedConfig) -> bool:
    """TF32 matmuls / convolutions for training on a CUDA ``device`` when ``speed.tf32``; returns whether set.
    The setting is process-wide (torch has no per-module switch)."""
    if not speed.tf32 or torch.device(device).type != "cuda":
        return False
    torch.set_float32_matmul_precision("high")
    torch.backends.cudnn.allow_tf32 = True
    return True
