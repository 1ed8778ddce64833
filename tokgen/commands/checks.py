"""Checks every command runs on its arguments before any computation starts: output paths and devices.

Each raises a ValueError that names the flag, the value and what would be accepted, so ``tokgen <cmd>``
prints one line and exits with code 2 instead of failing after minutes of work (or leaving half an output).
"""
from __future__ import annotations

import argparse
import os
import tempfile
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # torch is imported by check_device itself: commands that take no device start without it
    import torch


def _nearest_existing(path: str) -> str:
    """The closest ancestor of ``path`` (or ``path`` itself) that exists."""
    current = os.path.abspath(path)
    while not os.path.lexists(current):
        parent = os.path.dirname(current)
        if parent == current:
            break
        current = parent
    return current


def check_output_path(flag: str, path: str, folder: bool = False, suffixes: tuple[str, ...] = ()) -> str:
    """Return ``path`` if the command can write it: a file (or, with ``folder``, a folder) that either exists with
    the right kind and is writable, or can be created because its nearest existing ancestor is a writable folder.
    ``suffixes``: accepted file extensions (case-insensitive). Nothing is left behind: writability is probed with
    a temporary file that is removed at once."""
    what = "a folder path" if folder else "a file path" + (f" ending in {', '.join(suffixes)}" if suffixes else "")
    if not isinstance(path, str) or not path.strip():
        raise ValueError(f"{flag} {path!r} is empty; accepted: {what}")
    if suffixes and not path.lower().endswith(tuple(s.lower() for s in suffixes)):
        raise ValueError(f"{flag} {path}: unsupported extension; accepted: {what}")
    if os.path.exists(path):
        if folder and not os.path.isdir(path):
            raise ValueError(f"{flag} {path} exists and is a file; accepted: {what} (a folder or a new name)")
        if not folder and os.path.isdir(path):
            raise ValueError(f"{flag} {path} is a folder; accepted: {what}")
    anchor = _nearest_existing(path)
    if anchor != os.path.abspath(path) and not os.path.isdir(anchor):
        raise ValueError(f"{flag} {path}: {anchor} is a file, so nothing can be created under it; accepted: {what} "
                         f"whose parent folders exist or can be created")
    probe_dir = anchor if os.path.isdir(anchor) else os.path.dirname(anchor)
    try:
        fd, probe = tempfile.mkstemp(prefix=".tokgen_write_check_", dir=probe_dir)
    except OSError as err:
        raise ValueError(f"{flag} {path}: {probe_dir} is not writable ({err.strerror}); accepted: {what} in a "
                         f"folder this user can write") from None
    os.close(fd)
    os.remove(probe)
    if os.path.isfile(path) and not os.access(path, os.W_OK):
        raise ValueError(f"{flag} {path} exists and is read-only; accepted: {what} this user can write")
    return path


def check_device(flag: str, text: str) -> torch.device:
    """``text`` (``cpu``, ``cuda``, ``cuda:N``) -> torch.device, refusing a GPU that this machine does not have."""
    import torch

    try:
        device = torch.device(text)
    except (RuntimeError, TypeError):
        raise ValueError(f"{flag} {text!r} is not a device; accepted: cpu, cuda, cuda:N") from None
    if device.type not in ("cpu", "cuda"):
        raise ValueError(f"{flag} {text!r} is not supported; accepted: cpu, cuda, cuda:N")
    if device.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise ValueError(f"{flag} {text}: no CUDA GPU is available on this machine; accepted: cpu")
        if device.index is not None and device.index >= count:
            raise ValueError(f"{flag} {text}: this machine has {count} GPU(s); accepted: cpu or cuda:0..cuda:{count - 1}")
    return device


class CommandParser(argparse.ArgumentParser):
    """argparse parser of a tokgen command whose errors (unknown option, invalid choice, missing argument) raise a
    ValueError, so ``tokgen <cmd>`` prints them as its one error line (exit code 2) instead of the usage text."""

    def error(self, message: str):
        raise ValueError(f"{message} (all options: {self.prog} --help)")
