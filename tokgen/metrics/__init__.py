"""Reconstruction and generation metrics: PSNR/SSIM/LPIPS, Fréchet distances (Inception FID and any TorchScript
feature space), per-budget evaluation of tokenizers and scoring of sample folders."""
from .evaluate import EvalReport, evaluate_samples, evaluate_tokenizer, write_report
from .features import FeatureExtractor, FeatureNet, export_feature_extractor
from .fid import (
    FrechetPerBudget,
    InceptionFeatures,
    RealStatsCache,
    find_inception_weights,
    frechet_distance,
    gaussian_stats,
)
from .image import psnr, ssim, to_uint8, to_unit

__all__ = [
    "EvalReport",
    "FeatureExtractor",
    "FeatureNet",
    "FrechetPerBudget",
    "InceptionFeatures",
    "RealStatsCache",
    "evaluate_samples",
    "evaluate_tokenizer",
    "export_feature_extractor",
    "find_inception_weights",
    "frechet_distance",
    "gaussian_stats",
    "psnr",
    "ssim",
    "to_uint8",
    "to_unit",
    "write_report",
]
