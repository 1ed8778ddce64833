"""LightningModules wrapping tokgen models with losses, optimizers and logging."""
from .generator import GeneratorModule
from .tokenizer import LossConfig, OptimConfig, TokenizerModule

__all__ = ["GeneratorModule", "LossConfig", "OptimConfig", "TokenizerModule"]
