"""LightningModule that trains a 1D tokenizer: pixel + perceptual + quantizer (+ GAN) losses, nested dropout,
EMA weights, warm-up + cosine LR, and per-budget validation (PSNR for k = 1, 2, 4, ..., K and a PNG grid).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from lightning.pytorch.utilities import rank_zero_warn

from ..data.base import check_int, check_number
from ..metrics import psnr, to_unit
from ..tokenizers import Tokenizer1D, TokenizerConfig, power_of_two_budgets, sample_keep_lengths
from ..tokenizers.nested_dropout import KEEP_MODES
from .base import TrainingModule
from .losses import PatchDiscriminator, adaptive_gan_weight, build_lpips, hinge_d_loss, pixel_loss
from .speed import SpeedConfig


@dataclass
class LossConfig:
    reconstruction: str = "l1"  # "l1" or "l2"
    perceptual_weight: float = 0.0  # LPIPS weight; needs the backbone weights in the torch cache
    perceptual_net: str = "vgg"  # "vgg", "alex" or "squeeze"
    perceptual_random_backbone: bool = False  # test stand-in only: random LPIPS backbone
    gan_weight: float = 0.0  # PatchGAN hinge loss weight (0 = off)
    gan_start_step: int = 0  # generator steps before the GAN term switches on
    disc_width: int = 64
    disc_layers: int = 3


@dataclass
class OptimConfig:
    lr: float = 1e-4
    weight_decay: float = 1e-4
    beta1: float = 0.9
    beta2: float = 0.99
    warmup_steps: int = 100
    total_steps: int | None = None  # None: the trainer's max_steps
    min_lr_ratio: float = 0.1
    grad_clip: float | None = 1.0  # max gradient norm; None or 0 = no clipping
    disc_lr: float | None = None  # None: same as lr

    def __post_init__(self):
        check_number("optim.lr", self.lr, 0, low_open=True)
        check_number("optim.weight_decay", self.weight_decay, 0)
        for name in ("beta1", "beta2"):
            check_number(f"optim.{name}", getattr(self, name), 0, 1, high_open=True)
        check_int("optim.warmup_steps", self.warmup_steps, minimum=0)
        if self.total_steps is not None:
            check_int("optim.total_steps", self.total_steps, minimum=1)
        check_number("optim.min_lr_ratio", self.min_lr_ratio, 0, 1)
        if self.grad_clip is not None:
            check_number("optim.grad_clip", self.grad_clip, 0)
        if self.disc_lr is not None:
            check_number("optim.disc_lr", self.disc_lr, 0, low_open=True)


class TokenizerModule(TrainingModule):
    model_class = Tokenizer1D  # the model built from ``tokenizer`` (subclasses: HaltingTokenizer, FlowTokenizer)
    steps_key = "generator_steps"  # the tokenizer's optimizer steps; the discriminator's are not counted

    def __init__(
        self,
        tokenizer: TokenizerConfig | None = None,
        loss: LossConfig | None = None,
        optim: OptimConfig | None = None,
        nested_dropout: str = "uniform",
        nested_full_fraction: float = 0.5,
        nested_prefix_weight: float = 1.0,
        ema_decay: float = 0.999,
        val_budgets: list[int] | None = None,
        grid_images: int = 8,
        speed: SpeedConfig | None = None,
    ):
        """
        Args:
            tokenizer: architecture of the 1D tokenizer.
            loss: pixel / perceptual / GAN loss settings.
            optim: AdamW + warm-up cosine schedule.
            nested_dropout: how many tokens each training example keeps: "uniform" (k ~ U{1..K}),
                "pow2" (k in {1, 2, 4, ..., K}), "pow2_full" (a fraction nested_full_fraction of the batch keeps all K,
                the rest pow2), "pow2_dual" (each example decoded twice from one encoding: from all K tokens and from
                a pow2 prefix k < K; the loss averages both) or "none" (always K).
            nested_full_fraction: with "pow2_full", the fraction of each batch that keeps all K tokens.
            nested_prefix_weight: with "pow2_dual", the weight w of the prefix decode's reconstruction loss:
                (loss_full + w * loss_prefix) / (1 + w).
            ema_decay: decay of the EMA weights used for validation and export (0 = no EMA).
            val_budgets: token budgets scored in validation (default 1, 2, 4, ..., K).
            grid_images: images per row of the validation PNG grid.
            speed: compile / activation checkpointing / fused AdamW / TF32 (:class:`tokgen.lit.speed.SpeedConfig`).
        """
        super().__init__()
        self.automatic_optimization = False
        self.tokenizer_config = tokenizer or TokenizerConfig()
        self.loss_config = loss or LossConfig()
        self.optim_config = optim or OptimConfig()
        if nested_dropout not in KEEP_MODES:
            raise ValueError(f"nested_dropout={nested_dropout!r} is not supported; use one of {KEEP_MODES}")
        self.nested_dropout = nested_dropout
        if not 0.0 <= nested_full_fraction <= 1.0:
            raise ValueError(f"nested_full_fraction={nested_full_fraction} must be in [0, 1]")
        self.nested_full_fraction = nested_full_fraction
        if nested_prefix_weight < 0:
            raise ValueError(f"nested_prefix_weight={nested_prefix_weight} must be >= 0")
        self.nested_prefix_weight = nested_prefix_weight
        self.grid_images = grid_images

        self.build_model(self.tokenizer_config, ema_decay, speed or SpeedConfig())  # self.tokenizer, ema_tokenizer
        K = self.tokenizer.num_tokens
        self.val_budgets = sorted(set(val_budgets or power_of_two_budgets(K)))
        bad = [k for k in self.val_budgets if not 1 <= k <= K]
        if bad:
            raise ValueError(f"val_budgets {bad} are outside the accepted range 1..{K}")
        self.discriminator = None
        if self.loss_config.gan_weight > 0:
            self.discriminator = PatchDiscriminator(
                self.tokenizer_config.channels, self.loss_config.disc_width, self.loss_config.disc_layers
            )
        self._lpips: list = []  # kept out of the state dict (frozen, loaded from the torch cache)
        self._val_grid = None

    @property
    def generator_steps(self) -> int:
        """Optimizer steps of the tokenizer (the GAN's generator), the EMA's step; saved as ``generator_steps``."""
        return self.optimizer_steps

    # ------------------------------------------------------------------ setup
    def setup(self, stage: str) -> None:
        if self.loss_config.perceptual_weight > 0 and not self._lpips:
            self._lpips.append(build_lpips(self.loss_config.perceptual_net, self.loss_config.perceptual_random_backbone))
        dm = getattr(self.trainer, "datamodule", None) if self._trainer is not None else None
        if dm is not None:
            c = self.tokenizer_config
            for name, want in (("image_size", c.image_size), ("channels", c.channels)):
                got = getattr(dm, name, None)
                if got is not None and got != want:
                    raise ValueError(
                        f"data {name}={got} does not match the tokenizer's {name}={want}; "
                        f"set data.init_args.{name}: {want} or model.tokenizer.{name}: {got}"
                    )
        if stage == "fit" and self.nested_dropout == "none" and self.tokenizer_config.num_tokens > 1:
            rank_zero_warn(f"this recipe trains a fixed-length tokenizer (nested_dropout: none): only k = "
                           f"{self.tokenizer_config.num_tokens} is trained, shorter prefixes in the validation grid "
                           f"and metrics are not; use a nested recipe for any-prefix decoding")

    def no_weight_decay(self, name: str, param: torch.nn.Parameter) -> bool:
        return param.ndim < 2 or "pos" in name or "token" in name or "registers" in name

    def configure_optimizers(self):
        opt_g, sched_g = self.model_optimizer()
        if self.discriminator is None:
            return [opt_g], [sched_g]
        o = self.optim_config
        opt_d = self.adamw([{"params": list(self.discriminator.parameters())}], o.disc_lr or o.lr)
        return [opt_g, opt_d], [sched_g]

    def generator_step(self, loss: torch.Tensor) -> float:
        """Backward, clip, step the tokenizer's optimizer and LR schedule, update the EMA; returns the learning rate."""
        opts = self.optimizers()
        opt = opts[0] if isinstance(opts, (list, tuple)) else opts
        sched = self.lr_schedulers()
        sched = sched[0] if isinstance(sched, (list, tuple)) else sched
        opt.zero_grad(set_to_none=True)
        self.manual_backward(loss)
        self.clip_grad_norm(opt, self.optim_config.grad_clip)
        opt.step()
        sched.step()
        self.after_model_step()
        return sched.get_last_lr()[0]

    # ------------------------------------------------------------------ training
    def training_step(self, batch, batch_idx):
        images = batch["image"]
        lc = self.loss_config

        K = self.tokenizer.num_tokens
        keep = sample_keep_lengths(images.shape[0], K, self.nested_dropout,
                                   device=images.device, full_fraction=self.nested_full_fraction)
        if self.nested_dropout == "pow2_dual":
            # one encoder pass, two decodes per example: all K tokens, then the sampled prefix
            z_q, codes, aux = self.tokenizer.quantize(self.tokenizer.encode_latents(images))
            keep = torch.cat([torch.full_like(keep, K), keep])
            recon = self.tokenizer.decode_latents(torch.cat([z_q, z_q]), keep)
            B, w = images.shape[0], self.nested_prefix_weight
            rec = (pixel_loss(recon[:B], images, lc.reconstruction)
                   + w * pixel_loss(recon[B:], images, lc.reconstruction)) / (1 + w)
            images = torch.cat([images, images])  # targets for both halves (perceptual / GAN terms)
        else:
            recon, codes, aux = self.tokenizer(images, keep)
            rec = pixel_loss(recon, images, lc.reconstruction)
        loss = rec + sum(aux.values(), torch.zeros((), device=images.device))
        logs = {"train/rec": rec.detach(), **{f"train/{k}": v.detach() for k, v in aux.items()}}
        if self._lpips:
            lp = self._lpips[0].to(images.device)(recon, images).mean()
            loss = loss + lc.perceptual_weight * lp
            logs["train/lpips"] = lp.detach()
        gan_on = self.discriminator is not None and self.generator_steps >= lc.gan_start_step
        if gan_on:
            g_loss = -self.discriminator(recon).mean()
            weight = adaptive_gan_weight(rec + (lc.perceptual_weight * lp if self._lpips else 0), g_loss,
                                         self.tokenizer.to_pixels.weight)
            loss = loss + lc.gan_weight * weight * g_loss
            logs.update({"train/g_loss": g_loss.detach(), "train/gan_adaptive_weight": weight})

        lr = self.generator_step(loss)

        if gan_on:
            opt_d = self.optimizers()[1]
            d_loss = hinge_d_loss(self.discriminator(images), self.discriminator(recon.detach()))
            opt_d.zero_grad(set_to_none=True)
            self.manual_backward(d_loss)
            opt_d.step()
            logs["train/d_loss"] = d_loss.detach()

        logs["train/loss"] = loss.detach()
        logs["train/lr"] = torch.tensor(lr)
        if codes.dtype == torch.long:
            for k, v in self.tokenizer.quantizer.stats(codes).items():
                logs[f"train/{k}"] = torch.tensor(float(v))
        self.log_dict(logs, prog_bar=False)
        self.log("loss", loss.detach(), prog_bar=True, logger=False)
        return loss.detach()

    # ------------------------------------------------------------------ validation
    def eval_step(self, batch, batch_idx, stage: str):
        images = batch["image"]
        model = self.eval_model()
        z_q, codes, _ = model.quantize(model.encode_latents(images))
        target = to_unit(images)
        rows = [target[: self.grid_images]]
        for k in self.val_budgets:
            recon = to_unit(model.decode_latents(z_q[:, :k]))
            self.log(f"{stage}/psnr_k{k}", psnr(recon, target).mean(), sync_dist=True, batch_size=images.shape[0])
            rows.append(recon[: self.grid_images])
        self.log(f"{stage}/psnr", psnr(recon, target).mean(), prog_bar=True, sync_dist=True, batch_size=images.shape[0])
        if codes.dtype == torch.long:
            for name, v in model.quantizer.stats(codes).items():
                self.log(f"{stage}/{name}", float(v), sync_dist=True, batch_size=images.shape[0])
        if batch_idx == 0:
            self._val_grid = torch.cat(rows)

    def validation_grid(self):
        """Rows: the original images, then their reconstructions at k = val_budgets[0], ..., K (coarse to fine)."""
        if self._val_grid is None:
            return None
        rows, self._val_grid = self._val_grid, None
        n = min(self.grid_images, rows.shape[0] // (len(self.val_budgets) + 1))
        grid = rows.view(len(self.val_budgets) + 1, -1, *rows.shape[1:])[:, :n]
        return grid.flatten(0, 1), n

    # ------------------------------------------------------------------ checkpoint metadata
    def checkpoint_metadata(self) -> dict:
        return {"loss_config": asdict(self.loss_config),
                "nested_dropout": self.nested_dropout}  # "none": a fixed-length tokenizer (only k = K is trained)
