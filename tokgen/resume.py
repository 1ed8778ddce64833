"""Exact, crash-safe training resume for ``tokgen fit``.

- :class:`AtomicCheckpointIO` writes every checkpoint to a temporary file next to its target, fsyncs it and renames
  it over the target, so a kill at any moment leaves either the previous or the new file, never a partial one.
- :class:`TrainingRng` puts the random streams the training step draws from (torch CPU and CUDA, Python ``random``,
  NumPy's global generator) into every checkpoint and restores them when a resumed run starts training; validation
  runs on a copy of the streams, so how often (and whether) it ran does not change the training randomness.
- :func:`resolve_ckpt_path` turns ``--ckpt_path last`` into a file, falling back to the newest intact step
  checkpoint when ``last.ckpt`` is damaged; :func:`check_checkpoint_fits` refuses a checkpoint whose weights do
  not match the model before any training starts.

With the mid-epoch data position of :class:`tokgen.data.base.ResumableLoader`, a run killed with SIGKILL and resumed
with ``--ckpt_path last`` ends bit-identical to an uninterrupted one (same seed, same device and thread count).
"""
from __future__ import annotations

import glob
import os
import random
import secrets
import sys

import numpy as np
import torch
from lightning.fabric.plugins import TorchCheckpointIO
from lightning.pytorch import Callback

from .checkpoint import load_checkpoint

TEMP_SUFFIX = ".tmp"


def _is_local(path) -> bool:
    return "://" not in str(path)


