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
