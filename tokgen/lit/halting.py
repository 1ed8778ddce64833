"""LightningModule that trains a halting tokenizer (``tokgen.tokenizers.halting``) in two phases per step.

Phase 1 (no gradient): encode unconditioned, keep a random budget T per image (nested dropout), decode and
measure the achieved error eps0 (per-pixel, on [0, 1] images, the tokenizer's ``error_metric``).
Phase 2: encode conditioned on eps0 (the "command" of upside-down RL; with probability ``uncond_prob`` on the
unconditioned token instead, which keeps plain ``encode(images)`` trained), decode from the first T tokens
only (the rest replaced by the mask token) and train reconstruction + quantizer losses, plus BCE on the
halting logits so positions 1..T-1 stay active and T..K-1 halt.

EMA, optimizer, schedule, per-budget validation PSNR and the sample grid come from ``TokenizerModule`` (which builds
the ``HaltingTokenizer`` named by ``model_class``);
validation also logs, for each eps in ``val_target_errors``, the mean halting length and the fraction of
images whose reconstruction meets eps.
"""
from __future__ import annotations

import torch

from ..tokenizers.halting import HaltingConfig, HaltingTokenizer, halting_bce, halting_targets, reconstruction_error
from ..tokenizers.nested_dropout import sample_keep_lengths
from .losses import pixel_loss
from .speed import SpeedConfig
from .tokenizer import LossConfig, OptimConfig, TokenizerModule


class HaltingModule(TokenizerModule):
    model_class = HaltingTokenizer

    def __init__(
        self,
        tokenizer: HaltingConfig | None = None,
        loss: LossConfig | None = None,
        optim: OptimConfig | None = None,
        nested_dropout: str = "uniform",
        ema_decay: float = 0.999,
        val_budgets: list[int] | None = None,
        grid_images: int = 8,
        halt_weight: float = 0.1,
        uncond_prob: float = 0.1,
        val_target_errors: list[float] | None = None,
        speed: SpeedConfig | None = None,
    ):
        """
        Args (besides TokenizerModule's):
            tokenizer: a HaltingConfig (TokenizerConfig + error_metric, eps_min/eps_max/eps_bins, halt_threshold).
            nested_dropout: how the phase-1 budget T is drawn: "uniform" (T ~ U{1..K}) or "pow2".
            halt_weight: weight of the halting BCE against the reconstruction loss.
            uncond_prob: fraction of phase-2 examples encoded unconditioned (no halting label for those).
            val_target_errors: eps values scored in validation (default: eps_min, geometric mean, eps_max).
            speed: compile / activation checkpointing / fused AdamW / TF32 (:class:`tokgen.lit.speed.SpeedConfig`).
        """
        tokenizer = tokenizer or HaltingConfig()
        if not isinstance(tokenizer, HaltingConfig):
            raise ValueError(f"HaltingModule needs model.tokenizer to be a HaltingConfig, got {type(tokenizer).__name__}")
        if tokenizer.halt_head != "classifier":
            raise ValueError(f"HaltingModule trains the classifier halting head; halt_head={tokenizer.halt_head!r} is "
                             f"fit on a trained nested tokenizer by `tokgen refit-halting --head error-model`")
        loss = loss or LossConfig()
        if loss.gan_weight > 0 or loss.perceptual_weight > 0:
            raise ValueError(f"HaltingModule trains pixel + quantizer losses only; got gan_weight={loss.gan_weight}, "
                             f"perceptual_weight={loss.perceptual_weight} (set both to 0)")
        if nested_dropout not in ("uniform", "pow2"):
            raise ValueError(f"nested_dropout={nested_dropout!r} is not supported by HaltingModule; use 'uniform' or "
                             f"'pow2' (phase 1 needs a random budget)")
        if halt_weight < 0:
            raise ValueError(f"halt_weight={halt_weight} must be >= 0")
        if not 0.0 <= uncond_prob < 1.0:
            raise ValueError(f"uncond_prob={uncond_prob} must be in [0, 1)")
        super().__init__(tokenizer=tokenizer, loss=loss, optim=optim, nested_dropout=nested_dropout,
                         ema_decay=ema_decay, val_budgets=val_budgets, grid_images=grid_images, speed=speed)
        self.halt_weight = halt_weight
        self.uncond_prob = uncond_prob
        c = self.tokenizer_config
        self.val_target_errors = sorted(val_target_errors or [c.eps_min, (c.eps_min * c.eps_max) ** 0.5, c.eps_max])
        bad = [e for e in self.val_target_errors if not c.eps_min <= e <= c.eps_max]
        if bad:
            raise ValueError(f"val_target_errors {bad} are outside the trained range [{c.eps_min}, {c.eps_max}]")

    # ------------------------------------------------------------------ training
    def training_step(self, batch, batch_idx):
        images = batch["image"]
        tok = self.tokenizer
        B, K = images.shape[0], tok.num_tokens
        metric = self.tokenizer_config.error_metric

        # phase 1: what error does a random budget T achieve?
        budget = sample_keep_lengths(B, K, self.nested_dropout, device=images.device)
        with torch.no_grad():
            recon1 = tok(images, budget)[0]
            achieved = reconstruction_error(recon1, images, metric)  # (B,) eps0

        # phase 2: conditioned on eps0, T tokens must do (reconstruction) and the head must halt at T
        condition, too_high, too_low = tok.training_condition(achieved)
        uncond = torch.rand(B, device=images.device) < self.uncond_prob
        condition = torch.where(uncond, torch.zeros_like(condition), condition)
        recon, codes, aux, halt_logits = tok(images, budget, condition)
        rec = pixel_loss(recon, images, self.loss_config.reconstruction)
        targets, weights = halting_targets(budget, K, too_high, too_low)
        weights = weights * (~uncond).float()[:, None]
        halt = halting_bce(halt_logits, targets, weights)
        loss = rec + self.halt_weight * halt + sum(aux.values(), torch.zeros((), device=images.device))

        lr = self.generator_step(loss)

        with torch.no_grad():
            scored = weights > 0
            acc = ((halt_logits > 0).float() == targets)[scored].float().mean() if scored.any() else torch.tensor(0.0)
        logs = {"train/rec": rec.detach(), "train/halt_bce": halt.detach(), "train/halt_acc": acc,
                "train/eps0": achieved.mean(), "train/loss": loss.detach(),
                "train/lr": torch.tensor(lr),
                **{f"train/{k}": v.detach() for k, v in aux.items()}}
        self.log_dict(logs, prog_bar=False)
        self.log("loss", loss.detach(), prog_bar=True, logger=False)
        return loss.detach()

    # ------------------------------------------------------------------ validation
    def eval_step(self, batch, batch_idx, stage: str):
        super().eval_step(batch, batch_idx, stage)
        images = batch["image"]
        model = self.eval_model()
        n = images.shape[0]
        for eps in self.val_target_errors:
            _, lengths, z_q = model.encode_adaptive(images, eps)
            err = reconstruction_error(model.decode_latents(z_q, keep=lengths), images, model.config.error_metric)
            self.log(f"{stage}/length_eps{eps:g}", lengths.float().mean(), sync_dist=True, batch_size=n)
            self.log(f"{stage}/met_eps{eps:g}", (err <= eps).float().mean(), sync_dist=True, batch_size=n)

    # ------------------------------------------------------------------ checkpoint metadata
    def checkpoint_metadata(self) -> dict:
        return {**super().checkpoint_metadata(),
                "halting": {"halt_weight": self.halt_weight, "uncond_prob": self.uncond_prob}}
