"""Video tokenizers: one token per trajectory (TrajViT style, made decodable), and a space-time patch baseline.

**Trajectory tokenizer** (``kind="trajectory"``), for a clip ``video: (B, T, 3, H, W)`` in [-1, 1] and its
trajectory id map ``ids: (B, T, H, W)`` (from :func:`tokgen.video.extract_trajectories`, largest first):

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

**Patch baseline** (``kind="patch"``, ViT3D style): non-overlapping ``tubelet = (t, h, w)`` space-time patches,
one token each (a transformer encoder over them), the same quantizer, and a transformer decoder that maps the
tokens back to their tubelets (pixels = a linear map of the decoder output, plus a per-frame base colour of
the tubelet from a second linear head: the same colour path the trajectory decoder has). Same interface, so both are trained and scored by the same code.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from ..config import DictConfig
from ..model import TokgenModel
from ..nn import Transformer, TransformerBlock, sincos_1d
from ..quantize import QuantizerConfig
from ..tokenizers.tokenizer1d import init_weights
from .geometry import trajectory_boxes, trajectory_moments

KINDS = ("trajectory", "patch")
REL_BANDS = 4  # Fourier bands of the decoder's position relative to a trajectory's predicted geometry


@dataclass
class VideoTokenizerConfig(DictConfig):
    """Architecture of a video tokenizer (saved with every checkpoint; enough to rebuild the model)."""

    config_name = "video tokenizer"

    kind: str = "trajectory"  # "trajectory" (one token per trajectory) or "patch" (one per space-time tubelet)
    image_size: int = 64
    num_frames: int = 8
    channels: int = 3
    patch_size: int = 8  # trajectory: grid cell of the pooled features and of the decoder's output patches
    width: int = 128  # transformer width
    num_heads: int = 4
    encoder_depth: int = 2  # trajectory: temporal transformer; patch: ViT3D encoder
    decoder_depth: int = 2  # trajectory: hidden layers of the broadcast MLP; patch: transformer decoder
    decoder_width: int = 96  # trajectory: width of the broadcast MLP
    max_tokens: int = 8  # trajectory: token slots K (a clip with more trajectories is an error)
    tubelet: list[int] = field(default_factory=lambda: [4, 32, 32])  # patch: (t, h, w)
    quantizer: QuantizerConfig = field(default_factory=lambda: QuantizerConfig(kind="identity", dim=16, bound="tanh"))

    def __post_init__(self):
        if isinstance(self.quantizer, dict):
            self.quantizer = QuantizerConfig(**self.quantizer)
        if self.kind not in KINDS:
            raise ValueError(f"video tokenizer kind={self.kind!r} is not supported; use one of {KINDS}")
        for name in ("image_size", "num_frames", "channels", "patch_size", "width", "num_heads", "encoder_depth",
                     "decoder_depth", "decoder_width", "max_tokens"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"video tokenizer {name}={value!r} must be a positive int")
        if self.width % self.num_heads:
            raise ValueError(f"width={self.width} must be divisible by num_heads={self.num_heads}")
        if self.kind == "trajectory" and self.image_size % self.patch_size:
            raise ValueError(f"image_size={self.image_size} is not divisible by patch_size={self.patch_size}")
        if self.kind == "patch":
            self.tubelet = list(self.tubelet)
            t, h, w = self.tubelet if len(self.tubelet) == 3 else (0, 0, 0)
            if len(self.tubelet) != 3 or min(self.tubelet) < 1 or self.num_frames % t or self.image_size % h \
                    or self.image_size % w:
                raise ValueError(
                    f"tubelet={self.tubelet} must be 3 positive ints (t, h, w) dividing num_frames={self.num_frames} "
                    f"and image_size={self.image_size}"
                )

    @property
    def num_tokens(self) -> int:
        """Tokens per clip: the slots K of the trajectory tokenizer, or the tubelet count of the baseline."""
        if self.kind == "trajectory":
            return self.max_tokens
        t, h, w = self.tubelet
        return (self.num_frames // t) * (self.image_size // h) * (self.image_size // w)


def fourier_features(coords: torch.Tensor, num_bands: int) -> torch.Tensor:
    """coords (..., C) in [0, 1] -> (..., C * (2 * num_bands + 1)): the coords and sin/cos at octave frequencies."""
    freqs = (2.0 ** torch.arange(num_bands, dtype=torch.float32, device=coords.device)) * math.pi  # (F,)
    angles = coords[..., None] * freqs  # (..., C, F)
    return torch.cat([coords, angles.sin().flatten(-2), angles.cos().flatten(-2)], dim=-1)


class VideoTokenizer(TokgenModel):
    """Trajectory tokenizer or space-time patch baseline (see the module docstring), one interface:

    ``forward(video, ids=None) -> (recon (B, T, C, H, W), extras)`` with ``extras`` holding ``tokens``
    (B, K, d), ``token_mask`` (B, K) bool, ``codes``, ``aux`` (quantizer losses) and, for trajectories,
    ``alpha_logits`` (B, K, T, H, W) and ``geometry`` (B, K, T, 4): the predicted mask moments (cy, cx, sy, sx).
    """

    config_class = VideoTokenizerConfig
    kind = "video_tokenizer"
    config_key = "video_tokenizer_config"
    metadata = {"extraction": "extraction"}  # the trajectory extraction settings it was trained with
    description = "video tokenizer"
    hint = "was it written by a video recipe?"

    def __init__(self, config: VideoTokenizerConfig | dict | None = None):
        super().__init__()
        self.config = c = self.make_config(config)
        self.extraction: dict | None = None  # trajectory extraction settings it was trained with (from_checkpoint)
        self.quantizer = c.quantizer.build()
        d_tok = c.quantizer.token_dim
        if c.kind == "trajectory":
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
        else:
            tt, th, tw = c.tubelet
            self.tubelet_grid = (c.num_frames // tt, c.image_size // th, c.image_size // tw)
            self.embed = nn.Conv3d(c.channels, c.width, kernel_size=tuple(c.tubelet), stride=tuple(c.tubelet))
            self.enc_pos = nn.Parameter(torch.randn(1, c.num_tokens, c.width) * 0.02)
            self.encoder = Transformer(c.width, c.encoder_depth, c.num_heads)
            self.to_token = nn.Linear(c.width, d_tok)
            self.from_token = nn.Linear(d_tok, c.width)
            self.dec_pos = nn.Parameter(torch.randn(1, c.num_tokens, c.width) * 0.02)
            self.decoder = Transformer(c.width, c.decoder_depth, c.num_heads)
            self.to_pixels = nn.Linear(c.width, tt * th * tw * c.channels)
            self.colour_head = nn.Linear(c.width, tt * c.channels)  # per frame of the tubelet: base RGB
        for module in (getattr(self, n, None) for n in ("temporal", "token_mixer", "encoder", "decoder")):
            if module is not None:
                module.apply(init_weights)  # transformer init; convs and the broadcast MLP keep PyTorch's

    @property
    def num_tokens(self) -> int:
        return self.config.num_tokens

    def extraction_settings(self) -> dict:
        """ExtractionConfig fields for clips given to this tokenizer: the training settings saved in the
        checkpoint, with at most ``max_tokens`` trajectories."""
        extraction = dict(self.extraction or {})
        extraction.setdefault("max_trajectories", self.config.max_tokens)
        return extraction

    # ------------------------------------------------------------------ checks
    def check_video(self, video: torch.Tensor) -> None:
        c = self.config
        want = (c.num_frames, c.channels, c.image_size, c.image_size)
        if video.ndim != 5 or tuple(video.shape[1:]) != want:
            raise ValueError(
                f"this video tokenizer was trained for clips of {c.num_frames} frames, {c.channels} channels at "
                f"{c.image_size}x{c.image_size} (B, T, C, H, W) = (B, {', '.join(map(str, want))}); got shape "
                f"{tuple(video.shape)}. Resample the clip to that length and resolution."
            )

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

    # ------------------------------------------------------------------ trajectory encoder
    def _encode_trajectories(self, video: torch.Tensor, ids: torch.Tensor):
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

    # ------------------------------------------------------------------ trajectory decoder
    def _decode_trajectories(self, z_q: torch.Tensor, token_mask: torch.Tensor):
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

    # ------------------------------------------------------------------ patch baseline
    def _encode_patches(self, video: torch.Tensor):
        x = self.embed(video.transpose(1, 2)).flatten(2).transpose(1, 2)  # (B, N, D)
        x = self.encoder(x + self.enc_pos)
        return self.to_token(x), torch.ones(x.shape[:2], dtype=torch.bool, device=x.device)

    def _decode_patches(self, z_q: torch.Tensor):
        c = self.config
        B = z_q.shape[0]
        (nt, nh, nw), (tt, th, tw) = self.tubelet_grid, c.tubelet
        h = self.decoder(self.from_token(z_q) + self.dec_pos)  # (B, N, D)
        x = self.to_pixels(h).view(B, -1, tt, th * tw, c.channels) + self.colour_head(h).view(B, -1, tt, 1, c.channels)
        x = x.view(B, nt, nh, nw, tt, th, tw, c.channels).permute(0, 1, 4, 7, 2, 5, 3, 6)
        return x.reshape(B, c.num_frames, c.channels, c.image_size, c.image_size)

    # ------------------------------------------------------------------ public API
    def encode(self, video: torch.Tensor, ids: torch.Tensor | None = None):
        """video (B, T, C, H, W) in [-1, 1] (+ ids for trajectories) -> (z_q (B, K, d), codes, token_mask (B, K),
        aux losses)."""
        self.check_video(video)
        if self.config.kind == "trajectory":
            latents, token_mask = self._encode_trajectories(video, self.check_ids(ids, video))
        else:
            latents, token_mask = self._encode_patches(video)
        z_q, codes, aux = self.quantizer(latents)
        return z_q * token_mask[..., None], codes, token_mask, aux

    def decode(self, z_q: torch.Tensor, token_mask: torch.Tensor | None = None):
        """Tokens (B, K, d) -> (clip (B, T, C, H, W), alpha logits (B, K, T, H, W) or None). ``token_mask``
        (B, K) marks real tokens; any subset decodes (e.g. the first k trajectories: the coarse clip)."""
        if token_mask is None:
            token_mask = torch.ones(z_q.shape[:2], dtype=torch.bool, device=z_q.device)
        if self.config.kind == "trajectory":
            return self._decode_trajectories(z_q, token_mask)[:2]
        return self._decode_patches(z_q * token_mask[..., None]), None

    def forward(self, video: torch.Tensor, ids: torch.Tensor | None = None):
        z_q, codes, token_mask, aux = self.encode(video, ids)
        if self.config.kind == "trajectory":
            recon, alpha, geometry = self._decode_trajectories(z_q, token_mask)
        else:
            (recon, alpha), geometry = self.decode(z_q, token_mask), None
        return recon, {"tokens": z_q, "codes": codes, "token_mask": token_mask, "aux": aux, "alpha_logits": alpha,
                       "geometry": geometry}
