"""Rectified-flow decoder (FlexTok style): the tokens do not regress an image, they condition a flow that samples one.

With few tokens a regression decoder can only return the mean of every image that shares them (a blur); a
generative decoder instead samples a sharp image that is consistent with them, and adds detail as tokens are added.

Space. The flow runs on ``x``: the images themselves (pixel mode) or the latents of a frozen ``AutoencoderKL``
(latent mode, ``tokgen.tokenizers.flow.FrozenVAE``); this module only sees (B, C, S, S) tensors.

Path and target (rectified flow). With data x, noise n ~ N(0, I) and t in [0, 1]:
``x_t = t * n + (1 - t) * x`` and the velocity ``v = dx_t/dt = n - x``. The network predicts v from
(x_t, t, tokens) with a mean squared error. t is drawn logit-normal, ``t = sigmoid(m + s * N(0, 1))``, which
spends the training signal on the middle of the path where the prediction is hardest (SD3).

Endpoint examples. With probability ``endpoint_prob`` an example is drawn at t = 1 exactly: x_t is pure noise,
the only information about x is in the tokens, and the loss ``|v - (n - x)|^2 = |(n - v) - x|^2`` is a direct
regression of the image from the tokens (x_hat = x_t - v at t = 1). At middle t the noised image already holds
most of x, and the decoder can lower its loss without reading the tokens: trained jointly without endpoint
examples the encoder gets almost no signal and its tokens collapse, and even on a frozen, trained encoder the
decoder learns to ignore them (the README's "Flow decoder (FlexTok style)" section has the runs). The endpoint examples make
reading the tokens the only way to lower that part of the loss (and give a jointly trained encoder the gradient a
regression decoder would), in the same network at no extra cost.

Network. A transformer over ``[noised patches | K tokens]`` with full attention, so every patch reads the tokens.
The tokens are the register latents (B, k, token_dim) of the encoder, projected to the width; positions past the
kept prefix (nested dropout in training, truncation at inference) hold a learned mask token. Time enters by
AdaLN-Zero (DiT): an MLP on a sin-cos embedding of t gives every block a shift, scale and gate for its attention
and MLP branches, zero-initialised so each block starts as the identity; the output layer is zero too (v = 0).

Token guidance. In training all tokens of an example are replaced by the mask token with probability p
(``keep = 0``), so the same network also predicts the unconditional velocity; at sampling
``v = v_uncond + s * (v_cond - v_uncond)`` (s = 1: no guidance, one pass).

Sampling. Euler steps from t = 1 (noise) to t = 0 with diffusers' ``FlowMatchEulerDiscreteScheduler`` on the
uniform grid t_i = 1 - i / steps (its ``shift`` warps the grid towards the noise end).

REPA (optional). The patch features after block ``repa_depth`` pass through a small MLP and are aligned, by
cosine similarity, with the features of a frozen network on the clean image (``repa_alignment``).
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..nn import Attention, CheckpointableBlock, Mlp, PatchEmbed, build_pos_emb, sincos_1d, unpatchify
from .tokenizer1d import fill_prefix


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """x (B, N, W), shift/scale (B, 1, W)."""
    return x * (1 + scale) + shift


class TimeEmbedding(nn.Module):
    """t (B,) in [0, 1] -> (B, W): sin-cos of 1000 t, then an MLP."""

    def __init__(self, dim: int):
        super().__init__()
        self.dim = dim
        self.mlp = nn.Sequential(nn.Linear(dim, dim), nn.SiLU(), nn.Linear(dim, dim))

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        return self.mlp(sincos_1d(t.float() * 1000, self.dim).to(self.mlp[0].weight.dtype))


class AdaLNBlock(CheckpointableBlock):
    """Pre-norm block whose norms are modulated by the time embedding c: shift, scale and gate per branch."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0, qk_norm: bool = False):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.attn = Attention(dim, num_heads, qk_norm=qk_norm)
        self.norm2 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        self.modulation = nn.Sequential(nn.SiLU(), nn.Linear(dim, 6 * dim))

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        shift1, scale1, gate1, shift2, scale2, gate2 = self.modulation(c)[:, None].chunk(6, dim=-1)  # (B, 1, W) each
        x = x + gate1 * self.attn(modulate(self.norm1(x), shift1, scale1))
        return x + gate2 * self.mlp(modulate(self.norm2(x), shift2, scale2))


class FinalLayer(nn.Module):
    """Modulated norm, then patch features -> p * p * C velocity values."""

    def __init__(self, dim: int, out_dim: int):
        super().__init__()
        self.norm = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.modulation = nn.Sequential(nn.SiLU(), nn.Linear(dim, 2 * dim))
        self.proj = nn.Linear(dim, out_dim)

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        shift, scale = self.modulation(c)[:, None].chunk(2, dim=-1)
        return self.proj(modulate(self.norm(x), shift, scale))


