"""Command line: ``tokgen fit|validate|test --config recipe.yaml`` (LightningCLI) and tokgen's own tools.

Every run writes to ``trainer.default_root_dir`` (set in each recipe):
  checkpoints/last.ckpt and checkpoints/step=*.ckpt   resumable with ``--ckpt_path last``
  lightning_logs/version_*/metrics.csv               logged metrics (CSV)
  samples/val_latest.png                              reconstructions, rows = original, k = 1, 2, 4, ..., K
"""
from __future__ import annotations

import ast
import difflib
import importlib
import inspect
import logging
import os
import re
import sys
import warnings
from argparse import ArgumentError

import torch
from lightning.fabric.plugins import TorchCheckpointIO
from lightning.fabric.utilities.exceptions import MisconfigurationException
from lightning.pytorch import LightningDataModule, LightningModule
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.cli import LightningCLI
from lightning.pytorch.loggers import CSVLogger

from .resume import (AtomicCheckpointIO, TrainingRng, check_checkpoint_fits, prepare_checkpoints,
                     remove_stale_temp_files)

LIGHTNING_COMMANDS = ("fit", "validate", "test", "predict")

# Upstream output a tokgen user cannot act on, silenced by exact message (and category) and nothing else:
# - Lightning's CombinedLoader flattens the dataloaders with torch's LeafSpec, which recent torch deprecates;
# - Lightning advertises its cloud logger on every fit whatever logger is configured.
UPSTREAM_WARNINGS = ((FutureWarning, r"`isinstance\(treespec, LeafSpec\)` is deprecated"),)
LIGHTNING_ADVERT = "💡 Tip: For seamless cloud logging"
LIGHTNING_INFO_LOGGERS = ("lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.rank_zero")


