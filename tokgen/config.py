"""Shared behaviour of tokgen's model config dataclasses: strict dict loading and plain-dict export."""
from __future__ import annotations

from dataclasses import asdict, fields


class DictConfig:
    """Mixin for config dataclasses saved inside checkpoints and config.json files."""

    config_name = "config"  # used in error messages, e.g. "tokenizer", "generator"

    @classmethod
    def from_dict(cls, values: dict):
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown {cls.config_name} config keys {unknown}; accepted keys: {sorted(known)}")
        return cls(**values)

    def to_dict(self) -> dict:
        return asdict(self)
