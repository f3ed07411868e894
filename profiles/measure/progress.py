"""Progress of a long measurement: a callable the jobs report to, and a terminal bar for it.

A job takes ``progress(total, description) -> tick``: it announces a stage of
``total`` units and calls ``tick(n=1)`` as units complete. :func:`no_progress` is
the silent default; :func:`terminal_bars` draws tqdm bars on a terminal (none when
stderr is not one, so logs and captured output stay clean).
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Callable, Iterator

#: ``progress(total units, description) -> tick(n=1)``
Progress = Callable[[int, str], Callable[..., object]]


def _tick(n: int = 1) -> None:
    return None


def no_progress(total: int, description: str) -> Callable[..., object]:
    """A :data:`Progress` that shows nothing."""
    return _tick


@contextlib.contextmanager
def terminal_bars(unit: str, leave: bool = True) -> Iterator[Progress]:
    """A :data:`Progress` drawing one tqdm bar per stage on stderr, if stderr is a terminal.

    The bars are closed when the block ends, however it ends.
    """
    from tqdm import tqdm

    bars = []

    def progress(total: int, description: str):
        bar = tqdm(total=total, desc=description, unit=unit, disable=not sys.stderr.isatty(),
                   leave=leave)
        bars.append(bar)
        return bar.update

    try:
        yield progress
    finally:
        for bar in bars:
            bar.close()
