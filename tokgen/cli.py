"""Command line: ``tokgen fit|validate|test --config recipe.yaml`` (LightningCLI) and tokgen's own tools.

Every run writes to ``trainer.default_root_dir`` (set in each recipe):
  checkpoints/last.ckpt and checkpoints/step=*.ckpt   resumable with ``--ckpt_path last``
  lightning_logs/version_*/metrics.csv               logged metrics (CSV)
  samples/val_latest.png                              reconstructions, rows = original, k = 1, 2, 4, ..., K
"""
from __future__ import annotations

import importlib
import os
import sys

from lightning.pytorch import LightningDataModule, LightningModule
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.cli import LightningCLI

LIGHTNING_COMMANDS = ("fit", "validate", "test", "predict")


class StepCheckpoint(ModelCheckpoint):
    """ModelCheckpoint that also writes the final state when training ends between two scheduled saves (a
    ``max_time`` limit, or ``max_steps`` that is not a multiple of ``every_n_train_steps``): ``last.ckpt`` and the
    step file then always hold the last optimizer step, so no trained step is lost. (Reads ModelCheckpoint's
    ``_last_global_step_saved``, private in Lightning 2.x, to avoid writing the same step twice.)"""

    def on_train_end(self, trainer, pl_module) -> None:
        super().on_train_end(trainer, pl_module)
        step = trainer.global_step
        if step == 0 or step == self._last_global_step_saved or self.dirpath is None:
            return
        trainer.save_checkpoint(os.path.join(self.dirpath, f"step={step:07d}.ckpt"))
        if self.save_last:
            trainer.save_checkpoint(os.path.join(self.dirpath, "last.ckpt"))
        self._last_global_step_saved = step


class TokgenCLI(LightningCLI):
    """LightningCLI with a checkpoint callback whose folder is fixed under default_root_dir, so
    ``--ckpt_path last`` always finds ``last.ckpt`` of the previous (killed) run."""

    def add_arguments_to_parser(self, parser) -> None:
        parser.add_lightning_class_args(StepCheckpoint, "checkpoint")
        parser.set_defaults({
            "checkpoint.save_last": True,
            "checkpoint.filename": "step={step:07d}",
            "checkpoint.auto_insert_metric_name": False,
            "checkpoint.save_top_k": -1,
        })

    def before_instantiate_classes(self) -> None:
        config = self.config[self.subcommand] if self.subcommand else self.config
        root = config.trainer.default_root_dir or os.getcwd()
        if config.checkpoint.dirpath is None:
            config.checkpoint.dirpath = os.path.join(root, "checkpoints")


def lightning_main(args: list[str] | None = None, run: bool = True) -> TokgenCLI:
    """Run LightningCLI on ``args``; with ``run=False`` only build model, data and trainer (no subcommand)."""
    if not run and args and args[0] in LIGHTNING_COMMANDS:
        args = args[1:]
    return TokgenCLI(
        LightningModule,
        LightningDataModule,
        subclass_mode_model=True,
        subclass_mode_data=True,
        seed_everything_default=0,
        save_config_kwargs={"overwrite": True},
        args=args,
        run=run,
    )


# tokgen's own commands: name -> ("module:function", one-line help). Each function takes argv (list[str]).
COMMANDS: dict[str, tuple[str, str]] = {
    "tokenize": ("tokgen.commands.tokenize:main", "encode a dataset split into token shards for generator training"),
    "sample": ("tokgen.commands.sample:main",
               "sample images (video tokenizers: clips) from a generator + tokenizer at chosen token budgets"),
    "eval": ("tokgen.commands.eval:main", "score a tokenizer per token budget (rFID, PSNR, SSIM, LPIPS) or samples (gFID)"),
    "refit-halting": ("tokgen.commands.refit_halting:main", "refit a halting tokenizer's head to the search minimum (codes unchanged)"),
    "train-features": ("tokgen.commands.train_features:main", "train a small classifier, save it as a feature extractor (safetensors)"),
    "video-tokenize": ("tokgen.commands.video_tokenize:main", "extract a video's trajectories (count + overlay video), optionally its tokens"),
    "video-eval": ("tokgen.commands.video_tokenize:eval_main", "video PSNR / SSIM of a video tokenizer per number of tokens"),
    "prepare-data": ("tokgen.commands.prepare_data:main", "write an image folder or token shards as streaming chunks (litdata)"),
}


def usage() -> str:
    lines = ["usage: tokgen <command> [options]", "", "commands:",
             "  fit | validate | test     train or score a model from a YAML recipe (LightningCLI), e.g.",
             "                            tokgen fit --config configs/tokenizer/shapes_tiny.yaml"]
    lines += [f"  {name:<25} {text}" for name, (_, text) in sorted(COMMANDS.items())]
    lines += ["  <command> --help          options of one command", ""]
    return "\n".join(lines)


class UsageExit(int):
    """Exit status 2 (a user error) whose ``str()`` is the error line printed on stderr: the interpreter exits
    with 2, and a caller that catches SystemExit in-process (tests, notebooks) reads the message from ``code``."""

    def __new__(cls, message: str):
        status = super().__new__(cls, 2)
        status.message = message
        return status

    def __str__(self) -> str:
        return self.message


def fail(message: str):
    """Print ``message`` on stderr and exit with status 2 (:class:`UsageExit`)."""
    print(message, file=sys.stderr)
    sys.stderr.flush()
    raise SystemExit(UsageExit(message))


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(usage())
        return
    command = argv[0]
    accepted = [*LIGHTNING_COMMANDS, *sorted(COMMANDS)]
    if command not in accepted:
        print(usage(), file=sys.stderr)
        sys.exit(f"tokgen: error: unknown command {command!r}; accepted: {', '.join(accepted)}")
    try:
        if command in COMMANDS:
            module, func = COMMANDS[command][0].split(":")
            getattr(importlib.import_module(module), func)(argv[1:])
        else:
            lightning_main(argv)
    except (FileNotFoundError, ValueError) as err:
        if os.environ.get("TOKGEN_DEBUG"):
            raise
        fail(f"tokgen {command}: error: {err}")


if __name__ == "__main__":
    main()
