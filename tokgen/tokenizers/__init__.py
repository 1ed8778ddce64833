"""1D image tokenizers with nested dropout."""
from .nested_dropout import apply_nested_dropout, power_of_two_budgets, sample_keep_lengths
from .tokenizer1d import Tokenizer1D, TokenizerConfig, register_attention_mask

Tokenizer = Tokenizer1D

__all__ = [
    "Tokenizer", "Tokenizer1D", "TokenizerConfig", "register_attention_mask",
    "apply_nested_dropout", "power_of_two_budgets", "sample_keep_lengths",
]
