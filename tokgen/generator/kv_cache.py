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

    def update(self, start_pos, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """k, v: (B, H, T, head_dim) for positions start_pos..start_pos+T-1 -> keys, values (B, H, start_pos+T, hd).

        ``start_pos`` may also be a (B,) tensor of per-row positions (T = 1): row b is written at its own
        position, and the keys up to the largest position are returned (the caller masks each row's future)."""
        if isinstance(start_pos, torch.Tensor):
            rows = torch.arange(k.shape[0], device=k.device)
            self.kv[0][rows, :, start_pos] = k[:, :, 0]
            self.kv[1][rows, :, start_pos] = v[:, :, 0]
            end = int(start_pos.max()) + 1
            return self.kv[0, :, :, :end], self.kv[1, :, :, :end]
        end = start_pos + k.shape[2]
        if end > self.max_len:
            raise ValueError(f"KV cache holds {self.max_len} positions; cannot write up to position {end}")
        self.kv[0, :, :, start_pos:end] = k
        self.kv[1, :, :, start_pos:end] = v
        return self.kv[0, :, :, :end], self.kv[1, :, :, :end]

    def keep_rows(self, rows: torch.Tensor) -> None:
        """Keep only batch rows ``rows`` (1D index tensor), in that order: rows that finished generating leave
        the cache, so later decode steps compute and read only the rows still running."""
        self.kv = self.kv[:, rows]
