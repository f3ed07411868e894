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


class ReplayError(ValueError):
    """A replay that cannot run as configured (no room for a KV cache, a request larger
    than the cache, a simulation that stalled); the message says what to change."""
