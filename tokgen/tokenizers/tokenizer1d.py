"""A 1D tokenizer: an image becomes a short sequence of K tokens, and any prefix of it decodes.

Encoder (TiTok): a ViT reads ``[patches | K learned registers]`` and keeps only the registers. With
``register_attention="causal"`` (FlexTok) register i attends to every patch and to registers <= i, while
patches attend only to patches, so token i never depends on later tokens. With ``"bidirectional"`` every
token attends to every token.

Quantizer: one of ``tokgen.quantize`` (FSQ, VQ, binary, identity) on the projected registers.

Decoder: a ViT over ``[patch queries | K tokens]``; tokens beyond the kept prefix are replaced by a learned
mask token (nested dropout in training, truncation at inference), and the patch-query outputs are
projected to pixels.

Token mixing (``token_mixing=True``): registers start as a learned linear pooling of the patch embeddings
(``registers + A @ patches``, A: (K, N)) and patch queries as a learned linear un-pooling of the tokens
(``queries + B @ tokens``, B: (N, K)). Without it every register starts identical and attention at
initialisation is near uniform, so every register reads the same patch average and every patch query the
same token average: the model must first break that symmetry before tokens can specialise. The mixing
matrices give a per-token, per-patch linear path from the first step (a linear autoencoder inside the
ViT); the attention layers refine it. It adds K * N * 2 parameters (4096 at K=32, N=64).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from ..config import DictConfig
from ..data.base import check_number
from ..model import TokgenModel
from ..nn import PatchEmbed, Transformer, build_pos_emb, check_patch_grid, unpatchify
from ..quantize import QuantizerConfig
from .nested_dropout import apply_nested_dropout

REGISTER_ATTENTION = ("causal", "bidirectional")


@dataclass
class TokenizerConfig(DictConfig):
    """Architecture of a 1D tokenizer (saved with every checkpoint; enough to rebuild the model)."""

    config_name = "tokenizer"

    image_size: int = 32
    channels: int = 3
    patch_size: int = 4
    width: int = 256
    encoder_depth: int = 4
    decoder_depth: int = 4
    num_heads: int = 4
    mlp_ratio: float = 4.0
    num_tokens: int = 32
    register_attention: str = "causal"
    pos_emb: str = "learned"
    qk_norm: bool = False
    token_mixing: bool = False
    quantizer: QuantizerConfig = field(default_factory=QuantizerConfig)

    def __post_init__(self):
        if isinstance(self.quantizer, dict):
            self.quantizer = QuantizerConfig(**self.quantizer)
        check_patch_grid(self.image_size, self.patch_size)
        if self.register_attention not in REGISTER_ATTENTION:
            raise ValueError(
                f"register_attention={self.register_attention!r} is not supported; use one of {REGISTER_ATTENTION}"
            )
        for name in ("channels", "width", "encoder_depth", "decoder_depth", "num_heads", "num_tokens"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise ValueError(f"{name}={getattr(self, name)!r} must be a positive integer")
        if self.width % self.num_heads != 0:
            raise ValueError(f"width={self.width} must be divisible by num_heads={self.num_heads}")
        check_number("mlp_ratio", self.mlp_ratio, 0, low_open=True)
        if int(self.width * self.mlp_ratio) < 1:
            raise ValueError(f"mlp_ratio={self.mlp_ratio!r} gives an MLP of width {self.width} * {self.mlp_ratio} < 1; "
                             f"accepted: mlp_ratio >= {1 / self.width:g} (e.g. 4.0)")


def register_attention_mask(num_patches: int, num_tokens: int, mode: str) -> torch.Tensor | None:
    """Boolean (N+K, N+K) mask for the encoder sequence [patches | registers]; None = full attention."""
    if mode == "bidirectional":
        return None
    n = num_patches + num_tokens
    mask = torch.zeros(n, n, dtype=torch.bool)
    mask[:num_patches, :num_patches] = True  # patches see patches only
    mask[num_patches:, :num_patches] = True  # registers see every patch
    mask[num_patches:, num_patches:] = torch.tril(torch.ones(num_tokens, num_tokens, dtype=torch.bool))
    return mask


def fill_prefix(tokens: torch.Tensor, num_tokens: int, mask_token: torch.Tensor,
                keep: torch.Tensor | None = None) -> torch.Tensor:
    """tokens (B, k, W) of a prefix, 1 <= k <= K -> (B, K, W) where positions >= k, and >= keep[b] when keep (B,)
    is given, hold the mask token (W,): truncation at inference and nested dropout in training."""
    B, k = tokens.shape[:2]
    if k < num_tokens:
        tokens = torch.cat([tokens, mask_token.expand(B, num_tokens - k, -1)], dim=1)
    if keep is not None:
        tokens = apply_nested_dropout(tokens, keep, mask_token)
    return tokens


class Tokenizer1D(TokgenModel):
    config_class = TokenizerConfig  # what ``config`` must be (or a dict of); subclasses name their own
    kind = "tokenizer1d"
    description = "tokgen tokenizer"

    def __init__(self, config: TokenizerConfig | dict | None = None):
        super().__init__()
        self.config = c = self.make_config(config)
        self.quantizer = c.quantizer.build()
        token_dim = c.quantizer.token_dim

        # --- encoder: [patches | registers] -> registers -> token_dim
        in_channels, in_size = self.encoder_input(c)
        self.patch_embed = PatchEmbed(in_size, c.patch_size, in_channels, c.width)
        num_patches = self.patch_embed.num_patches
        self.enc_pos = build_pos_emb(c.pos_emb, self.patch_embed.grid, c.width)
        self.registers = nn.Parameter(torch.randn(1, c.num_tokens, c.width) * 0.02)
        self.encoder = Transformer(c.width, c.encoder_depth, c.num_heads, c.mlp_ratio, c.qk_norm)
        self.to_token = nn.Linear(c.width, token_dim)
        self.register_buffer(
            "enc_mask", register_attention_mask(num_patches, c.num_tokens, c.register_attention), persistent=False
        )
        # token mixing: (K, N) pooling of patches into registers (the decoder's (N, K) un-pooling is built below)
        self.enc_mix = nn.Parameter(torch.randn(c.num_tokens, num_patches) * num_patches**-0.5) if c.token_mixing else None

        self.build_decoder(c, token_dim)
        self.apply(init_weights)

    def encoder_input(self, config: TokenizerConfig) -> tuple[int, int]:
        """(channels, size) of what the encoder's patch embedding reads: the images themselves here."""
        return config.channels, config.image_size

    def build_decoder(self, config: TokenizerConfig, token_dim: int) -> None:
        """The direct decoder: [patch queries | tokens] -> patch queries -> pixels."""
        c, num_patches = config, self.patch_embed.num_patches
        self.dec_mix = nn.Parameter(torch.randn(num_patches, c.num_tokens) * c.num_tokens**-0.5) if c.token_mixing else None
        self.from_token = nn.Linear(token_dim, c.width)
        self.mask_token = nn.Parameter(torch.randn(c.width) * 0.02)  # stands in for dropped tokens
        self.token_pos = nn.Parameter(torch.randn(1, c.num_tokens, c.width) * 0.02)
        self.patch_query = nn.Parameter(torch.randn(1, 1, c.width) * 0.02)
        self.dec_pos = build_pos_emb(c.pos_emb, self.patch_embed.grid, c.width)
        self.decoder = Transformer(c.width, c.decoder_depth, c.num_heads, c.mlp_ratio, c.qk_norm)
        self.to_pixels = nn.Linear(c.width, c.patch_size * c.patch_size * c.channels)

    # ------------------------------------------------------------------ properties
    @property
    def num_tokens(self) -> int:
        return self.config.num_tokens

    @property
    def image_size(self) -> int:
        return self.config.image_size

    # ------------------------------------------------------------------ encoder
    def check_images(self, images: torch.Tensor) -> None:
        if images.dim() != 4 or images.shape[1] != self.config.channels:
            raise ValueError(
                f"expected images of shape (B, {self.config.channels}, {self.image_size}, {self.image_size}), "
                f"got {tuple(images.shape)}"
            )

    def encode_latents(self, images: torch.Tensor) -> torch.Tensor:
        """images: (B, C, H, W) in [-1, 1] -> continuous register latents (B, K, token_dim)."""
        self.check_images(images)
        return self.encode_registers(images)

    def encode_registers(self, x: torch.Tensor) -> torch.Tensor:
        """The encoder's own input x (B, C', S, S) (see ``encoder_input``) -> register latents (B, K, token_dim)."""
        patches, registers = self.encoder_tokens(x)
        x = self.encoder(torch.cat([patches, registers], dim=1), self.enc_mask)
        return self.to_token(x[:, -self.num_tokens :])

    def encoder_tokens(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x (B, C', S, S) -> (patch embeddings (B, N, W), initial registers (B, K, W), token-mixed if enabled)."""
        patches = self.enc_pos(self.patch_embed(x))  # (B, N, W)
        registers = self.registers.expand(x.shape[0], -1, -1)  # (B, K, W)
        if self.enc_mix is not None:
            registers = registers + torch.einsum("kn,bnw->bkw", self.enc_mix, patches)
        return patches, registers

    def quantize(self, latents: torch.Tensor):
        """(B, K, token_dim) -> (z_q, codes, aux_losses)."""
        return self.quantizer(latents)

    @torch.no_grad()
    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """images (B, C, H, W) in [-1, 1] -> codes (B, K) (or (B, K, D) for continuous tokens)."""
        return self.quantize(self.encode_latents(images))[1]

    # ------------------------------------------------------------------ decoder
    def decode_latents(self, z_q: torch.Tensor, keep: torch.Tensor | None = None) -> torch.Tensor:
        """z_q: (B, k, token_dim) with 1 <= k <= K; keep: optional (B,) per-example prefix lengths.

        Positions >= k (and >= keep[b]) are replaced by the mask token. Returns images (B, C, H, W).
        """
        B = z_q.shape[0]
        tokens = fill_prefix(self.from_token(z_q), self.num_tokens, self.mask_token, keep)  # (B, K, W)
        queries = self.dec_pos(self.patch_query.expand(B, self.patch_embed.num_patches, -1))
        if self.dec_mix is not None:
            queries = queries + torch.einsum("nk,bkw->bnw", self.dec_mix, tokens)
        tokens = tokens + self.token_pos
        x = self.decoder(torch.cat([queries, tokens], dim=1))
        pixels = self.to_pixels(x[:, : self.patch_embed.num_patches])
        return unpatchify(pixels, self.config.patch_size, self.config.channels)

    @torch.no_grad()
    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        """codes: (B, k) prefix of the codes, 1 <= k <= K -> images (B, C, H, W) in [-1, 1] (unclamped)."""
        self.check_prefix(codes)
        return self.decode_latents(self.quantizer.codes_to_latents(codes))

    def check_prefix(self, codes: torch.Tensor) -> None:
        discrete = self.quantizer.is_discrete
        expected_dims = 2 if discrete else 3
        if codes.dim() != expected_dims:
            shape = "(B, k)" if discrete else f"(B, k, {self.quantizer.dim})"
            raise ValueError(f"codes must have shape {shape}, got {tuple(codes.shape)}")
        k = codes.shape[1]
        if not 1 <= k <= self.num_tokens:
            raise ValueError(f"token budget k={k} is outside the accepted range 1..{self.num_tokens}")

    # ------------------------------------------------------------------ training forward
    def forward(self, images: torch.Tensor, keep: torch.Tensor | None = None):
        """Reconstruct with per-example kept prefix lengths keep (B,) (None = all K).

        Returns (reconstruction (B, C, H, W), codes, aux_losses dict).
        """
        z_q, codes, aux = self.quantize(self.encode_latents(images))
        return self.decode_latents(z_q, keep), codes, aux


def init_weights(module: nn.Module) -> None:
    """Transformer initialisation (truncated-normal linear weights, zero biases, unit LayerNorms); the video
    tokenizer applies it to its transformer parts too."""
    if isinstance(module, nn.Linear):
        nn.init.trunc_normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm) and module.weight is not None:
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)
