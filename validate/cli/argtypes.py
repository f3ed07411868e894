"""Argument types shared by the sub-commands (argparse rejects bad values with a usage line)."""

from __future__ import annotations

import argparse


def seed(text: str) -> int:
    """A random seed: an integer from 0 to 2**32 - 1 (what numpy accepts)."""
    try:
        k = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"a seed is an integer, got {text!r}") from None
    if not 0 <= k < 2**32:
        raise argparse.ArgumentTypeError(f"a seed is an integer from 0 to 2**32 - 1, got {k}")
    return k


def ratio(text: str) -> float:
    """A share in (0, 1]."""
    try:
        r = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"a ratio is a number in (0, 1], got {text!r}") from None
    if not 0.0 < r <= 1.0:
        raise argparse.ArgumentTypeError(f"a ratio is a number in (0, 1], got {r}")
    return r


def positive_int(text: str) -> int:
    """An integer of at least 1."""
    try:
        k = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number of at least 1, got {text!r}") from None
    if k < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number of at least 1, got {k}")
    return k
