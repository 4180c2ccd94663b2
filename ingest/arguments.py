"""Value types for `ingest` options (argparse `type=`), shared by the CLI and every source: a value
out of range is a usage error that names the option, before any file is read or written. (Until
these, `--size 0` rejected every image as an "unexpected error", `--val-fraction 1.5` ended in a
traceback, and `--workers -2` or `--shard-size 0` were taken silently.)"""

from __future__ import annotations

import argparse


def _number(text: str, kind: type) -> int | float:
    try:
        return kind(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not {'a whole number' if kind is int else 'a number'}") from None


def positive_int(text: str) -> int:
    """A count or a size in pixels: 1 or more."""
    value = _number(text, int)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be 1 or more, got {value}")
    return value


def non_negative_int(text: str) -> int:
    """A seed or a smallest area: 0 or more."""
    value = _number(text, int)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {value}")
    return value


def non_negative_float(text: str) -> float:
    """A margin, as a fraction of a box's side: 0 or more."""
    value = _number(text, float)
    if not value >= 0:  # also refuses nan
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {value}")
    return value


def held_out_fraction(text: str) -> float:
    """The share of patients a split takes: at least 0 and below 1 (some must stay for training)."""
    value = _number(text, float)
    if not 0 <= value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 0 and below 1, got {value}")
    return value


def least_share(text: str) -> float:
    """The least share of a crop that must be tissue, field of view or foreground: 0 to 1."""
    value = _number(text, float)
    if not 0 <= value <= 1:
        raise argparse.ArgumentTypeError(f"must be between 0 and 1, got {value}")
    return value
