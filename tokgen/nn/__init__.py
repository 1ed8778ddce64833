"""Building blocks shared by tokenizers and generators."""
from .attention import Attention
from .block import CheckpointableBlock, Mlp, SwiGLU, Transformer, TransformerBlock
from .causal_attention import CausalSelfAttention, static_cache_attention
from .patch import PatchEmbed, check_patch_grid, unpatchify
from .posemb import LearnedPosEmb, SinCos2DPosEmb, build_pos_emb, sincos_1d, sincos_2d
from .rope import apply_rope, rope_tables

__all__ = [
    "Attention", "CausalSelfAttention", "CheckpointableBlock", "Mlp", "SwiGLU", "Transformer", "TransformerBlock",
    "PatchEmbed", "check_patch_grid", "unpatchify", "LearnedPosEmb", "SinCos2DPosEmb", "build_pos_emb", "sincos_1d",
    "sincos_2d", "apply_rope", "rope_tables", "static_cache_attention",
]
