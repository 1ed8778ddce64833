"""1D image tokenizers with nested dropout, and halting tokenizers that choose their own length."""
from .halting import HaltingConfig, HaltingTokenizer, reconstruction_error, search_min_tokens
from .nested_dropout import apply_nested_dropout, power_of_two_budgets, sample_keep_lengths
from .tokenizer1d import Tokenizer1D, TokenizerConfig, register_attention_mask

Tokenizer = Tokenizer1D

__all__ = [
    "Tokenizer", "Tokenizer1D", "TokenizerConfig", "register_attention_mask",
    "apply_nested_dropout", "power_of_two_budgets", "sample_keep_lengths",
    "HaltingConfig", "HaltingTokenizer", "reconstruction_error", "search_min_tokens", "load_tokenizer",
]


def load_tokenizer(path: str, use_ema: bool = True, map_location: str = "cpu") -> Tokenizer1D:
    """Any tokgen tokenizer checkpoint -> Tokenizer1D or HaltingTokenizer, chosen by the kind saved in it."""
    from ..checkpoint import load_checkpoint

    kind = (load_checkpoint(path, map_location=map_location).get("tokgen") or {}).get("kind")
    cls = HaltingTokenizer if kind == "halting_tokenizer" else Tokenizer1D
    return cls.from_checkpoint(path, use_ema=use_ema, map_location=map_location)