class FlowDecoder(nn.Module):
    """Velocity field v(x_t, t | tokens) on (B, channels, size, size) inputs, conditioned on K token slots."""

    def __init__(self, size: int, channels: int, patch_size: int, width: int, depth: int, num_heads: int,
                 num_tokens: int, token_dim: int, mlp_ratio: float = 4.0, pos_emb: str = "learned",
                 qk_norm: bool = False, repa_depth: int = 0, repa_dim: int = 0):
        super().__init__()
        if not 0 <= repa_depth <= depth:
            raise ValueError(f"repa_depth={repa_depth} must be in 0..{depth} (0 = no REPA features)")
        self.channels, self.patch_size, self.num_tokens, self.repa_depth = channels, patch_size, num_tokens, repa_depth
        self.patch_embed = PatchEmbed(size, patch_size, channels, width)
        self.pos = build_pos_emb(pos_emb, self.patch_embed.grid, width)
        self.time_embed = TimeEmbedding(width)
        # tokens: (B, k, token_dim) -> (B, K, W), mask token past the kept prefix
        self.from_token = nn.Linear(token_dim, width)
        self.mask_token = nn.Parameter(torch.randn(width) * 0.02)
        self.token_pos = nn.Parameter(torch.randn(1, num_tokens, width) * 0.02)
        self.blocks = nn.ModuleList(AdaLNBlock(width, num_heads, mlp_ratio, qk_norm) for _ in range(depth))
        self.final = FinalLayer(width, patch_size * patch_size * channels)
        self.repa_proj = (nn.Sequential(nn.Linear(width, width), nn.SiLU(), nn.Linear(width, repa_dim))
                          if repa_depth > 0 else None)
        self.zero_init_()

    @torch.no_grad()
    def zero_init_(self) -> None:
        """AdaLN-Zero: every modulation and the output layer start at zero (blocks = identity, v = 0)."""
        for block in self.blocks:
            nn.init.zeros_(block.modulation[-1].weight)
            nn.init.zeros_(block.modulation[-1].bias)
        for layer in (self.final.modulation[-1], self.final.proj):
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return self.channels, self.patch_embed.image_size, self.patch_embed.image_size

    # ------------------------------------------------------------------ network
    def embed_tokens(self, z_q: torch.Tensor, keep: torch.Tensor | None = None) -> torch.Tensor:
        """z_q (B, k, token_dim), keep (B,) prefix lengths in 0..K (0 = unconditional) -> (B, K, W)."""
        return fill_prefix(self.from_token(z_q), self.num_tokens, self.mask_token, keep) + self.token_pos

    def forward(self, x_t: torch.Tensor, t: torch.Tensor, tokens: torch.Tensor):
        """x_t (B, C, S, S), t (B,), tokens (B, K, W) from ``embed_tokens`` -> (velocity (B, C, S, S),
        REPA features (B, N, repa_dim) or None)."""
        patches = self.pos(self.patch_embed(x_t))  # (B, N, W)
        n = patches.shape[1]
        c = self.time_embed(t)  # (B, W)
        h = torch.cat([patches, tokens], dim=1)  # (B, N + K, W)
        features = None
        for i, block in enumerate(self.blocks, start=1):
            h = block(h, c)
            if i == self.repa_depth:
                features = self.repa_proj(h[:, :n])
        v = self.final(h[:, :n], c)  # (B, N, p*p*C)
        return unpatchify(v, self.patch_size, self.channels), features

    # ------------------------------------------------------------------ training
    def loss(self, x: torch.Tensor, z_q: torch.Tensor, keep: torch.Tensor | None = None, *, drop_prob: float = 0.0,
             time_mean: float = 0.0, time_std: float = 1.0, endpoint_prob: float = 0.0,
             repa_target: torch.Tensor | None = None,
             generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
        """Flow-matching loss on clean x (B, C, S, S) given tokens z_q (B, K, token_dim) of which each example keeps
        the first keep[b] (None = all). Returns {"flow": mse} (+ {"repa": 1 - cosine} with ``repa_target``).
        A fraction ``endpoint_prob`` of the examples is drawn at t = 1 (regression from the tokens alone).

        ``generator`` (a CPU torch.Generator) makes t, noise and the guidance drop reproducible (validation)."""
        B, device = x.shape[0], x.device

        def draw(fn, *shape):
            return fn(*shape, generator=generator).to(device) if generator is not None else fn(*shape, device=device)

        keep = torch.full((B,), self.num_tokens, device=device, dtype=torch.long) if keep is None else keep
        if drop_prob > 0:  # token guidance: drop every token of an example (keep = 0) with probability p
            keep = torch.where(draw(torch.rand, B) < drop_prob, torch.zeros_like(keep), keep)
        t = torch.sigmoid(time_mean + time_std * draw(torch.randn, B))  # (B,) logit-normal
        if endpoint_prob > 0:
            t = torch.where(draw(torch.rand, B) < endpoint_prob, torch.ones_like(t), t)
        noise = draw(torch.randn, *x.shape).to(x.dtype)
        tt = t.view(B, 1, 1, 1).to(x.dtype)
        x_t = tt * noise + (1 - tt) * x
        v, features = self(x_t, t, self.embed_tokens(z_q, keep))
        losses = {"flow": F.mse_loss(v.float(), (noise - x).float())}
        if repa_target is not None:
            if features is None:
                raise ValueError("a REPA target was given but this decoder has no REPA projection (repa_depth=0)")
            losses["repa"] = repa_alignment(features, repa_target)
        return losses

    # ------------------------------------------------------------------ sampling
    def velocity(self, x: torch.Tensor, t: torch.Tensor, cond: torch.Tensor, uncond: torch.Tensor | None,
                 cfg: float) -> torch.Tensor:
        """Guided velocity v_uncond + cfg * (v_cond - v_uncond): one batched pass over [cond | uncond]."""
        if uncond is None:
            return self(x, t, cond)[0].float()
        v = self(torch.cat([x, x]), torch.cat([t, t]), torch.cat([cond, uncond]))[0].float()
        v_cond, v_uncond = v.chunk(2)
        return v_uncond + cfg * (v_cond - v_uncond)

    @torch.no_grad()
    def sample(self, z_q: torch.Tensor, noise: torch.Tensor, keep: torch.Tensor | None = None, steps: int = 25,
               cfg: float = 1.0, shift: float = 1.0) -> torch.Tensor:
        """Integrate from noise (B, C, S, S) at t = 1 to t = 0 given z_q (B, k, token_dim) -> x (B, C, S, S)."""
        from diffusers import FlowMatchEulerDiscreteScheduler

        if not isinstance(steps, int) or steps < 1:
            raise ValueError(f"sampling steps={steps!r} must be a positive integer")
        B = z_q.shape[0]
        cond = self.embed_tokens(z_q, keep)
        uncond = None if cfg == 1.0 else self.embed_tokens(z_q, torch.zeros(B, dtype=torch.long, device=z_q.device))
        scheduler = FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=shift)
        scheduler.set_timesteps(sigmas=np.linspace(1.0, 0.0, steps + 1)[:-1].tolist(), device=noise.device)
        x = noise.float()
        for i, timestep in enumerate(scheduler.timesteps):
            t = scheduler.sigmas[i].to(x.device).expand(B)  # t of this step (the scheduler's sigma)
            x = scheduler.step(self.velocity(x, t, cond, uncond, cfg), timestep, x).prev_sample
        return x


