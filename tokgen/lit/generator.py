"""LightningModule that trains the GPT generator on token shards: next-code cross-entropy on every position
(one model for every prefix length k), label dropout for classifier-free guidance, optional EOS for
variable-length (halting) sequences, optional EMA weights, warm-up + cosine LR, and optional sample grids.

The identity of the tokenizer that wrote the shards (codebook size, K, config, checkpoint path, weights
fingerprint) is stored in ``checkpoint["tokgen"]["tokenizer"]`` so sampling can refuse a mismatched pair.
"""
from __future__ import annotations

import copy
import os
from dataclasses import asdict

import lightning as L
import torch
from lightning.pytorch.strategies import FSDPStrategy
from torchvision.utils import save_image

from ..generator import GPT, GPTConfig, generate
from ..metrics import to_unit
from .ema import ema_update
from .schedule import warmup_cosine
from .speed import SpeedConfig, apply_speed, build_adamw, enable_tf32
from .tokenizer import OptimConfig

IGNORE_INDEX = -100


def build_targets(codes: torch.Tensor, lengths: torch.Tensor, eos_id: int | None) -> torch.Tensor:
    """codes (B, K), lengths (B,) -> targets (B, K) or (B, K + 1) with EOS.

    Fixed length (no EOS): every position is a target. With EOS: target ``lengths[b]`` is EOS and later
    positions are ignored (they are padding).
    """
    if eos_id is None:
        return codes
    B, K = codes.shape
    pos = torch.arange(K + 1, device=codes.device)[None]  # (1, K + 1)
    targets = torch.cat([codes, codes.new_zeros(B, 1)], dim=1)
    targets = torch.where(pos == lengths[:, None], torch.full_like(targets, eos_id), targets)
    return targets.masked_fill(pos > lengths[:, None], IGNORE_INDEX)


