"""Exponential moving average of a model's weights, with a warm-up so short runs are not dominated by init.

The update is multi-tensor: one ``torch._foreach_lerp_`` over every parameter (ema + (1 - d) * (model - ema),
i.e. d * ema + (1 - d) * model) and one ``torch._foreach_copy_`` over the buffers, so a ViT-L's hundreds of
tensors cost a few fused kernel launches per step instead of one or two per tensor.
"""
from __future__ import annotations

import torch
from torch import nn


@torch.no_grad()
def ema_update(ema: nn.Module, model: nn.Module, decay: float, step: int) -> float:
    """ema <- d * ema + (1 - d) * model with d = min(decay, (1 + step) / (10 + step)); buffers are copied.
    Returns d."""
    d = min(decay, (1 + step) / (10 + step))
    ema_params = list(ema.parameters())
    model_params = [p.detach() for p in model.parameters()]
    if ema_params:
        torch._foreach_lerp_(ema_params, model_params, 1 - d)
    ema_buffers, model_buffers = list(ema.buffers()), list(model.buffers())
    if ema_buffers:
        torch._foreach_copy_(ema_buffers, model_buffers)
    return d
