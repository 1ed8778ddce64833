"""What every tokgen LightningModule shares: the trained model and its EMA copy, AdamW with decay / no-decay groups
and the warm-up cosine schedule, one EMA hook with one optimizer-step counter, gradient clipping, the validation
grid, and the ``checkpoint["tokgen"]`` metadata that :meth:`tokgen.model.TokgenModel.from_checkpoint` reads.

A subclass names its model class (``model_class``: the model is built from the config once, and held under the
model's ``module_attr``, e.g. ``self.tokenizer`` / ``self.ema_tokenizer``, so checkpoint keys stay
``tokenizer.*`` / ``ema_tokenizer.*``) and keeps only its own loss, steps, validation metrics
(:meth:`TrainingModule.eval_step`, for validation and test alike) and metadata.

The EMA follows the model's optimizer steps: automatic optimization calls :meth:`TrainingModule.after_model_step`
from ``optimizer_step`` (before checkpoint callbacks run, so a saved EMA holds every finished step); a module with
manual optimization calls it after stepping the model's optimizer.
"""
from __future__ import annotations

import copy
from dataclasses import asdict
from typing import ClassVar

import lightning as L
import torch
from lightning.pytorch.strategies import FSDPStrategy

from ..model import TokgenModel
from .ema import ema_update
from .grids import save_val_grid
from .schedule import warmup_cosine
from .speed import SpeedConfig, apply_speed, build_adamw, enable_tf32

DEFAULT_TOTAL_STEPS = 10_000  # schedule length when neither optim.total_steps nor trainer.max_steps says


