"""LightningModule that trains a video tokenizer (trajectory tokens or the space-time patch baseline): the recipe's
``tokenizer`` config, a TrajectoryTokenizerConfig or a PatchVideoTokenizerConfig (told apart by its ``kind``),
builds the tokenizer class of that kind.

Loss: pixel MSE of the composited clip, plus for trajectory tokens a cross-entropy that makes the decoder's
alpha softmax over tokens reproduce the extracted trajectory masks (``alpha_weight``) and an L1 loss between
the geometry the decoder reads from each token (per frame: mask centroid and spread) and the moments of the
extracted masks (``geometry_weight``), plus quantizer losses.
Validation logs ``val/psnr`` (all tokens), ``val/psnr_k{k}`` (first k trajectories), ``val/ssim`` and
``val/tokens`` (mean trajectories per clip), and writes ``samples/val_latest.png`` (rows: frames of the
original clips, then their reconstructions).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ..metrics import to_unit
from ..video.metrics import video_psnr, video_ssim
from ..video.geometry import trajectory_moments
from ..video.patch_tokenizer import PatchVideoTokenizerConfig
from ..video.tokenizer import VideoTokenizer
from ..video.trajectory_tokenizer import TrajectoryTokenizerConfig
from .base import TrainingModule
from .tokenizer import OptimConfig


class VideoTokenizerModule(TrainingModule):
    model_class = VideoTokenizer

    def __init__(
        self,
        tokenizer: TrajectoryTokenizerConfig | PatchVideoTokenizerConfig | None = None,
        optim: OptimConfig | None = None,
        alpha_weight: float = 0.1,
        geometry_weight: float = 0.1,
        ema_decay: float = 0.0,
        val_budgets: list[int] | None = None,
        grid_clips: int = 4,
    ):
        """
        Args:
            tokenizer: architecture (``kind: trajectory`` or ``kind: patch``; default: a trajectory tokenizer).
            optim: AdamW + warm-up cosine schedule.
            alpha_weight: weight of the mask cross-entropy on the alpha logits (trajectory tokens only).
            geometry_weight: weight of the L1 loss on the decoded per-frame mask moments (trajectory tokens only).
            ema_decay: EMA of the weights used for validation and export (0 = off).
            val_budgets: numbers of trajectories scored in validation (default 1, 2, 4, ..., K).
            grid_clips: clips shown in the validation PNG.
        """
        super().__init__()
        self.tokenizer_config = tokenizer or TrajectoryTokenizerConfig()
        self.optim_config = optim or OptimConfig()
        for name, value in (("alpha_weight", alpha_weight), ("geometry_weight", geometry_weight)):
            if value < 0:
                raise ValueError(f"{name}={value} must be >= 0")
        self.alpha_weight, self.geometry_weight = alpha_weight, geometry_weight
        self.grid_clips = grid_clips
        self.build_model(self.tokenizer_config, ema_decay)  # self.tokenizer, ema_tokenizer; plain AdamW
        K = self.tokenizer.num_tokens
        if self.tokenizer.needs_trajectories:  # prefixes of the trajectories decode; the baseline only at K
            default = sorted({min(2**i, K) for i in range(K.bit_length() + 1)})
            self.val_budgets = sorted(set(val_budgets or default))
        else:
            self.val_budgets = [K]
        bad = [k for k in self.val_budgets if not 1 <= k <= K]
        if bad:
            raise ValueError(f"val_budgets {bad} are outside the accepted range 1..{K}")
        self._val_grid = None

    def setup(self, stage: str) -> None:
        dm = getattr(self.trainer, "datamodule", None) if self._trainer is not None else None
        if dm is None:
            return
        c = self.tokenizer_config
        for name, want in (("image_size", c.image_size), ("num_frames", c.num_frames), ("channels", c.channels)):
            got = getattr(dm, name, None)
            if got is not None and got != want:
                raise ValueError(f"data {name}={got} does not match the video tokenizer's {name}={want}; "
                                 f"set data.init_args.{name}: {want} or model.tokenizer.{name}: {got}")
        if self.tokenizer.needs_trajectories:
            if not getattr(dm, "trajectories", True):
                raise ValueError("the trajectory tokenizer needs data.init_args.trajectories: true")
            max_traj = (getattr(dm, "extraction", None) or {}).get("max_trajectories")
            if max_traj is None or max_traj > c.max_tokens:
                raise ValueError(f"set data.init_args.extraction.max_trajectories <= max_tokens={c.max_tokens} "
                                 f"(got {max_traj}) so every clip fits the token slots")

    def compute_loss(self, model: VideoTokenizer, batch: dict) -> tuple[torch.Tensor, dict]:
        video = batch["video"]
        ids = batch.get("traj_ids") if model.needs_trajectories else None
        recon, extras = model(video, ids)
        rec = F.mse_loss(recon, video)
        loss = rec + sum(extras["aux"].values(), torch.zeros((), device=video.device))
        logs = {"rec": rec.detach()}
        if extras["alpha_logits"] is not None and self.alpha_weight > 0:
            logits = extras["alpha_logits"].clamp_min(-1e4)  # padding slots are -inf
            ce = F.cross_entropy(logits, ids.long())
            loss = loss + self.alpha_weight * ce
            logs["alpha_ce"] = ce.detach()
        if extras["geometry"] is not None and self.geometry_weight > 0:
            moments, present = trajectory_moments(ids.long(), extras["geometry"].shape[1])  # (B, K, T, 4)
            geo = (extras["geometry"] - moments).abs().sum(-1)[present].mean()
            loss = loss + self.geometry_weight * geo
            logs["geometry"] = geo.detach()
        logs.update({k: v.detach() for k, v in extras["aux"].items()})
        return loss, logs

    def training_step(self, batch, batch_idx):
        loss, logs = self.compute_loss(self.tokenizer, batch)
        self.log_dict({f"train/{k}": v for k, v in logs.items()}, batch_size=batch["video"].shape[0])
        self.log("loss", loss.detach(), prog_bar=True, logger=False)
        return loss

    def eval_step(self, batch, batch_idx, stage: str) -> None:
        model = self.eval_model()
        video = batch["video"]
        ids = batch.get("traj_ids") if model.needs_trajectories else None
        z_q, _, token_mask, _ = model.encode(video, ids)
        B, K = token_mask.shape
        for k in self.val_budgets:
            keep = token_mask & (torch.arange(K, device=video.device) < k)
            recon, _ = model.decode(z_q, keep)
            self.log(f"{stage}/psnr_k{k}", video_psnr(recon, video).mean(), batch_size=B, sync_dist=True)
        self.log(f"{stage}/psnr", video_psnr(recon, video).mean(), prog_bar=True, batch_size=B, sync_dist=True)
        self.log(f"{stage}/ssim", video_ssim(recon, video).mean(), batch_size=B, sync_dist=True)
        self.log(f"{stage}/tokens", token_mask.sum(1).float().mean(), batch_size=B, sync_dist=True)
        if batch_idx == 0:
            n = min(self.grid_clips, B)
            self._val_grid = torch.stack([video[:n], recon[:n]], 1).flatten(0, 1)  # (2n, T, C, H, W)

    def validation_grid(self):
        """Rows alternate original / reconstructed clips, columns are their frames."""
        if self._val_grid is None:
            return None
        clips, self._val_grid = to_unit(self._val_grid), None
        return clips.flatten(0, 1), clips.shape[1]

    def checkpoint_metadata(self) -> dict:
        dm = getattr(self.trainer, "datamodule", None) if self._trainer is not None else None
        if dm is None:
            return {"extraction": None}
        from ..video.extract import ExtractionConfig

        # every field, resolved: a later change of a default must not change what this model extracts
        return {"extraction": ExtractionConfig.from_dict(getattr(dm, "extraction", None) or {}).to_dict()}
