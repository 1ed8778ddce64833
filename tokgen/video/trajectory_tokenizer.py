"""Trajectory tokenizer: one token per tracked trajectory of the clip (TrajViT style, made decodable).

For a clip ``video: (B, T, 3, H, W)`` in [-1, 1] and its trajectory id map ``ids: (B, T, H, W)`` (from
:func:`tokgen.video.extract_trajectories`, largest first):

1. Per-frame patch features: a small conv stem gives ``(B, T, D, g, g)`` on a g x g grid (g = H / patch_size).
2. Masked pooling: every trajectory's masks, area-pooled to the grid, average the features of each frame ->
   ``(B, K, T, D)`` (layer-normed); K = ``max_tokens`` slots, trajectories beyond the clip's count are padding.
   The mean and standard deviation of the clip's pixels under each mask are added through a linear map: a
   direct path from the colours to the token, so trajectories differ from the first step.
3. Track embedding: each frame's box (x0, y0, x1, y1), area fraction and mask moments (centroid, spread),
   plus a sin-cos time embedding.
4. A small temporal transformer per trajectory reads ``[summary, frame_1 .. frame_T]`` with frames where
   the trajectory is absent masked out; the summary plus the mean of the present frames becomes the
   trajectory's ONE token, projected to the quantizer's dim and quantized (any :mod:`tokgen.quantize`
   quantizer; identity = continuous).
5. Decoder: tokens first exchange information in one masked transformer block. Linear heads then read from
   each token its per-frame geometry (mask centroid, spread and a depth logit) and per-frame base colour.
   Each token is broadcast over the (t, y, x) grid (spatial broadcast), added to Fourier embeddings of the
   absolute position and of the position relative to that frame's predicted centroid / spread, and an MLP
   predicts for each grid cell a patch of RGB residuals and alpha residuals. The alpha logit of every pixel is
   ``sharpness * (1 - |relative position|^2) + depth + residual`` (an ellipse prior around the predicted
   geometry), the RGB is ``base colour + residual``. A softmax over the tokens' alpha logits (padding tokens
   excluded) composites the per-token RGB into the clip. Geometry is carried in the token; training
   supervises it from the extracted masks (alpha cross-entropy and a moment loss, in :mod:`tokgen.lit.video`).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..nn import Transformer, TransformerBlock, sincos_1d
from ..tokenizers.tokenizer1d import init_weights
from .geometry import trajectory_boxes, trajectory_moments
from .tokenizer import VideoTokenizer, VideoTokenizerConfig

REL_BANDS = 4  # Fourier bands of the decoder's position relative to a trajectory's predicted geometry


@dataclass
class TrajectoryTokenizerConfig(VideoTokenizerConfig):
    """Architecture of a trajectory tokenizer (saved with every checkpoint; enough to rebuild the model).
    ``encoder_depth``: layers of the temporal transformer; ``decoder_depth``: hidden layers of the broadcast
    MLP."""

    positive_fields = VideoTokenizerConfig.positive_fields + ("patch_size", "decoder_width", "max_tokens")

    kind: str = "trajectory"
    patch_size: int = 8  # grid cell of the pooled features and of the decoder's output patches
    decoder_width: int = 96  # width of the broadcast MLP
    max_tokens: int = 8  # token slots K (a clip with more trajectories is an error)

    def __post_init__(self):
        super().__post_init__()
        if self.image_size % self.patch_size:
            raise ValueError(f"image_size={self.image_size} is not divisible by patch_size={self.patch_size}")

    @property
    def num_tokens(self) -> int:
        """Tokens per clip: the trajectory slots K."""
        return self.max_tokens


def fourier_features(coords: torch.Tensor, num_bands: int) -> torch.Tensor:
    """coords (..., C) in [0, 1] -> (..., C * (2 * num_bands + 1)): the coords and sin/cos at octave frequencies."""
    freqs = (2.0 ** torch.arange(num_bands, dtype=torch.float32, device=coords.device)) * math.pi  # (F,)
    angles = coords[..., None] * freqs  # (..., C, F)
    return torch.cat([coords, angles.sin().flatten(-2), angles.cos().flatten(-2)], dim=-1)


class TrajectoryTokenizer(VideoTokenizer):
    """One token per trajectory (see the module docstring). ``forward(video, ids)`` needs the id map and
    returns ``alpha_logits`` (B, K, T, H, W) and ``geometry`` (B, K, T, 4) in its extras."""

    config_class = TrajectoryTokenizerConfig
    needs_trajectories = True

    config: TrajectoryTokenizerConfig

    def __init__(self, config: TrajectoryTokenizerConfig | dict | None = None):
        super().__init__(config)
        c = self.config
        d_tok = c.quantizer.token_dim
        self.grid = c.image_size // c.patch_size
        self.stem = nn.Sequential(
            nn.Conv2d(c.channels, c.width // 2, 3, padding=1), nn.GELU(),
            nn.Conv2d(c.width // 2, c.width, c.patch_size, stride=c.patch_size), nn.GELU(),
            nn.Conv2d(c.width, c.width, 3, padding=1),
        )
        self.feature_proj = nn.Linear(c.width, c.width)
        self.feature_norm = nn.LayerNorm(c.width)
        self.colour_proj = nn.Linear(2 * c.channels, c.width)  # mean and std of the pixels under the mask
        self.box_proj = nn.Linear(9, c.width)  # box (4), area (1), moments (4)
        self.register_buffer("time_emb", sincos_1d(torch.arange(c.num_frames), c.width), persistent=False)
        self.summary = nn.Parameter(torch.randn(1, 1, c.width) * 0.02)
        self.temporal = Transformer(c.width, c.encoder_depth, c.num_heads)
        self.to_token = nn.Linear(c.width, d_tok)
        # decoder
        self.from_token = nn.Linear(d_tok, c.width)
        self.token_mixer = TransformerBlock(c.width, c.num_heads)
        self.mixer_norm = nn.LayerNorm(c.width)
        t = torch.linspace(0, 1, c.num_frames) if c.num_frames > 1 else torch.zeros(1)
        yx = (torch.arange(self.grid, dtype=torch.float32) + 0.5) / self.grid
        coords = torch.stack(torch.meshgrid(t, yx, yx, indexing="ij"), -1).reshape(-1, 3)  # (P, 3): t, y, x
        self.register_buffer("pos_features", fourier_features(coords, 6), persistent=False)
        self.pos_proj = nn.Linear(self.pos_features.shape[1], c.decoder_width)
        yy, xx = torch.meshgrid(yx, yx, indexing="ij")
        self.register_buffer("cell_yx", torch.stack([yy, xx], -1).reshape(-1, 2), persistent=False)  # (g*g, 2)
        self.register_buffer("pixel_coords", (torch.arange(c.image_size) + 0.5) / c.image_size, persistent=False)
        self.geometry_head = nn.Linear(c.width, c.num_frames * 5)  # per frame: cy, cx, sy, sx, depth
        self.colour_head = nn.Linear(c.width, c.num_frames * c.channels)  # per frame: base RGB
        self.mask_sharpness = nn.Parameter(torch.full((1,), 3.0))  # (1,): checkpoints fingerprint no 0-d tensors
        self.rel_proj = nn.Linear(2 * (2 * REL_BANDS + 1), c.decoder_width)
        self.token_to_hidden = nn.Linear(c.width, c.decoder_width)
        layers = []
        for _ in range(c.decoder_depth):
            layers += [nn.GELU(), nn.Linear(c.decoder_width, c.decoder_width)]
        self.broadcast_mlp = nn.Sequential(*layers, nn.GELU())
        self.to_patch = nn.Linear(c.decoder_width, c.patch_size * c.patch_size * (c.channels + 1))
        for module in (self.temporal, self.token_mixer):
            module.apply(init_weights)  # transformer init; convs and the broadcast MLP keep PyTorch's

    def extraction_settings(self) -> dict:
        """ExtractionConfig fields for clips given to this tokenizer: the training settings saved in the
        checkpoint, with at most ``max_tokens`` trajectories."""
        extraction = dict(self.extraction or {})
        extraction.setdefault("max_trajectories", self.config.max_tokens)
        return extraction

    def check_ids(self, ids: torch.Tensor | None, video: torch.Tensor) -> torch.Tensor:
        if ids is None:
            raise ValueError("the trajectory tokenizer needs the clip's trajectory id map (B, T, H, W); "
                             "compute it with tokgen.video.extract_trajectories")
        B, T, _, H, W = video.shape
        if tuple(ids.shape) != (B, T, H, W):
            raise ValueError(f"trajectory ids must be (B, T, H, W) = {(B, T, H, W)}, got {tuple(ids.shape)}")
        n = int(ids.max()) + 1
        if int(ids.min()) < 0 or n > self.config.max_tokens:
            raise ValueError(
                f"trajectory ids must lie in 0..{self.config.max_tokens - 1} (max_tokens={self.config.max_tokens}); "
                f"got {int(ids.min())}..{n - 1}. Extract with max_trajectories <= {self.config.max_tokens}."
            )
        return ids.long()

    # ------------------------------------------------------------------ encoder
    def encode_latents(self, video: torch.Tensor, ids: torch.Tensor | None):
        ids = self.check_ids(ids, video)
        c, K = self.config, self.config.max_tokens
        B, T, C, H, W = video.shape
        feats = self.stem(video.flatten(0, 1)).view(B, T, c.width, self.grid, self.grid)  # (B, T, D, g, g)
        onehot = F.one_hot(ids, K).permute(0, 4, 1, 2, 3).float()  # (B, K, T, H, W)
        cell = F.avg_pool2d(onehot.flatten(0, 2)[:, None], c.patch_size).view(B, K, T, self.grid, self.grid)
        mass = cell.flatten(3).sum(-1)  # (B, K, T): area in grid cells
        pooled = torch.einsum("bktyx,btdyx->bktd", cell, feats) / mass.clamp_min(1e-6)[..., None]
        pixels = onehot.flatten(3).sum(-1).clamp_min(1.0)[..., None]  # (B, K, T, 1)
        mean = torch.einsum("bkthw,btchw->bktc", onehot, video) / pixels  # (B, K, T, C)
        std = (torch.einsum("bkthw,btchw->bktc", onehot, video * video) / pixels - mean**2).clamp_min(0).sqrt()
        boxes, present = trajectory_boxes(ids, K)  # (B, K, T, 4), (B, K, T)
        moments, _ = trajectory_moments(ids, K)  # (B, K, T, 4)
        area = mass / (self.grid * self.grid)
        track = torch.cat([boxes, area[..., None], moments], -1)
        frame_tokens = (self.feature_norm(self.feature_proj(pooled)) + self.colour_proj(torch.cat([mean, std], -1))
                        + self.box_proj(track) + self.time_emb)
        seq = torch.cat([self.summary.expand(B * K, 1, -1), frame_tokens.flatten(0, 1)], 1)  # (B*K, 1+T, D)
        valid = torch.cat([torch.ones(B * K, 1, dtype=torch.bool, device=video.device), present.flatten(0, 1)], 1)
        out = self.temporal(seq, valid[:, None, :].expand(-1, T + 1, -1))
        frames = present.flatten(0, 1).float()[..., None]  # (B*K, T, 1)
        summary = out[:, 0] + (out[:, 1:] * frames).sum(1) / frames.sum(1).clamp_min(1.0)
        token_mask = present.any(-1)  # (B, K): slots holding a trajectory
        return self.to_token(summary).view(B, K, -1), token_mask

    # ------------------------------------------------------------------ decoder
    def decode_outputs(self, z_q: torch.Tensor, token_mask: torch.Tensor):
        """-> (clip (B, T, C, H, W), alpha logits (B, K, T, H, W), geometry (B, K, T, 4) as (cy, cx, sy, sx))."""
        c = self.config
        B, K, _ = z_q.shape
        T, g, p = c.num_frames, self.grid, c.patch_size
        x = self.from_token(z_q)
        x = self.mixer_norm(self.token_mixer(x, token_mask[:, None, :].expand(-1, K, -1)))  # (B, K, D)
        geometry = self.geometry_head(x).view(B, K, T, 5)
        centre, spread, depth = geometry[..., :2].sigmoid(), F.softplus(geometry[..., 2:4]) + 0.02, geometry[..., 4]
        # broadcast MLP over the (t, y, x) cells: token + absolute position + position relative to the geometry
        rel = (self.cell_yx - centre[:, :, :, None]) / (2 * spread[:, :, :, None])  # (B, K, T, g*g, 2)
        h = (self.token_to_hidden(x)[:, :, None, :] + self.pos_proj(self.pos_features)
             + self.rel_proj(fourier_features(rel / 4, REL_BANDS)).flatten(2, 3))  # (B, K, P, Dd)
        out = self.to_patch(self.broadcast_mlp(h))  # (B, K, P, p*p*(C+1))
        out = out.view(B, K, T, g, g, p, p, c.channels + 1)
        out = out.permute(0, 1, 2, 7, 3, 5, 4, 6).reshape(B, K, T, c.channels + 1, g * p, g * p)
        # per pixel: ellipse prior around the predicted centroid / spread, plus the MLP's residuals
        ry = (self.pixel_coords - centre[..., :1]) / (2 * spread[..., :1])  # (B, K, T, H)
        rx = (self.pixel_coords - centre[..., 1:]) / (2 * spread[..., 1:])  # (B, K, T, W)
        prior = self.mask_sharpness * (1 - ry[..., :, None] ** 2 - rx[..., None, :] ** 2) + depth[..., None, None]
        alpha = out[:, :, :, c.channels] + prior  # (B, K, T, H, W)
        rgb = out[:, :, :, : c.channels] + self.colour_head(x).view(B, K, T, c.channels, 1, 1)  # (B, K, T, C, H, W)
        alpha = alpha.masked_fill(~token_mask[:, :, None, None, None], float("-inf"))
        weights = alpha.softmax(dim=1)
        recon = (weights[:, :, :, None] * rgb).sum(1)  # (B, T, C, H, W)
        return recon, alpha, torch.cat([centre, spread], -1)
