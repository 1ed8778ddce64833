"""LightningModules wrapping tokgen models with losses, optimizers and logging."""
from .tokenizer import LossConfig, OptimConfig, TokenizerModule

__all__ = ["LossConfig", "OptimConfig", "TokenizerModule"]
