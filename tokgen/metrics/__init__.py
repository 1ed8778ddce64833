"""Reconstruction and generation metrics: PSNR/SSIM/LPIPS, Fréchet distances (Inception FID and the feature
space of any tokgen extractor file), per-budget evaluation of tokenizers and scoring of sample folders."""
from .evaluate import EvalReport, evaluate_samples, evaluate_tokenizer, write_report
from .features import FeatureExtractor, FeatureNet, load_feature_network, save_feature_extractor
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
    "find_inception_weights",
    "frechet_distance",
    "gaussian_stats",
    "load_feature_network",
    "psnr",
    "save_feature_extractor",
    "ssim",
    "to_uint8",
    "to_unit",
    "write_report",
]
