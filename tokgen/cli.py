"""Command line: ``tokgen fit|validate|test --config recipe.yaml`` (LightningCLI) and tokgen's own tools.

Every run writes to ``trainer.default_root_dir`` (set in each recipe):
  checkpoints/last.ckpt and checkpoints/step=*.ckpt   resumable with ``--ckpt_path last``
  lightning_logs/version_*/metrics.csv               logged metrics (CSV)
  samples/val_latest.png                              reconstructions, rows = original, k = 1, 2, 4, ..., K

The entry point is a light dispatcher: it reads the command name first and imports only that command's module
(Lightning only for fit / validate / test / predict, from :mod:`tokgen.lightning_cli`), so ``tokgen --help`` and
the commands that do not train start without Lightning's import time.
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


def user_errors() -> tuple[type[Exception], ...]:
    """The exception types :func:`main` reports as one short user error: FileNotFoundError, ValueError and, once
    Lightning is loaded, its MisconfigurationException (a command that never imported Lightning cannot raise it,
    so the check does not import it)."""
    lightning = sys.modules.get("lightning.fabric.utilities.exceptions")
    return (FileNotFoundError, ValueError) + ((lightning.MisconfigurationException,) if lightning else ())


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
            from .lightning_cli import lightning_main

            lightning_main(None if from_argv else argv, exit_on_error=False)
    except Exception as err:
        if not isinstance(err, user_errors()) or os.environ.get("TOKGEN_DEBUG"):
            raise
        message = str(err)
        if "\nOriginal Traceback" in message:  # raised in a DataLoader worker: torch prepends the worker's traceback
            last = message.rstrip().splitlines()[-1]
            message = last.split(": ", 1)[1] if last.startswith(f"{type(err).__name__}: ") else last
        if command in LIGHTNING_COMMANDS and not isinstance(err, ConfigError) and "\n" in message:
            message = short_config_error(message)  # raised while building the classes: same short form
        fail(f"tokgen {command}: error: {message}")


LAZY = ("StepCheckpoint", "TokgenCLI", "lightning_main")  # defined in tokgen.lightning_cli (imports Lightning)


def __getattr__(name: str):
    """``tokgen.cli.lightning_main`` (and the other :data:`LAZY` names) import :mod:`tokgen.lightning_cli` on
    first use, so importing this module stays free of Lightning."""
    if name in LAZY:
        return getattr(importlib.import_module("tokgen.lightning_cli"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


if __name__ == "__main__":  # ``python -m tokgen.cli``: run the importable module, so that tokgen.lightning_cli
    importlib.import_module("tokgen.cli").main()  # raises the same ConfigError class this main() catches
