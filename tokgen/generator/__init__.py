"""Autoregressive generator over tokenizer codes: Llama-style GPT, static KV cache, sampling."""
from .compat import check_generator_tokenizer, tokenizer_identity, weights_fingerprint
from .generate import CFG_SCHEDULES, cfg_scale_at, check_sampling, generate, sample_next, sample_seed, sample_uniforms
from .kv_cache import KVCache
from ..nn import apply_rope, rope_tables
from .model import GPT, GPTConfig

__all__ = [
    "GPT", "GPTConfig", "KVCache", "apply_rope", "rope_tables",
    "check_sampling", "generate", "sample_next", "sample_seed", "sample_uniforms", "cfg_scale_at", "CFG_SCHEDULES",
    "tokenizer_identity", "check_generator_tokenizer", "weights_fingerprint",
]
