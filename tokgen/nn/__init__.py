"""Building blocks shared by tokenizers and generators."""
from .attention import Attention
from .block import CheckpointableBlock, Mlp, Transformer, TransformerBlock
from .patch import PatchEmbed, check_patch_grid, unpatchify
from .posemb import LearnedPosEmb, SinCos2DPosEmb, build_pos_emb, sincos_1d, sincos_2d

__all__ = [
    "Attention", "CheckpointableBlock", "Mlp", "Transformer", "TransformerBlock", "PatchEmbed", "check_patch_grid", "unpatchify",
    "LearnedPosEmb", "SinCos2DPosEmb", "build_pos_emb", "sincos_1d", "sincos_2d",
]