def repa_alignment(features: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """1 - mean cosine similarity between projected decoder patch features (B, N, D) and frozen features of the
    clean image: (B, D) global features are compared with the mean over patches; a (B, D, h, w) map or a square
    (B, M, D) token grid is resized (bilinear) to the decoder's patch grid and compared patch by patch."""
    B, N, D = features.shape
    if target.dim() == 2:
        features = features.mean(dim=1, keepdim=True)  # (B, 1, D)
        target = target[:, None]
    else:
        if target.dim() == 3:  # (B, M, D) tokens on a square grid -> (B, D, h, h)
            side = int(round(target.shape[1] ** 0.5))
            if side * side != target.shape[1]:
                raise ValueError(f"REPA target tokens must form a square grid, got {target.shape[1]} tokens")
            target = target.transpose(1, 2).reshape(B, target.shape[2], side, side)
        if target.dim() != 4:
            raise ValueError(f"REPA target must be (B, D), (B, M, D) or (B, D, h, w), got {tuple(target.shape)}")
        grid = int(round(N ** 0.5))
        target = F.interpolate(target.float(), size=(grid, grid), mode="bilinear", align_corners=False)
        target = target.flatten(2).transpose(1, 2)  # (B, N, D)
    if target.shape[-1] != D:
        raise ValueError(f"REPA target has {target.shape[-1]} channels but the decoder projects to repa_dim={D}; "
                         f"set tokenizer.repa_dim: {target.shape[-1]}")
    return 1 - F.cosine_similarity(features.float(), target.float().detach(), dim=-1).mean()
