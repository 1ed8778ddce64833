"""Reconstruction and generation metrics."""
from .image import psnr, to_unit

__all__ = ["psnr", "to_unit"]