class GeneratorModule(L.LightningModule):
    def __init__(
        self,
        generator: GPTConfig | None = None,
        optim: OptimConfig | None = None,
        ema_decay: float = 0.0,
        sample_grid: bool = False,
        sample_per_class: int = 4,
        sample_cfg: float = 2.0,
        tokenizer_ckpt: str | None = None,
        speed: SpeedConfig | None = None,
    ):
        """
        Args:
            generator: GPT architecture; vocab_size / block_size / num_classes must match the token shards.
            optim: AdamW + warm-up cosine schedule (``disc_lr`` is unused here).
            ema_decay: decay of EMA weights used for sampling and export (0 = no EMA).
            sample_grid: after each validation, sample ``sample_per_class`` images per class (up to 10
                classes) at full budget and save ``samples/val_latest.png``; needs the tokenizer checkpoint.
            sample_cfg: guidance scale of those samples.
            tokenizer_ckpt: tokenizer for the sample grid (default: the checkpoint recorded in the shards).
            speed: compile (the blocks in training, the decode step of the sample grid) / activation
                checkpointing / fused AdamW / TF32 (:class:`tokgen.lit.speed.SpeedConfig`).
        """
        super().__init__()
        self.generator_config = generator or GPTConfig()
        self.optim_config = optim or OptimConfig(lr=3e-4, weight_decay=0.05, beta2=0.95)
        if not 0.0 <= ema_decay < 1.0:
            raise ValueError(f"ema_decay={ema_decay} must be in [0, 1)")
        self.ema_decay = ema_decay
        self.sample_grid = sample_grid
        self.sample_per_class = sample_per_class
        self.sample_cfg = sample_cfg
        self.tokenizer_ckpt = tokenizer_ckpt
        self.speed = speed or SpeedConfig()
        self.generator = GPT(self.generator_config)
        self.ema_generator = copy.deepcopy(self.generator).requires_grad_(False) if ema_decay > 0 else None
        self.tokenizer_info: dict | None = None  # identity of the tokenizer that wrote the training shards
        self.optimizer_steps = 0

    # ------------------------------------------------------------------ setup
    def setup(self, stage: str) -> None:
        dm = getattr(self.trainer, "datamodule", None) if self._trainer is not None else None
        if dm is None or getattr(dm, "codebook_size", None) is None:
            return
        c = self.generator_config
        checks = (("codebook_size", dm.codebook_size, "vocab_size", c.vocab_size, dm.codebook_size != c.vocab_size),
                  ("num_tokens", dm.num_tokens, "block_size", c.block_size, dm.num_tokens > c.block_size),
                  ("num_classes", dm.num_classes, "num_classes", c.num_classes,
                   c.num_classes not in (0, dm.num_classes)))
        for data_name, data_value, model_name, model_value, bad in checks:
            if bad:
                raise ValueError(
                    f"token shards have {data_name}={data_value} but model.init_args.generator.{model_name}="
                    f"{model_value}; set model.init_args.generator.{model_name}: {data_value}"
                )
        self.tokenizer_info = dm.tokenizer

    def configure_model(self) -> None:
        """Speed levers on the trained generator (not its EMA copy), before a strategy wraps it."""
        apply_speed(self.generator, self.speed)
        if self._trainer is not None:
            enable_tf32(self.trainer.strategy.root_device, self.speed)

    def eval_generator(self) -> GPT:
        return self.ema_generator if self.ema_generator is not None else self.generator

    def configure_optimizers(self):
        o = self.optim_config
        decay = [p for p in self.generator.parameters() if p.ndim >= 2]
        no_decay = [p for p in self.generator.parameters() if p.ndim < 2]
        opt = build_adamw(
            [{"params": decay, "weight_decay": o.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
            self.speed, lr=o.lr, betas=(o.beta1, o.beta2),
        )
        total = o.total_steps or (self.trainer.max_steps if self.trainer.max_steps and self.trainer.max_steps > 0 else 10_000)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: warmup_cosine(s, o.warmup_steps, total, o.min_lr_ratio))
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    def configure_gradient_clipping(self, optimizer, gradient_clip_val=None, gradient_clip_algorithm=None):
        clip = gradient_clip_val or self.optim_config.grad_clip
        if not clip:
            return
        if isinstance(self.trainer.strategy, FSDPStrategy):  # sharded parameters: FSDP computes the global norm
            self.trainer.strategy.model.clip_grad_norm_(clip)
        else:
            self.clip_gradients(optimizer, gradient_clip_val=clip, gradient_clip_algorithm=gradient_clip_algorithm or "norm")

    # ------------------------------------------------------------------ loss
    def loss(self, model: GPT, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
        codes, labels = batch["codes"], batch["label"]
        lengths = batch.get("length")
        if lengths is None:
            lengths = torch.full_like(labels, codes.shape[1])
        if self.generator_config.num_classes == 0:
            labels = None
        targets = build_targets(codes, lengths, self.generator_config.eos_id)  # (B, T)
        return model.loss(targets, labels, ignore_index=IGNORE_INDEX)

    def training_step(self, batch, batch_idx):
        loss, acc = self.loss(self.generator, batch)
        self.log_dict({"train/loss": loss.detach(), "train/acc": acc}, prog_bar=False)
        self.log("loss", loss.detach(), prog_bar=True, logger=False)
        return loss

    def optimizer_step(self, *args, **kwargs) -> None:
        super().optimizer_step(*args, **kwargs)
        self.optimizer_steps += 1  # EMA follows every optimizer step, before checkpoint callbacks run
        if self.ema_generator is not None:
            ema_update(self.ema_generator, self.generator, self.ema_decay, self.optimizer_steps)

    def on_train_batch_end(self, outputs, batch, batch_idx) -> None:
        self.log("train/lr", self.lr_schedulers().get_last_lr()[0], prog_bar=False)

    def validation_step(self, batch, batch_idx):
        loss, acc = self.loss(self.eval_generator(), batch)
        n = batch["codes"].shape[0]
        self.log("val/loss", loss, prog_bar=True, sync_dist=True, batch_size=n)
        self.log("val/acc", acc, sync_dist=True, batch_size=n)

    def test_step(self, batch, batch_idx):
        loss, acc = self.loss(self.eval_generator(), batch)
        n = batch["codes"].shape[0]
        self.log("test/loss", loss, sync_dist=True, batch_size=n)
        self.log("test/acc", acc, sync_dist=True, batch_size=n)

    # ------------------------------------------------------------------ sample grid
    def on_validation_epoch_end(self) -> None:
        if not self.sample_grid or self.trainer.sanity_checking or not self.trainer.is_global_zero:
            return
        if isinstance(self.trainer.strategy, FSDPStrategy):
            return  # sharded blocks need every rank in each forward: sample after training with `tokgen sample`
        path = self.tokenizer_ckpt or (self.tokenizer_info or {}).get("checkpoint")
        if not path or not os.path.isfile(path):
            return  # optional: no tokenizer at hand, no grid
        from ..tokenizers import load_tokenizer

        tokenizer = load_tokenizer(path).to(self.device)  # any kind, flow decoders included
        model = self.eval_generator()
        c = self.generator_config
        n_cls = min(c.num_classes, 10)
        labels = torch.arange(max(n_cls, 1), device=self.device).repeat_interleave(self.sample_per_class)
        k = min(c.block_size, tokenizer.num_tokens)
        gen = torch.Generator().manual_seed(0)
        was_training = model.training
        model.eval()
        codes, _ = generate(model, labels if n_cls else None, k, batch_size=len(labels),
                            cfg_scale=self.sample_cfg if n_cls else 1.0, generator=gen,
                            compile=self.speed.compile and self.device.type == "cuda")
        model.train(was_training)
        images = to_unit(tokenizer.decode(codes))
        out_dir = os.path.join(self.trainer.default_root_dir, "samples")
        os.makedirs(out_dir, exist_ok=True)
        # rows = classes 0..9, columns = samples
        for name in (f"gen_step{self.global_step:07d}.png", "gen_latest.png"):
            save_image(images.cpu(), os.path.join(out_dir, name), nrow=self.sample_per_class, padding=1)

    # ------------------------------------------------------------------ checkpoint metadata
    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["tokgen"] = {
            "kind": "generator",
            "generator_config": self.generator_config.to_dict(),
            "optim_config": asdict(self.optim_config),
            "tokenizer": self.tokenizer_info,
            "optimizer_steps": self.optimizer_steps,
        }

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        meta = checkpoint.get("tokgen", {})
        self.optimizer_steps = int(meta.get("optimizer_steps", 0))
        saved, current = meta.get("tokenizer"), self.tokenizer_info  # current: from the shards (setup runs first)
        old, new = (saved or {}).get("fingerprint"), (current or {}).get("fingerprint")
        if old and new and old != new:
            raise ValueError(
                f"this generator checkpoint was trained on codes of tokenizer weights {old} "
                f"({(saved or {}).get('checkpoint')}), but the token shards come from {new} "
                f"({(current or {}).get('checkpoint')}); resume with the shards it was trained on or start a new run"
            )
        self.tokenizer_info = current or saved
