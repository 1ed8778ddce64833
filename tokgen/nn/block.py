"""Pre-norm transformer block: x + attn(norm(x)), then x + mlp(norm(x)); every transformer block of tokgen
(this one, the flow decoder's AdaLN block, the GPT block) is a :class:`CheckpointableBlock`."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from .attention import Attention


class CheckpointableBlock(nn.Module):
    """A block whose activations can be recomputed in backward instead of stored (activation checkpointing).

    With ``activation_checkpointing = True`` a call in training with gradients enabled runs through
    ``torch.utils.checkpoint`` (non-reentrant): only the block's inputs are kept for backward, the forward runs a
    second time there. Evaluation, ``no_grad`` and cached decoding run the block as usual. The switch is on the
    call, so a block compiled in place (``block.compile()``) is checkpointed as a whole and the state-dict keys
    do not change. :func:`tokgen.lit.speed.apply_speed` sets it from a recipe's ``speed`` section."""

    activation_checkpointing = False

    def __call__(self, *args, **kwargs):
        if self.activation_checkpointing and self.training and torch.is_grad_enabled():
            return checkpoint(super().__call__, *args, use_reentrant=False, **kwargs)
        return super().__call__(*args, **kwargs)


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden_dim: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden_dim)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden_dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class SwiGLU(nn.Module):
    """Gated MLP of Llama: w2(silu(w1 x) * w3 x), with w1 and w3 fused into one (dim -> 2 * hidden) projection,
    no biases."""

    def __init__(self, dim: int, hidden_dim: int):
        super().__init__()
        self.w13 = nn.Linear(dim, 2 * hidden_dim, bias=False)
        self.w2 = nn.Linear(hidden_dim, dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, up = self.w13(x).chunk(2, dim=-1)
        return self.w2(F.silu(gate) * up)


class TransformerBlock(CheckpointableBlock):
    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0, norm_layer=nn.LayerNorm, qk_norm: bool = False):
        super().__init__()
        self.norm1 = norm_layer(dim)
        self.attn = Attention(dim, num_heads, qk_norm=qk_norm)
        self.norm2 = norm_layer(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        x = x + self.attn(self.norm1(x), mask)
        return x + self.mlp(self.norm2(x))


class Transformer(nn.Module):
    """A stack of ``depth`` pre-norm blocks followed by a final norm."""

    def __init__(self, dim: int, depth: int, num_heads: int, mlp_ratio: float = 4.0, qk_norm: bool = False):
        super().__init__()
        self.blocks = nn.ModuleList(TransformerBlock(dim, num_heads, mlp_ratio, qk_norm=qk_norm) for _ in range(depth))
        self.norm = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        for block in self.blocks:
            x = block(x, mask)
        return self.norm(x)
