"""Exponential moving average of a model's weights, with a warm-up so short runs are not dominated by init."""
from __future__ import annotations

import torch
from torch import nn


@torch.no_grad()
def ema_update(ema: nn.Module, model: nn.Module, decay: float, step: int) -> float:
    """ema <- d * ema + (1 - d) * model with d = min(decay, (1 + step) / (10 + step)); returns d."""
    d = min(decay, (1 + step) / (10 + step))
    ema_params = [p for p in ema.parameters()]
    model_params = [p.detach() for p in model.parameters()]
    torch._foreach_lerp_(ema_params, model_params, 1 - d)
    for b_ema, b in zip(ema.buffers(), model.buffers()):
        b_ema.copy_(b)
    return d