class LightningAdvertFilter(logging.Filter):
    """Drops Lightning's cloud-logger advert (:data:`LIGHTNING_ADVERT`) from its rank-zero info log."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(LIGHTNING_ADVERT)


def silence_upstream_noise() -> None:
    """Install the narrow filters above (idempotent): the console then shows tokgen's and Lightning's real
    messages only."""
    for category, message in UPSTREAM_WARNINGS:
        warnings.filterwarnings("ignore", message=message, category=category)
    for name in LIGHTNING_INFO_LOGGERS:
        logger = logging.getLogger(name)
        if not any(isinstance(f, LightningAdvertFilter) for f in logger.filters):
            logger.addFilter(LightningAdvertFilter())


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


# ---------------------------------------------------------------------------------------------------- config errors
class ConfigError(ValueError):
    """A recipe / command-line config error of ``tokgen fit|validate|test``, shortened to key, value and accepted."""


BOILERPLATE = ("Does not validate against any of the Union subtypes", "Subtypes:", "Errors:", "Given value type:",
               "Given value:", "Expected a <class 'NoneType'>", "Problem with given class_path")


def short_config_error(message: str, keys: list[str] = ()) -> str:
    """jsonargparse's nested error text -> at most three lines: the offending key (path), what is wrong with its
    value, and what is accepted (the options of the class it belongs to, or the closest known keys)."""
    lines = message.splitlines()
    path, classes = [], []
    for line in lines:
        for key in re.findall(r'Parser key "([^"]+)"', line):
            path += ["init_args", key] if path and path[-1] != "init_args" else [key]
        classes += re.findall(r"Problem with given class_path '([^']+)'", line)
    problem = message.strip()
    for line in lines:
        text = re.sub(r'^(- )?(Parser key "[^"]+":\s*)?', "", line.strip())
        if text and not text.startswith(BOILERPLATE):
            problem = text
            break
    if not path:  # an error raised while building the classes: name the section from the Union it failed in
        section = re.search(r"Subtypes: \[<class '[\w.]*\.(LightningModule|LightningDataModule)'>", message)
        path = [{"LightningModule": "model", "LightningDataModule": "data"}[section.group(1)]] if section else []
    accepted = ""
    unknown = re.match(r"(?:Option|Key) '([^']+)' is not accepted", problem)
    unrecognized = re.match(r"unrecognized arguments: (\S+)", problem)
    if unknown and classes:
        options = class_options(classes[-1])
        value = given_value(lines, unknown.group(1))
        path += ["init_args", unknown.group(1)] if path in (["model"], ["data"]) else [unknown.group(1)]
        problem = f"unknown option {unknown.group(1)!r}" + (f" (value {value!r})" if value is not None else "")
        close = difflib.get_close_matches(unknown.group(1), options, 3)
        accepted = (f"did you mean {', '.join(close)}? " if close else "") + f"accepted: {', '.join(options)}"
    elif unrecognized:
        key, _, value = unrecognized.group(1).lstrip("-").partition("=")
        path, problem = [key], f"unknown option (value {value!r})" if value else "unknown option"
        close = difflib.get_close_matches(key, keys, 3, 0.75)
        accepted = f"did you mean {', '.join(close)}?" if close else ""
    elif classes and "has no attribute" in problem:
        module = classes[-1].rpartition(".")[0]
        problem = f"class_path {classes[-1]!r} cannot be imported ({problem})"
        accepted = f"accepted: an importable class, e.g. {module}.<Class>"
    where = ".".join(path)
    lines = [f"{where}: {problem}" if where else problem]
    if accepted:
        lines.append(accepted)
    lines.append("(all options: --help)")
    return "\n".join(lines)


def class_options(class_path: str) -> list[str]:
    """The init parameters of ``class_path`` (the accepted keys of its init_args), [] when it cannot be imported."""
    module, _, name = class_path.rpartition(".")
    try:
        cls = getattr(importlib.import_module(module), name)
        return [n for n in inspect.signature(cls).parameters if n not in ("self", "args", "kwargs")]
    except (ImportError, AttributeError, ValueError, TypeError):
        return []


def given_value(lines: list[str], key: str):
    """The value given for ``key`` in the first ``Given value: {...}`` line of a jsonargparse message, or None."""
    for line in lines:
        text = line.strip()
        if text.startswith("Given value: {"):
            try:
                given = ast.literal_eval(text[len("Given value: "):])
            except (ValueError, SyntaxError):
                return None
            if isinstance(given, dict) and isinstance(given.get("init_args"), dict):
                given = given["init_args"]
            return given.get(key) if isinstance(given, dict) else None
    return None


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
    """``tokgen <command> ...``. A user error (a bad value, a missing file, a config error) prints one short
    ``tokgen <command>: error: ...`` message, no traceback, and exits with status 2 (TOKGEN_DEBUG=1 re-raises)."""
    from_argv = argv is None
    argv = list(sys.argv[1:] if argv is None else argv)
    silence_upstream_noise()
    if not argv or argv[0] in ("-h", "--help"):
        print(usage())
        return
    command = argv[0]
    accepted = [*LIGHTNING_COMMANDS, *sorted(COMMANDS)]
    if command not in accepted:
        close = difflib.get_close_matches(command, accepted, 1)
        fail(f"tokgen: error: unknown command {command!r}" + (f" (did you mean {close[0]!r}?)" if close else "")
             + f"; accepted: {', '.join(accepted)}")
    try:
        if command in COMMANDS:
            module, func = COMMANDS[command][0].split(":")
            getattr(importlib.import_module(module), func)(argv[1:])
        else:  # None: LightningCLI reads sys.argv itself (passing both makes it warn)
            lightning_main(None if from_argv else argv, exit_on_error=False)
    except (FileNotFoundError, ValueError, MisconfigurationException) as err:
        if os.environ.get("TOKGEN_DEBUG"):
            raise
        message = str(err)
        if "\nOriginal Traceback" in message:  # raised in a DataLoader worker: torch prepends the worker's traceback
            last = message.rstrip().splitlines()[-1]
            message = last.split(": ", 1)[1] if last.startswith(f"{type(err).__name__}: ") else last
        if command in LIGHTNING_COMMANDS and not isinstance(err, ConfigError) and "\n" in message:
            message = short_config_error(message)  # raised while building the classes: same short form
        fail(f"tokgen {command}: error: {message}")


if __name__ == "__main__":
    main()
