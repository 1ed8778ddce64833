"""Argument checks shared by the datamodules and the commands: each returns the value or raises a ValueError
naming the argument, the value and what would be accepted. Plain Python (no torch, no Lightning), so a command
can check its options before any heavy import; :mod:`tokgen.data.base` re-exports them."""
from __future__ import annotations

import math
from typing import Any


def describe_range(kind: str, low: float | None = None, high: float | None = None, low_open: bool = False,
                   high_open: bool = False) -> str:
    """What a range check accepts, in words: "a positive int", "a number in [0, 1)", "an int >= 2", ..."""
    article = "an" if kind == "int" else "a"
    if kind == "int" and high is None and not low_open and low in (0, 1):
        return "a non-negative int" if low == 0 else "a positive int"
    if low is None and high is None:
        return f"{article} {kind}"
    if high is None:
        return f"{article} {kind} {'>' if low_open else '>='} {low:g}"
    if low is None:
        return f"{article} {kind} {'<' if high_open else '<='} {high:g}"
    return f"{article} {kind} in {'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"


def check_int(name: str, value: Any, minimum: int | None = None, maximum: int | None = None) -> int:
    """Return ``value`` if it is an int within [minimum, maximum], else raise a ValueError."""
    ok = isinstance(value, int) and not isinstance(value, bool)
    ok = ok and (minimum is None or value >= minimum) and (maximum is None or value <= maximum)
    if not ok:
        raise ValueError(f"{name} must be {describe_range('int', minimum, maximum)}, got {value!r}")
    return value


def check_number(name: str, value: Any, low: float | None = None, high: float | None = None,
                 low_open: bool = False, high_open: bool = False) -> float:
    """Return ``value`` if it is a finite int/float within the interval from ``low`` to ``high`` (open at an end
    when ``low_open`` / ``high_open``), else raise a ValueError naming the interval."""
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    ok = ok and (low is None or (value > low if low_open else value >= low))
    ok = ok and (high is None or (value < high if high_open else value <= high))
    if not ok:
        raise ValueError(f"{name} must be {describe_range('number', low, high, low_open, high_open)}, got {value!r}")
    return value


def check_choice(name: str, value: Any, choices: tuple) -> Any:
    """Return ``value`` if it is one of ``choices``, else raise a ValueError listing them."""
    if value not in choices:
        raise ValueError(f"{name} must be one of {', '.join(map(repr, choices))}, got {value!r}")
    return value
