"""A static, pre-allocated key/value cache for one attention layer (gpt-fast style).

Keys and values live in one buffer ``kv: (2, B, heads, max_len, head_dim)`` allocated once per generation.
``update(start_pos, k, v)`` writes the new positions and returns views of the *filled* part
``[:start_pos + T]`` only, so attention at step t reads t keys, not max_len: the cost of a generation grows
linearly with the number of generated tokens, also with classifier-free guidance (2B rows).
"""
from __future__ import annotations

import torch
from torch import nn


class KVCache(nn.Module):
    def __init__(self, batch_size: int, num_heads: int, max_len: int, head_dim: int, device=None, dtype=None):
        super().__init__()
        self.max_len = max_len
        # Never read before written (only the filled prefix is returned), so no zero-fill is needed.
        self.register_buffer(
            "kv", torch.empty(2, batch_size, num_heads, max_len, head_dim, device=device, dtype=dtype), persistent=False
        )

    def update(self, start_pos: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """k, v: (B, H, T, head_dim) for positions start_pos..start_pos+T-1 -> keys, values (B, H, start_pos+T, hd)."""
        end = start_pos + k.shape[2]
        if end > self.max_len:
            raise ValueError(f"KV cache holds {self.max_len} positions; cannot write up to position {end}")
        self.kv[0, :, :, start_pos:end] = k
        self.kv[1, :, :, start_pos:end] = v
        return self.kv[0, :, :, :end], self.kv[1, :, :, :end]
