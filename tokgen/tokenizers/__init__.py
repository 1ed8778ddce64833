"""1D image tokenizers with nested dropout, halting tokenizers that choose their own length, and rectified-flow
decoders (pixel or AutoencoderKL latent space)."""
from .flow import FlowTokenizer, FlowTokenizerConfig, SamplingOptions
from .flow_decoder import FlowDecoder
from .halting import HaltingConfig, HaltingTokenizer, reconstruction_error, search_min_tokens
from .nested_dropout import apply_nested_dropout, power_of_two_budgets, sample_keep_lengths
from .tokenizer1d import Tokenizer1D, TokenizerConfig, register_attention_mask

Tokenizer = Tokenizer1D

__all__ = [
    "Tokenizer", "Tokenizer1D", "TokenizerConfig", "register_attention_mask",
    "apply_nested_dropout", "power_of_two_budgets", "sample_keep_lengths",
    "HaltingConfig", "HaltingTokenizer", "reconstruction_error", "search_min_tokens", "load_tokenizer",
    "FlowDecoder", "FlowTokenizer", "FlowTokenizerConfig", "SamplingOptions",
]

def load_tokenizer(path: str, use_ema: bool = True, map_location: str = "cpu") -> Tokenizer1D:
    """Any tokgen tokenizer checkpoint -> Tokenizer1D, HaltingTokenizer or FlowTokenizer, chosen by the kind saved
    in it."""
    from ..checkpoint import load_checkpoint

    kind = (load_checkpoint(path, map_location=map_location).get("tokgen") or {}).get("kind")
    return Tokenizer1D.class_for_kind(kind).from_checkpoint(path, use_ema=use_ema, map_location=map_location)