class TrainingModule(L.LightningModule):
    """Base of TokenizerModule (HaltingModule, FlowModule), GeneratorModule and VideoTokenizerModule.

    Class attributes: ``model_class`` (the :class:`TokgenModel` trained), ``steps_key`` (the
    ``checkpoint["tokgen"]`` entry of the optimizer-step counter) and ``grid_name`` (file prefix of the
    validation grid, ``samples/<grid_name>_step{N}.png`` and ``<grid_name>_latest.png``).
    """

    model_class: ClassVar[type[TokgenModel]]
    steps_key: ClassVar[str] = "optimizer_steps"
    grid_name: ClassVar[str] = "val"

    def build_model(self, config, ema_decay: float, speed: SpeedConfig | None = None) -> TokgenModel:
        """Build the model from ``config`` once, with its EMA copy when ``ema_decay`` > 0 (in [0, 1)), and start the
        step counter. ``speed``: compile / checkpointing / fused AdamW / TF32 (None: plain AdamW, no levers)."""
        if not 0.0 <= ema_decay < 1.0:
            raise ValueError(f"ema_decay={ema_decay} must be in [0, 1)")
        self.ema_decay = ema_decay
        self.speed = speed
        model = self.model_class.class_for_config(config)(config)
        name = self.model_class.module_attr
        setattr(self, name, model)
        setattr(self, f"ema_{name}", copy.deepcopy(model).requires_grad_(False) if ema_decay > 0 else None)
        self.optimizer_steps = 0  # optimizer steps of the model (not of a discriminator): the EMA's step
        return model

    @property
    def trained_model(self) -> TokgenModel:
        return getattr(self, self.model_class.module_attr)

    @property
    def ema_model(self) -> TokgenModel | None:
        return getattr(self, f"ema_{self.model_class.module_attr}")

    def eval_model(self) -> TokgenModel:
        """The weights used for validation, samples and export: the EMA copy when there is one."""
        return self.ema_model if self.ema_model is not None else self.trained_model

    def configure_model(self) -> None:
        """Speed levers on the trained model (not its EMA copy), before a strategy wraps it."""
        if self.speed is None:
            return
        apply_speed(self.trained_model, self.speed)
        if self._trainer is not None:
            enable_tf32(self.trainer.strategy.root_device, self.speed)

    # ------------------------------------------------------------------ optimizer and schedule
    def no_weight_decay(self, name: str, param: torch.nn.Parameter) -> bool:
        """Parameters trained without weight decay: vectors (biases, norms) by default."""
        return param.ndim < 2

    def parameter_groups(self) -> list[dict]:
        """The decay and no-decay AdamW groups of the model's trainable parameters (frozen ones are left out)."""
        decay, no_decay = [], []
        for name, p in self.trained_model.named_parameters():
            if p.requires_grad:
                (no_decay if self.no_weight_decay(name, p) else decay).append(p)
        wd = self.optim_config.weight_decay
        return [{"params": decay, "weight_decay": wd}, {"params": no_decay, "weight_decay": 0.0}]

    def adamw(self, groups: list[dict], lr: float) -> torch.optim.AdamW:
        o = self.optim_config
        if self.speed is None:
            return torch.optim.AdamW(groups, lr=lr, betas=(o.beta1, o.beta2))
        return build_adamw(groups, self.speed, lr=lr, betas=(o.beta1, o.beta2))

    def model_optimizer(self) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LambdaLR]:
        """AdamW over :meth:`parameter_groups` and its schedule: linear warm-up, then cosine decay over
        ``optim.total_steps`` (default: the trainer's max_steps) to ``min_lr_ratio * lr``."""
        o = self.optim_config
        opt = self.adamw(self.parameter_groups(), o.lr)
        total = o.total_steps  # the trainer is only asked when the recipe does not say
        if not total:
            max_steps = self.trainer.max_steps
            total = max_steps if max_steps and max_steps > 0 else DEFAULT_TOTAL_STEPS
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: warmup_cosine(s, o.warmup_steps, total, o.min_lr_ratio))
        return opt, sched

    def configure_optimizers(self):
        opt, sched = self.model_optimizer()
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    def configure_gradient_clipping(self, optimizer, gradient_clip_val=None, gradient_clip_algorithm=None):
        """Clip the gradient norm to the trainer's gradient_clip_val, else ``optim.grad_clip`` (None / 0: no clip)."""
        if gradient_clip_algorithm not in (None, "norm"):
            raise ValueError(f"gradient_clip_algorithm {gradient_clip_algorithm!r}: tokgen clips by norm only ('norm')")
        self.clip_grad_norm(optimizer, gradient_clip_val or self.optim_config.grad_clip)

    def clip_grad_norm(self, optimizer, clip: float | None) -> None:
        """Clip the gradient norm of ``optimizer``'s parameters to ``clip`` (None / 0: no clip), for automatic and
        manual optimization alike.

        FSDP computes the global norm over its shards. Without a loss scaler (fp32, bf16-mixed) the gradients are
        true gradients and are clipped directly: Lightning's mixed-precision plugin refuses to clip for any optimizer
        that can unscale inside its step (fused AdamW), which only matters when a GradScaler is in use (fp16)."""
        if not clip:
            return
        if isinstance(self.trainer.strategy, FSDPStrategy):  # sharded parameters: FSDP computes the global norm
            self.trainer.strategy.model.clip_grad_norm_(clip)
        elif getattr(self.trainer.precision_plugin, "scaler", None) is None:
            params = [p for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
            torch.nn.utils.clip_grad_norm_(params, clip)
        else:  # fp16: Lightning unscales the gradients first
            self.clip_gradients(optimizer, gradient_clip_val=clip, gradient_clip_algorithm="norm")

    # ------------------------------------------------------------------ EMA
    def optimizer_step(self, *args, **kwargs) -> None:
        super().optimizer_step(*args, **kwargs)
        self.after_model_step()

    def after_model_step(self) -> None:
        """The one EMA hook: count the model's optimizer step and move the EMA copy towards the model."""
        self.optimizer_steps += 1
        if self.ema_model is not None:
            ema_update(self.ema_model, self.trained_model, self.ema_decay, self.optimizer_steps)

    # ------------------------------------------------------------------ validation and test
    def eval_step(self, batch, batch_idx, stage: str) -> None:
        """Log the metrics of one batch under ``stage`` ("val" or "test"): validation and test score alike."""
        raise NotImplementedError

    def validation_step(self, batch, batch_idx):
        self.eval_step(batch, batch_idx, "val")

    def test_step(self, batch, batch_idx):
        self.eval_step(batch, batch_idx, "test")

    def validation_grid(self) -> tuple[torch.Tensor, int] | None:
        """(images (N, C, H, W) in [0, 1], images per row) to save after a validation, or None (no grid)."""
        return None

    def on_validation_epoch_end(self) -> None:
        if self.trainer.sanity_checking or not self.trainer.is_global_zero:
            return
        grid = self.validation_grid()
        if grid is not None:
            save_val_grid(self, *grid, name=self.grid_name)

    # ------------------------------------------------------------------ checkpoint metadata
    def checkpoint_metadata(self) -> dict:
        """The module's own entries of ``checkpoint["tokgen"]`` (besides kind, config, optim_config, step counter)."""
        return {}

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        cls = self.model_class
        checkpoint["tokgen"] = {
            "kind": cls.kind,
            cls.config_key: self.trained_model.config.to_dict(),
            "optim_config": asdict(self.optim_config),
            self.steps_key: self.optimizer_steps,
            **self.checkpoint_metadata(),
        }

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        meta = checkpoint.get("tokgen") or {}
        # checkpoints that predate the counter (video) stepped the EMA at the trainer's global step
        self.optimizer_steps = int(meta.get(self.steps_key, checkpoint.get("global_step", 0)))
