"""Causal self-attention for autoregressive decoding: rotary positions, grouped-query heads, KV cache.

:class:`CausalSelfAttention` is the attention of tokgen's GPT (Llama style: one fused qkv projection and an
output projection, both without bias; RoPE on queries and keys). ``num_kv_heads < num_heads`` shares each
key/value head between ``num_heads / num_kv_heads`` query heads (grouped-query attention), which divides the KV
cache, and the bytes every decode step reads from it, by that factor.

Three ways to call it:

- training / a full prefix: no cache, ``start_pos = 0``, a causal mask over the T positions;
- cached decoding: ``cache`` is an object with ``update(start_pos, k, v) -> (k, v)`` that stores the new keys and
  values and returns the filled part (``tokgen.generator.KVCache``); a decode step then reads only the positions
  written so far, not the whole pre-allocated cache;
- compiled decoding: ``cache`` is a static buffer (2, B, num_kv_heads, L, head_dim) written in place
  (:func:`static_cache_attention`), so every step has the same shapes.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .rope import apply_rope


class CausalSelfAttention(nn.Module):
    """Causal self-attention with RoPE, grouped-query heads and an optional KV cache (see the module docstring)."""

    def __init__(self, dim: int, num_heads: int, num_kv_heads: int | None = None, dropout: float = 0.0):
        super().__init__()
        num_kv_heads = num_heads if num_kv_heads is None else num_kv_heads
        if dim % num_heads != 0 or num_heads % num_kv_heads != 0:
            raise ValueError(f"dim={dim} must be divisible by num_heads={num_heads}, and num_heads by "
                             f"num_kv_heads={num_kv_heads}")
        self.n_head, self.n_kv_head, self.head_dim = num_heads, num_kv_heads, dim // num_heads
        self.qkv = nn.Linear(dim, (num_heads + 2 * num_kv_heads) * self.head_dim, bias=False)
        self.proj = nn.Linear(dim, dim, bias=False)
        self.dropout = dropout

    def forward(
        self,
        x: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        start_pos: int | torch.Tensor = 0,
        cache=None,
    ) -> torch.Tensor:
        """x: (B, T, dim) at sequence positions start_pos..start_pos+T-1; cos/sin: (T, 1, head_dim).

        With a cache, ``start_pos`` may be a (B,) tensor (T = 1, cos/sin (B, 1, 1, head_dim)): each row is at its
        own position and attends to its own filled cache positions only (rows at different steps in one batch)."""
        B, T, D = x.shape
        H, Hkv, hd = self.n_head, self.n_kv_head, self.head_dim
        q, k, v = self.qkv(x).view(B, T, H + 2 * Hkv, hd).split([H, Hkv, Hkv], dim=2)
        q = apply_rope(q, cos, sin).transpose(1, 2)  # (B, H, T, hd)
        k = apply_rope(k, cos, sin).transpose(1, 2)  # (B, Hkv, T, hd)
        v = v.transpose(1, 2)
        if isinstance(cache, torch.Tensor):  # a static cache buffer (compiled decoding)
            return self.proj(static_cache_attention(q, k, v, start_pos, cache).to(x.dtype))
        if cache is not None:
            k, v = cache.update(start_pos, k, v)  # (B, Hkv, start_pos + T, hd): the filled part only
            q = q.to(k.dtype)  # a reduced-precision cache (opt-in) halves the bytes each step reads
        if T == 1:  # one new query attends to everything before it: no mask needed (per-row positions: a mask)
            mask = None
            if isinstance(start_pos, torch.Tensor):
                mask = (torch.arange(k.shape[2], device=x.device) <= start_pos[:, None]).view(B, 1, 1, -1)
            # grouped heads: the G = H / Hkv queries of a key/value head are G rows of one attention call
            y = F.scaled_dot_product_attention(q.view(B, Hkv, H // Hkv, hd), k, v, attn_mask=mask).view(B, H, 1, hd)
        else:
            if Hkv != H:
                k, v = (t.repeat_interleave(H // Hkv, dim=1) for t in (k, v))
            if start_pos == 0:
                y = F.scaled_dot_product_attention(
                    q, k, v, is_causal=True, dropout_p=self.dropout if self.training else 0.0
                )
            else:  # a chunk of T queries after start_pos cached keys
                mask = torch.ones(T, start_pos + T, dtype=torch.bool, device=x.device).tril(diagonal=start_pos)
                y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        return self.proj(y.transpose(1, 2).reshape(B, T, D).to(x.dtype))


def static_cache_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, pos: torch.Tensor,
                           kv: torch.Tensor) -> torch.Tensor:
    """One decode position against a static cache (gpt-fast style): q (B, H, 1, hd), k and v (B, Hkv, 1, hd) at
    sequence position ``pos`` (a one-element long tensor), ``kv`` (2, B, Hkv, L, hd) the whole pre-allocated
    cache. k and v are written at ``pos`` in place and the query attends over all L positions with a mask that
    keeps positions <= pos, so every shape is the same at every step (one compiled graph, CUDA-graph
    replayable). Unwritten positions must hold finite values (the cache is zero-filled), as masked-out values
    still enter the product with weight 0. Returns (B, 1, H * hd)."""
    B, H, _, hd = q.shape
    Hkv, L = kv.shape[2], kv.shape[3]
    index = pos.reshape(1)
    kv[0].index_copy_(2, index, k.to(kv.dtype))
    kv[1].index_copy_(2, index, v.to(kv.dtype))
    mask = (torch.arange(L, device=q.device) <= index).view(1, 1, 1, L)
    y = F.scaled_dot_product_attention(q.to(kv.dtype).view(B, Hkv, H // Hkv, hd), kv[0], kv[1], attn_mask=mask)
    return y.reshape(B, 1, H * hd)
