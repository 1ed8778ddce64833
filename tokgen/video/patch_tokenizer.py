"""Space-time patch baseline (ViT3D style): one token per tubelet, the trajectory tokenizer's comparison.

Non-overlapping ``tubelet = (t, h, w)`` space-time patches, one token each (a transformer encoder over them), the
same quantizers as the trajectory tokenizer, and a transformer decoder that maps the tokens back to their tubelets
(pixels = a linear map of the decoder output, plus a per-frame base colour of the tubelet from a second linear
head: the same colour path the trajectory decoder has).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from ..nn import Transformer
from ..tokenizers.tokenizer1d import init_weights
from .tokenizer import VideoTokenizer, VideoTokenizerConfig


@dataclass
class PatchVideoTokenizerConfig(VideoTokenizerConfig):
    """Architecture of a space-time patch tokenizer (saved with every checkpoint; enough to rebuild the model).
    ``encoder_depth`` / ``decoder_depth``: layers of the encoder / decoder transformer."""

    kind: str = "patch"
    tubelet: list[int] = field(default_factory=lambda: [4, 32, 32])  # (t, h, w)

    def __post_init__(self):
        super().__post_init__()
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
        """Tokens per clip: the tubelet count."""
        t, h, w = self.tubelet
        return (self.num_frames // t) * (self.image_size // h) * (self.image_size // w)


class PatchVideoTokenizer(VideoTokenizer):
    """One token per space-time tubelet (see the module docstring); every slot holds a token, and ``forward``
    ignores ``ids`` and returns no ``alpha_logits`` / ``geometry``."""

    config_class = PatchVideoTokenizerConfig
    needs_trajectories = False

    config: PatchVideoTokenizerConfig

    def __init__(self, config: PatchVideoTokenizerConfig | dict | None = None):
        super().__init__(config)
        c = self.config
        d_tok = c.quantizer.token_dim
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
        for module in (self.encoder, self.decoder):
            module.apply(init_weights)  # transformer init; the tubelet embedding keeps PyTorch's

    def encode_latents(self, video: torch.Tensor, ids: torch.Tensor | None):
        x = self.embed(video.transpose(1, 2)).flatten(2).transpose(1, 2)  # (B, N, D)
        x = self.encoder(x + self.enc_pos)
        return self.to_token(x), torch.ones(x.shape[:2], dtype=torch.bool, device=x.device)

    def decode_outputs(self, z_q: torch.Tensor, token_mask: torch.Tensor):
        """-> (clip (B, T, C, H, W), None, None); masked-out tokens decode as zeros."""
        c = self.config
        B = z_q.shape[0]
        (nt, nh, nw), (tt, th, tw) = self.tubelet_grid, c.tubelet
        h = self.decoder(self.from_token(z_q * token_mask[..., None]) + self.dec_pos)  # (B, N, D)
        x = self.to_pixels(h).view(B, -1, tt, th * tw, c.channels) + self.colour_head(h).view(B, -1, tt, 1, c.channels)
        x = x.view(B, nt, nh, nw, tt, th, tw, c.channels).permute(0, 1, 4, 7, 2, 5, 3, 6)
        return x.reshape(B, c.num_frames, c.channels, c.image_size, c.image_size), None, None