def _fsync_dir(directory: str) -> None:
    """Make a rename in ``directory`` durable (not supported on every platform / filesystem)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


class AtomicCheckpointIO(TorchCheckpointIO):
    """TorchCheckpointIO whose local saves are atomic: ``torch.save`` into ``.<name>.<pid>.<hex>.tmp`` in the
    target's own directory (so the rename never crosses a filesystem), flush + fsync, ``os.replace`` onto the
    target, fsync the directory. On any error the temporary file is removed and the previous target is untouched;
    a temporary file orphaned by a kill is removed by :func:`remove_stale_temp_files` at the next start."""

    def save_checkpoint(self, checkpoint: dict, path, storage_options=None) -> None:
        if storage_options is not None or not _is_local(path):
            return super().save_checkpoint(checkpoint, path, storage_options)
        path = os.path.abspath(os.fspath(path))
        directory = os.path.dirname(path)
        os.makedirs(directory, exist_ok=True)
        tmp = os.path.join(directory, f".{os.path.basename(path)}.{os.getpid()}.{secrets.token_hex(4)}{TEMP_SUFFIX}")
        try:
            with open(tmp, "xb") as f:
                torch.save(checkpoint, f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            try:
                os.remove(tmp)
            except FileNotFoundError:
                pass
            raise
        _fsync_dir(directory)


def remove_stale_temp_files(directory: str) -> list[str]:
    """Remove the temporary files :class:`AtomicCheckpointIO` left in ``directory`` when its process was killed
    mid-save (those whose writer process no longer runs); returns the removed paths."""
    removed = []
    for tmp in glob.glob(os.path.join(glob.escape(directory), f".*.ckpt.*{TEMP_SUFFIX}")):
        parts = os.path.basename(tmp).split(".")
        pid = parts[-3] if len(parts) >= 5 else ""
        if not pid.isdigit() or _process_alive(int(pid)):
            continue
        try:
            os.remove(tmp)
            removed.append(tmp)
        except FileNotFoundError:
            pass
    return removed


def _process_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


# ----------------------------------------------------------------------------------------------------------------
# Random streams
# ----------------------------------------------------------------------------------------------------------------


def rng_state() -> dict:
    """The global random streams as tensors and ints (loadable with ``torch.load(weights_only=True)``)."""
    version, mt, gauss = random.getstate()
    _, keys, pos, has_gauss, cached = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "python": {"version": version, "state": torch.tensor(mt, dtype=torch.int64), "gauss": gauss},
        "numpy": {"keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos), "has_gauss": int(has_gauss),
                  "cached": float(cached)},
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    """Restore streams saved by :func:`rng_state` (CUDA streams only when the same number of GPUs is visible)."""
    torch.set_rng_state(state["torch"])
    py = state["python"]
    random.setstate((py["version"], tuple(int(v) for v in py["state"].tolist()), py["gauss"]))
    npy = state["numpy"]
    np.random.set_state(("MT19937", npy["keys"].numpy().astype(np.uint32), npy["pos"], npy["has_gauss"], npy["cached"]))
    cuda = state.get("cuda")
    if cuda is not None and torch.cuda.is_available() and torch.cuda.device_count() == len(cuda):
        torch.cuda.set_rng_state_all(cuda)


class TrainingRng(Callback):
    """Saves the training random streams in every checkpoint and restores them when a resumed run starts
    training (after Lightning's sanity check, before the first batch is fetched). Validation draws from a copy:
    the streams are put back when it ends, so a run that validated between two checkpoints and one resumed in
    between draw the same training randomness (nested dropout, halting, flow times and noise, augmentation)."""

    def __init__(self) -> None:
        self.loaded: dict | None = None
        self.outside_validation: dict | None = None

    def state_dict(self) -> dict:
        return rng_state()

    def load_state_dict(self, state_dict: dict) -> None:
        self.loaded = state_dict

    def on_train_start(self, trainer, pl_module) -> None:
        if self.loaded is not None:
            set_rng_state(self.loaded)
            self.loaded = None

    def on_validation_start(self, trainer, pl_module) -> None:
        self.outside_validation = rng_state()

    def on_validation_end(self, trainer, pl_module) -> None:
        if self.outside_validation is not None:
            set_rng_state(self.outside_validation)
            self.outside_validation = None


# ----------------------------------------------------------------------------------------------------------------
# Which checkpoint to resume from, and does it fit
# ----------------------------------------------------------------------------------------------------------------


def checkpoint_problem(path: str) -> str | None:
    """None when ``path`` reads as a checkpoint, else a short reason (empty, truncated, not a checkpoint)."""
    try:
        load_checkpoint(path, mmap=True)
    except (FileNotFoundError, ValueError) as err:
        return str(err)
    return None


def check_training_limits(max_steps: int | None, every_n_train_steps: int | None) -> None:
    """Refuse negative step counts in one line (Lightning's own checks end in a traceback)."""
    if max_steps is not None and max_steps < -1:
        raise ValueError(f"trainer.max_steps must be -1 (no step limit) or an int >= 0, got {max_steps}")
    if every_n_train_steps is not None and every_n_train_steps < 0:
        raise ValueError(f"checkpoint.every_n_train_steps must be an int >= 0 (0 = no step checkpoints), "
                         f"got {every_n_train_steps}")


def prepare_checkpoints(config) -> None:
    """On a parsed ``tokgen fit|validate|test|predict`` config (LightningCLI namespace, with or without the
    subcommand level): put the checkpoint folder under ``trainer.default_root_dir`` unless set, check the step
    counts and turn ``ckpt_path`` into the file to load (:func:`resolve_ckpt_path`), before LightningCLI reads
    the checkpoint or builds anything."""
    subcommand = config.get("subcommand")
    section = config[subcommand] if subcommand else config
    root = section.trainer.default_root_dir or os.getcwd()
    if section.checkpoint.dirpath is None:
        section.checkpoint.dirpath = os.path.join(root, "checkpoints")
    check_training_limits(section.trainer.max_steps, section.checkpoint.every_n_train_steps)
    if subcommand:
        section.ckpt_path = resolve_ckpt_path(section.ckpt_path, section.checkpoint.dirpath, subcommand)


def resolve_ckpt_path(ckpt_path: str | None, dirpath: str, command: str = "fit") -> str | None:
    """The checkpoint file a ``tokgen <command> --ckpt_path`` run loads.

    ``last``: ``<dirpath>/last.ckpt`` when it is intact; when it is damaged (an empty or truncated file) or
    missing, the newest intact other ``*.ckpt`` in ``dirpath``, announced in one line on stderr; a ValueError
    naming the folder when there is none (no silent start from step 0). A path: it must exist and read as a
    checkpoint. Other values (None, ``best``, ``hpc``, a registry name) are passed through to Lightning."""
    if ckpt_path is None or ckpt_path in ("best", "hpc") or str(ckpt_path).startswith("registry:"):
        return ckpt_path
    if ckpt_path != "last":
        problem = checkpoint_problem(ckpt_path)
        if problem is not None:
            raise ValueError(f"--ckpt_path {ckpt_path}: {problem}")
        return ckpt_path
    last = os.path.join(dirpath, "last.ckpt")
    problem = checkpoint_problem(last) if os.path.exists(last) else f"{last} does not exist"
    if problem is None:
        return last
    damaged = [problem] if os.path.exists(last) else []
    others = sorted((p for p in glob.glob(os.path.join(glob.escape(dirpath), "*.ckpt"))
                     if not os.path.basename(p).startswith("last")),
                    key=lambda p: (os.path.getmtime(p), p), reverse=True)
    for candidate in others:
        why = checkpoint_problem(candidate)
        if why is None:
            verb = "resuming from" if command == "fit" else "using"
            print(f"tokgen {command}: {problem}; {verb} the newest intact checkpoint {candidate}", file=sys.stderr)
            return candidate
        damaged.append(why)
    if damaged:
        more = f" (and {len(damaged) - 3} more)" if len(damaged) > 3 else ""
        raise ValueError(f"--ckpt_path last: no intact checkpoint in {dirpath}: {'; '.join(damaged[:3])}{more}")
    raise ValueError(f"--ckpt_path last: no checkpoint in {dirpath} (no last.ckpt or step=*.ckpt); "
                     f"run without --ckpt_path to train from scratch, or set trainer.default_root_dir to the "
                     f"folder of the run to resume")


def check_checkpoint_fits(path: str | None, module: torch.nn.Module, resume: bool = False) -> None:
    """Refuse (ValueError naming ``path``) a checkpoint whose ``state_dict`` does not have exactly the keys and
    shapes of ``module`` (only the shapes when the module sets ``strict_loading = False``): another model kind
    (e.g. a generator checkpoint for a tokenizer recipe) or another architecture (e.g. another width); with
    ``resume``, also one saved with weights only (no optimizer state to continue from). Nothing to check for None
    or a value Lightning resolves itself (``best``)."""
    if path is None or not os.path.isfile(path):
        return
    ckpt = load_checkpoint(path, mmap=True)
    saved = ckpt["state_dict"]
    wanted = module.state_dict()
    strict = getattr(module, "strict_loading", True) is not False
    missing = [k for k in wanted if k not in saved] if strict else []
    unexpected = [k for k in saved if k not in wanted] if strict else []
    reshaped = [f"{k} {tuple(saved[k].shape)} vs {tuple(v.shape)}" for k, v in wanted.items()
                if k in saved and tuple(saved[k].shape) != tuple(v.shape)]
    if not (missing or unexpected or reshaped):
        if resume and not ckpt.get("optimizer_states"):
            raise ValueError(f"--ckpt_path {path} holds weights only (saved with save_weights_only, no optimizer "
                             f"state), so training cannot resume from it; expected a checkpoint written by "
                             f"`tokgen fit` (checkpoints/last.ckpt or step=*.ckpt)")
        return
    kind = (ckpt.get("tokgen") or {}).get("kind", "unknown")
    found = []
    if reshaped:
        found.append(f"{len(reshaped)} tensors of another shape (checkpoint vs model), e.g. {', '.join(reshaped[:2])}")
    if missing:
        found.append(f"{len(missing)} missing, e.g. {', '.join(missing[:2])}")
    if unexpected:
        found.append(f"{len(unexpected)} unexpected, e.g. {', '.join(unexpected[:2])}")
    raise ValueError(
        f"--ckpt_path {path} (kind {kind!r}) does not fit the model of this recipe "
        f"({type(module).__module__}.{type(module).__qualname__}): {'; '.join(found)}; expected a checkpoint "
        f"written by `tokgen fit` with the same model class and architecture"
    )
