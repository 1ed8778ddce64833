"""LightningModule that trains the GPT generator on token shards: next-code cross-entropy on every position
(one model for every prefix length k), label dropout for classifier-free guidance, optional EOS for
variable-length (halting) sequences, optional EMA weights, warm-up + cosine LR, and optional sample grids.

The identity of the tokenizer that wrote the shards (codebook size, K, config, checkpoint path, weights
fingerprint) is stored in ``checkpoint["tokgen"]["tokenizer"]`` so sampling can refuse a mismatched pair.
"""
from __future__ import annotations

import os

import torch
from lightning.pytorch.strategies import FSDPStrategy

from ..generator import GPT, GPTConfig, generate
from ..metrics import to_unit
from .base import TrainingModule
from .speed import SpeedConfig
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


class GeneratorModule(TrainingModule):
    model_class = GPT
    grid_name = "gen"

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
        self.sample_grid = sample_grid
        self.sample_per_class = sample_per_class
        self.sample_cfg = sample_cfg
        self.tokenizer_ckpt = tokenizer_ckpt
        self.build_model(self.generator_config, ema_decay, speed or SpeedConfig())  # self.generator, ema_generator
        self.tokenizer_info: dict | None = None  # identity of the tokenizer that wrote the training shards

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

    def on_train_batch_end(self, outputs, batch, batch_idx) -> None:
        self.log("train/lr", self.lr_schedulers().get_last_lr()[0], prog_bar=False)

    def eval_step(self, batch, batch_idx, stage: str) -> None:
        loss, acc = self.loss(self.eval_model(), batch)
        n = batch["codes"].shape[0]
        self.log(f"{stage}/loss", loss, prog_bar=stage == "val", sync_dist=True, batch_size=n)
        self.log(f"{stage}/acc", acc, sync_dist=True, batch_size=n)

    # ------------------------------------------------------------------ sample grid
    def validation_grid(self):
        """``sample_per_class`` samples per class (rows = classes 0..9) at full budget, decoded by the tokenizer
        checkpoint; None when off, under FSDP, or without a tokenizer at hand."""
        if not self.sample_grid:
            return None
        if isinstance(self.trainer.strategy, FSDPStrategy):
            return None  # sharded blocks need every rank in each forward: sample after training with `tokgen sample`
        path = self.tokenizer_ckpt or (self.tokenizer_info or {}).get("checkpoint")
        if not path or not os.path.isfile(path):
            return None  # optional: no tokenizer at hand, no grid
        from ..tokenizers import load_tokenizer

        tokenizer = load_tokenizer(path).to(self.device)  # any kind, flow decoders included
        model = self.eval_model()
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
        return to_unit(tokenizer.decode(codes)), self.sample_per_class

    # ------------------------------------------------------------------ checkpoint metadata
    def checkpoint_metadata(self) -> dict:
        return {"tokenizer": self.tokenizer_info}

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        super().on_load_checkpoint(checkpoint)
        meta = checkpoint.get("tokgen", {})
        saved, current = meta.get("tokenizer"), self.tokenizer_info  # current: from the shards (setup runs first)
        old, new = (saved or {}).get("fingerprint"), (current or {}).get("fingerprint")
        if old and new and old != new:
            raise ValueError(
                f"this generator checkpoint was trained on codes of tokenizer weights {old} "
                f"({(saved or {}).get('checkpoint')}), but the token shards come from {new} "
                f"({(current or {}).get('checkpoint')}); resume with the shards it was trained on or start a new run"
            )
        self.tokenizer_info = current or saved
