"""Video metrics: reconstruction quality per number of tokens, and trajectory tracking against ground truth.

Protocol (the image protocol of :mod:`tokgen.metrics`, applied frame by frame): clips in [-1, 1] are rounded
to uint8 as a video file stores them; PSNR per clip over all frames and pixels (one MSE per clip); SSIM per
frame (torchmetrics, 11x11 Gaussian, sigma 1.5), averaged over the clip's frames; each metric is the mean
over clips. Tracking (:func:`track_scores`): recall of ground-truth objects by space-time mask IoU, and purity.
"""
from __future__ import annotations

import numpy as np
import torch

from ..metrics import psnr, ssim, to_uint8


def _unit(video: torch.Tensor) -> torch.Tensor:
    return to_uint8(video).float() / 255.0


def video_psnr(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """(B, T, C, H, W) clips in [-1, 1] -> (B,) PSNR in dB over each whole clip (8-bit rounded)."""
    return psnr(_unit(pred).flatten(1, 2), _unit(target).flatten(1, 2))


def video_ssim(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """(B, T, C, H, W) clips in [-1, 1] -> (B,) SSIM averaged over frames (8-bit rounded)."""
    B, T = pred.shape[:2]
    return ssim(_unit(pred).flatten(0, 1), _unit(target).flatten(0, 1)).view(B, T).mean(1)


@torch.no_grad()
def evaluate_video_tokenizer(model, loader, budgets: list[int] | None = None, limit: int | None = None,
                             metrics: tuple[str, ...] = ("psnr", "ssim")) -> dict:
    """Score a :class:`tokgen.video.VideoTokenizer` on ``loader`` (dicts with "video" and, for tokenizers that
    ``needs_trajectories``, "traj_ids").

    For trajectory tokens, budget k decodes the first k trajectories of each clip (largest first; a clip
    with fewer trajectories uses all of them), so the table reads "quality vs number of tokens"; the patch
    baseline is scored at its fixed token count. Returns ``{"budgets": [...], "psnr": {k: dB}, "ssim": {k: v},
    "tokens_used": {k: mean tokens actually decoded}, "clips": N}``.
    """
    model.eval()
    K = model.num_tokens
    trajectory = model.needs_trajectories
    budgets = sorted(set(budgets or [K])) if trajectory else [K]
    bad = [k for k in budgets if not 1 <= k <= K]
    if bad:
        raise ValueError(f"budgets {bad} are outside 1..{K} (the tokenizer's token count)")
    sums = {m: {k: 0.0 for k in budgets} for m in (*metrics, "tokens_used")}
    clips = 0
    device = next(model.parameters()).device
    for batch in loader:
        video = batch["video"].to(device)
        if limit is not None:
            video = video[: max(0, limit - clips)]
        if video.shape[0] == 0:
            break
        ids = batch["traj_ids"][: video.shape[0]].to(device) if trajectory else None
        z_q, _, token_mask, _ = model.encode(video, ids)
        for k in budgets:
            keep = token_mask & (torch.arange(K, device=device) < k)
            recon, _ = model.decode(z_q, keep)
            if "psnr" in metrics:
                sums["psnr"][k] += float(video_psnr(recon, video).sum())
            if "ssim" in metrics:
                sums["ssim"][k] += float(video_ssim(recon, video).sum())
            sums["tokens_used"][k] += float(keep.sum())
        clips += video.shape[0]
        if limit is not None and clips >= limit:
            break
    if clips == 0:
        raise ValueError("the evaluation data yielded no clips")
    return {"budgets": budgets, "clips": clips, "num_tokens": K, "kind": model.config.kind,
            **{m: {k: v / clips for k, v in s.items()} for m, s in sums.items()}}


# ---------------------------------------------------------------------------------------------------- scores
def track_scores(pred: np.ndarray, gt: np.ndarray, iou_threshold: float = 0.5, background: int | None = 0) -> dict:
    """Compare predicted trajectories with ground-truth tracks, both (T, H, W) id maps.

    - recall: fraction of ground-truth object tracks (all ids but ``background``) that some predicted
      trajectory matches with space-time mask IoU >= ``iou_threshold`` (IoU of the two (T, H, W) volumes).
    - purity: fraction of predicted space-time pixels that carry their trajectory's majority ground-truth
      id (background included), i.e. how rarely a trajectory straddles two objects or drifts off its object.
    """
    pred, gt = np.asarray(pred), np.asarray(gt)
    if pred.shape != gt.shape:
        raise ValueError(f"prediction shape {pred.shape} differs from ground truth {gt.shape}")
    p_ids, p = np.unique(pred, return_inverse=True)
    g_ids, g = np.unique(gt, return_inverse=True)
    P, G = len(p_ids), len(g_ids)
    inter = np.bincount(p.ravel() * G + g.ravel(), minlength=P * G).reshape(P, G).astype(np.float64)
    iou = inter / (inter.sum(1)[:, None] + inter.sum(0)[None] - inter)
    objects = [j for j in range(G) if background is None or g_ids[j] != background]
    best = iou[:, objects].max(0) if objects else np.zeros(0)
    return {
        "recall": float((best >= iou_threshold).mean()) if objects else 1.0,
        "purity": float(inter.max(1).sum() / inter.sum()),
        "num_pred": int(P),
        "num_gt_objects": len(objects),
        "best_iou": [round(float(b), 4) for b in best],
    }
