"""Nested dropout: train every prefix of the token sequence to be a valid code.

Per example we keep the first ``k`` tokens and replace tokens ``k+1..K`` by a learned mask token, so the
decoder learns to reconstruct from any prefix and earlier tokens carry the coarse content (FlexTok,
One-D-Piece). ``k`` is drawn uniformly from ``1..K`` or from the powers of two ``1, 2, 4, ..., K``;
``pow2_full`` keeps all K tokens for a fraction ``full_fraction`` (default half) of the batch and draws the
rest from the powers of two, so the full-length code gets as much training signal as all shorter prefixes.
``pow2_dual`` decodes every example twice from one encoder pass: once from all K tokens and once from a
prefix k drawn from the powers of two below K, so the full code gets the whole batch's signal and the prefixes
get a whole batch too (the decoder runs on 2B sequences: about 1.5x the compute of a single decode).
"""
from __future__ import annotations

import torch

KEEP_MODES = ("uniform", "pow2", "pow2_full", "pow2_dual", "none")


def power_of_two_budgets(num_tokens: int) -> list[int]:
    """1, 2, 4, ... up to num_tokens (num_tokens itself is always included)."""
    budgets, k = [], 1
    while k < num_tokens:
        budgets.append(k)
        k *= 2
    return budgets + [num_tokens]


def sample_keep_lengths(
    batch_size: int, num_tokens: int, mode: str = "uniform", generator: torch.Generator | None = None,
    device: torch.device | str = "cpu", full_fraction: float = 0.5,
) -> torch.Tensor:
    """Number of kept tokens per example: (B,) int64 in 1..K."""
    if mode == "none":
        return torch.full((batch_size,), num_tokens, dtype=torch.long, device=device)
    if mode == "uniform":
        return torch.randint(1, num_tokens + 1, (batch_size,), generator=generator).to(device)
    if mode == "pow2_dual":  # the prefix half of a dual decode: powers of two strictly below K (K when K == 1)
        choices = torch.tensor(power_of_two_budgets(num_tokens)[:-1] or [num_tokens])
        return choices[torch.randint(len(choices), (batch_size,), generator=generator)].to(device)
    if mode in ("pow2", "pow2_full"):
        choices = torch.tensor(power_of_two_budgets(num_tokens))
        keep = choices[torch.randint(len(choices), (batch_size,), generator=generator)]
        if mode == "pow2_full":
            if not 0.0 <= full_fraction <= 1.0:
                raise ValueError(f"full_fraction={full_fraction} must be in [0, 1]")
            keep[: int(round(batch_size * full_fraction))] = num_tokens
        return keep.to(device)
    raise ValueError(f"nested dropout mode={mode!r} is not supported; use one of {KEEP_MODES}")


def apply_nested_dropout(tokens: torch.Tensor, keep: torch.Tensor, mask_token: torch.Tensor) -> torch.Tensor:
    """tokens: (B, K, D), keep: (B,) -> tokens with positions >= keep[b] replaced by mask_token (D,)."""
    positions = torch.arange(tokens.shape[1], device=tokens.device)
    dropped = positions[None, :] >= keep[:, None]  # (B, K)
    return torch.where(dropped[..., None], mask_token.to(tokens.dtype).expand_as(tokens), tokens)
