"""The Lightning side of ``tokgen fit|validate|test|predict``: :class:`TokgenCLI` (LightningCLI with tokgen's
checkpointing and short config errors) and :func:`lightning_main`. Kept apart from :mod:`tokgen.cli` so that
tokgen's own commands start without importing Lightning; ``tokgen.cli`` still exposes these names."""
from __future__ import annotations

import os
import sys
from argparse import ArgumentError

import torch
from lightning.fabric.plugins import TorchCheckpointIO
from lightning.pytorch import LightningDataModule, LightningModule
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.cli import LightningCLI
from lightning.pytorch.loggers import CSVLogger

from .cli import LIGHTNING_COMMANDS, ConfigError, short_config_error
from .resume import (AtomicCheckpointIO, TrainingRng, check_checkpoint_fits, prepare_checkpoints,
                     remove_stale_temp_files)


class StepCheckpoint(ModelCheckpoint):
    """ModelCheckpoint that also writes the final state when training ends between two scheduled saves (a
    ``max_time`` limit, or ``max_steps`` that is not a multiple of ``every_n_train_steps``): ``last.ckpt`` and the
    step file then always hold the last optimizer step, so no trained step is lost. Whether the scheduled save
    already wrote the final step is read from the public ``best_model_path`` (with no ``monitor`` it is the newest
    step file). Checkpoints are written through :class:`tokgen.resume.AtomicCheckpointIO` (unless another
    CheckpointIO is configured), and at the start of a fit the temporary files of saves a kill interrupted are
    removed."""

    def setup(self, trainer, pl_module, stage: str) -> None:
        super().setup(trainer, pl_module, stage)
        if type(trainer.strategy.checkpoint_io) is TorchCheckpointIO:  # the default: make its local saves atomic
            trainer.strategy.checkpoint_io = AtomicCheckpointIO()
        if stage == "fit" and trainer.is_global_zero and self.dirpath and os.path.isdir(self.dirpath):
            remove_stale_temp_files(self.dirpath)

    def on_train_end(self, trainer, pl_module) -> None:
        super().on_train_end(trainer, pl_module)
        step = trainer.global_step
        if step == 0 or self.dirpath is None or trainer.fast_dev_run:
            return
        metrics = {**trainer.callback_metrics, "step": torch.tensor(step), "epoch": torch.tensor(trainer.current_epoch)}
        path = self.format_checkpoint_name(metrics)
        if self.best_model_path == path:
            return
        self.best_model_path = path
        trainer.save_checkpoint(path, self.save_weights_only)
        if self.save_last:
            self.last_model_path = self.format_checkpoint_name(metrics, self.CHECKPOINT_NAME_LAST)
            trainer.save_checkpoint(self.last_model_path, self.save_weights_only)


class TokgenCLI(LightningCLI):
    """LightningCLI with a checkpoint callback whose folder is fixed under default_root_dir, so
    ``--ckpt_path last`` always finds ``last.ckpt`` of the previous (killed) run; atomic checkpoint writes, the
    training random streams in every checkpoint, and ``--ckpt_path`` checked before anything trains."""

    def parse_arguments(self, parser, args) -> None:
        """Parse as LightningCLI does; with ``exit_on_error=False`` parsers a config error becomes one short
        :class:`ConfigError` (key, value, accepted) instead of jsonargparse's usage text and nested report. (The
        keys offered for a mistyped option come from LightningCLI's ``_subcommand_parsers``, private in 2.x; without
        it there are just no suggestions.)"""
        try:
            super().parse_arguments(parser, args)
        except ArgumentError as err:
            command = next((a for a in (args or sys.argv[1:]) if a in LIGHTNING_COMMANDS), None)
            sub = getattr(self, "_subcommand_parsers", {}).get(command, parser)
            keys = [a.dest for a in getattr(sub, "_actions", [])]
            raise ConfigError(short_config_error(str(err), keys)) from None
        prepare_checkpoints(self.config)  # before LightningCLI reads --ckpt_path itself

    def instantiate_trainer(self, **kwargs):
        """Build the default logger (trainer.logger unset or true) here as the CSVLogger under default_root_dir that
        Lightning would pick, so its note that tensorboard is not installed is not printed on every run."""
        config = self.config_init[self.subcommand] if self.subcommand else self.config_init
        trainer = config.get("trainer") or {}
        if "logger" not in kwargs and trainer.get("logger") in (None, True) and not trainer.get("barebones"):
            kwargs["logger"] = CSVLogger(save_dir=trainer.get("default_root_dir") or os.getcwd())
        return super().instantiate_trainer(**kwargs)

    def add_arguments_to_parser(self, parser) -> None:
        parser.add_lightning_class_args(StepCheckpoint, "checkpoint")
        parser.set_defaults({
            "checkpoint.save_last": True,
            "checkpoint.filename": "step={step:07d}",
            "checkpoint.auto_insert_metric_name": False,
            "checkpoint.save_top_k": -1,
            "checkpoint.enable_version_counter": False,  # a resumed run rewrites a step file, never step=N-v1
        })

    def before_fit(self) -> None:
        """Refuse a ``--ckpt_path`` whose weights do not fit the recipe's model, before anything runs."""
        check_checkpoint_fits(self.config_init[self.subcommand].ckpt_path, self.model, self.subcommand == "fit")

    before_validate = before_test = before_predict = before_fit


def lightning_main(args: list[str] | None = None, run: bool = True, exit_on_error: bool = True) -> TokgenCLI:
    """Run LightningCLI on ``args`` (None: ``sys.argv[1:]``); with ``run=False`` only build model, data and trainer
    (no subcommand). ``exit_on_error=False``: a config error raises :class:`ConfigError` (one short message)
    instead of printing the usage text and exiting."""
    if not run and args and args[0] in LIGHTNING_COMMANDS:
        args = args[1:]
    no_exit = {"exit_on_error": False}
    return TokgenCLI(
        LightningModule,
        LightningDataModule,
        subclass_mode_model=True,
        subclass_mode_data=True,
        seed_everything_default=0,
        save_config_kwargs={"overwrite": True},
        trainer_defaults={"callbacks": [TrainingRng()]},
        parser_kwargs=None if exit_on_error else {**no_exit, **{c: dict(no_exit) for c in LIGHTNING_COMMANDS}},
        args=args,
        run=run,
    )
