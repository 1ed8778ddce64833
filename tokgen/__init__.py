"""tokgen: adaptive 1D tokenizers and the generators that run on their tokens."""
__version__ = "0.1.0"
