"""LightningModules wrapping tokgen models with losses, optimizers and logging."""
from .generator import GeneratorModule
from .halting import HaltingModule
from .tokenizer import LossConfig, OptimConfig, TokenizerModule

__all__ = ["GeneratorModule", "HaltingModule", "LossConfig", "OptimConfig", "TokenizerModule"]
