"""LightningModules wrapping tokgen models with losses, optimizers and logging (shared parts in ``TrainingModule``)."""
from .base import TrainingModule
from .flow import FlowModule
from .generator import GeneratorModule
from .halting import HaltingModule
from .tokenizer import LossConfig, OptimConfig, TokenizerModule

__all__ = ["FlowModule", "GeneratorModule", "HaltingModule", "LossConfig", "OptimConfig", "TokenizerModule",
           "TrainingModule"]
