"""Errors raised on bad input: always name the file, the line/row and the reason."""

from __future__ import annotations


class TraceError(ValueError):
    """Input that cannot be read as it stands.

    Parameters
    ----------
    path : str
        File (or directory) being read.
    reason : str
        What is wrong, in words a user can act on.
    line : int, optional
        1-based line (JSONL/CSV data line, header = line 1 for CSV) or row index.
    """

    def __init__(self, path, reason: str, line: int | None = None):
        self.path = str(path)
        self.line = line
        self.reason = reason
        where = self.path if line is None else f"{self.path}:{line}"
        super().__init__(f"{where}: {reason}")


class InputWarning(UserWarning):
    """Input read with a part left out or a setting doubted; the job still runs and the
    message says what and why (``mist`` prints it as ``mist <cmd>: warning: …``)."""


class ReplayError(ValueError):
    """A replay that cannot run as configured (no room for a KV cache, a request larger
    than the cache, a simulation that stalled); the message says what to change."""


def positive_numbers(column, path, name: str, first_line: int, unit: str = ""):
    """A table column (pandas Series) as a float array; TraceError naming the first entry
    that is not a positive number, at line ``first_line`` + its position (``unit`` is
    added to the message, e.g. ``" (ms)"``)."""
    import numpy as np
    import pandas as pd

    values = pd.to_numeric(column, errors="coerce").to_numpy(float)
    bad = np.flatnonzero(~np.isfinite(values) | (values <= 0))
    if bad.size:
        raise TraceError(path, f"{name} must be a positive number{unit}, got {str(column.iloc[bad[0]])!r}",
                         line=first_line + int(bad[0]))
    return values
