"""Shared plumbing of the trace readers: the result type, JSONL/CSV parsing with
line-numbered errors, and the final "sort by arrival, rebase to zero, build the
canonical table" step every reader ends with.

Every reader returns a :class:`ReadResult`. Its ``requests`` table follows
:data:`mist.traces.schema.REQUESTS`: times in seconds (float64) with the earliest arrival
at 0, rows sorted by arrival and then by source order (a stable sort), and table
metadata ``mist.source_format``, ``mist.origin_epoch_s`` (when the source has wall
clock times) and ``mist.reordered`` (``"1"`` when the sort changed the source order).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa

from mist.traces.checks import MAX_TOKENS, MAX_TRACE_S, Check, check_columns, raise_at, violation
from mist.traces.errors import TraceError
from mist.traces.schema import REQUESTS, TOKENS, from_columns


@dataclass
class ReadResult:
    """What a reader produced from one source.

    Attributes
    ----------
    requests : pa.Table
        Canonical ``requests`` table (:data:`mist.traces.schema.REQUESTS`).
    tokens : pa.Table or None
        Canonical ``tokens`` table (per-token emission times, s), when the source has them.
    meta : dict
        JSON-serialisable run metadata (engine settings, hardware, source summary).
    rows_read : int
        Records found in the source (before any skipping).
    skipped : dict of str to int
        Records left out, by reason; ``rows_read - sum(skipped.values())`` rows remain.
    """

    requests: pa.Table
    tokens: pa.Table | None
    meta: dict
    rows_read: int
    skipped: dict[str, int] = field(default_factory=dict)


def read_jsonl(path, required: tuple[str, ...]) -> tuple[list[dict], np.ndarray]:
    """Parse a JSON Lines file into records, checking each has the ``required`` keys.

    Whitespace-only lines are not records (a trailing newline is normal) and are
    passed over; every other line must be one JSON object.

    Returns
    -------
    records : list of dict
    lines : np.ndarray of int
        1-based file line of each record, for error messages.

    Raises
    ------
    TraceError
        Unreadable file, malformed JSON, a non-object line or missing keys (with line).
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise TraceError(path, f"cannot read file ({exc})") from exc
    records, lines = [], []
    for lineno, raw in enumerate(text.splitlines(), start=1):
        if not raw.strip():
            continue
        try:
            rec = json.loads(raw)
        except json.JSONDecodeError as exc:
            raise TraceError(
                path, f"malformed JSON ({exc.msg} at column {exc.colno})", lineno
            ) from exc
        except RecursionError as exc:
            raise TraceError(path, "malformed JSON (nested too deeply)", lineno) from exc
        if not isinstance(rec, dict):
            raise TraceError(path, f"expected a JSON object, found {type(rec).__name__}", lineno)
        missing = [k for k in required if k not in rec]
        if missing:
            raise TraceError(path, f"missing keys {missing}", lineno)
        records.append(rec)
        lines.append(lineno)
    if not records:
        raise TraceError(path, "no records (empty file)")
    return records, np.asarray(lines, dtype=np.int64)


def _is_int(v) -> bool:
    return isinstance(v, (int, np.integer)) and not isinstance(v, bool)


def int_column(records, key, path, lines) -> np.ndarray:
    """Integer values of ``key`` (int64); a null, float or string raises with its line."""
    out = np.empty(len(records), dtype=np.int64)
    for i, rec in enumerate(records):
        v = rec[key]
        if not _is_int(v):
            raise TraceError(path, f"{key!r} must be an integer, found {v!r}", int(lines[i]))
        if not -(2**63) <= v < 2**63:  # would wrap (or overflow) in int64
            raise TraceError(path, f"{key!r} is beyond the 64-bit integer range, found {v!r}", int(lines[i]))
        out[i] = v
    return out


def float_column(records, key, path, lines) -> np.ndarray:
    """Numeric values of ``key`` (float64); a null, bool, string or non-finite raises."""
    out = np.empty(len(records), dtype=np.float64)
    for i, rec in enumerate(records):
        v = rec[key]
        if not (_is_int(v) or isinstance(v, (float, np.floating))) or not abs(v) <= 1e300:
            raise TraceError(path, f"{key!r} must be a finite number, found {v!r}", int(lines[i]))
        out[i] = v
    return out


def read_csv(path, columns: tuple[str, ...], dtypes: dict[str, str]) -> pd.DataFrame:
    """Read a CSV whose header holds ``columns``; check types per cell.

    ``dtypes`` maps a column to ``"int"`` or ``"float"``; others stay strings. Line
    numbers in errors count the header as line 1.

    Raises
    ------
    TraceError
        Unreadable file, wrong field count, missing columns, empty or non-numeric cells.
    """
    path = Path(path)
    try:
        df = pd.read_csv(path, dtype=str, keep_default_na=False, skip_blank_lines=False)
    except pd.errors.ParserError as exc:
        raise TraceError(path, f"malformed CSV ({str(exc).strip()})", _line_of(exc)) from exc
    except (OSError, UnicodeDecodeError, pd.errors.EmptyDataError) as exc:
        raise TraceError(path, f"cannot read CSV ({exc})") from exc
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise TraceError(path, f"missing columns {missing} (header has {list(df.columns)})", 1)
    if df.empty:
        raise TraceError(path, "no data rows")
    out = pd.DataFrame(index=df.index)
    for col in columns:
        kind = dtypes.get(col)
        values = df[col].str.strip()
        if kind is None:
            bad = values == ""
        else:
            num = pd.to_numeric(values, errors="coerce").astype(np.float64)  # a uint64 or object too
            bad = num.isna() | ~np.isfinite(num)
            if kind == "int":  # whole, and exact in float64 (larger ones wrap or round)
                bad |= num.ne(num.round()) | (num.abs() > MAX_TOKENS)
            values = num.astype(np.int64 if kind == "int" and not bad.any() else np.float64)
        if bad.any():
            i = int(np.flatnonzero(bad.to_numpy())[0])
            want = {"int": "an integer", "float": "a number"}.get(kind, "a value")
            if kind is not None and np.isfinite(num.iloc[i]) and abs(num.iloc[i]) > MAX_TOKENS:
                want += " of at most 2^53"
            raise TraceError(
                path, f"column {col!r} must be {want}, found {df[col].iloc[i]!r}", i + 2
            )
        out[col] = values
    return out


def _line_of(exc: Exception) -> int | None:
    m = re.search(r"line (\d+)", str(exc))
    return int(m.group(1)) if m else None


def check_tokens(path, name: str, values: np.ndarray, lines: np.ndarray) -> None:
    """Raise on a negative token count or one above 2^53 (corrupt input, never skipped)."""
    for bad, what in ((values < 0, "is negative"), (values > MAX_TOKENS, "is above 2^53")):
        hit = np.flatnonzero(bad)
        if hit.size:
            i = int(hit[0])
            raise TraceError(path, f"{name} {what} ({values[i]})", int(lines[i]))


def skip_mask(reasons: dict[str, np.ndarray]) -> tuple[np.ndarray, dict[str, int]]:
    """Combine boolean "skip because" masks; each row is counted under its first reason."""
    n = len(next(iter(reasons.values())))
    dropped = np.zeros(n, dtype=bool)
    counts: dict[str, int] = {}
    for reason, mask in reasons.items():
        new = mask & ~dropped
        if new.any():
            counts[reason] = int(new.sum())
        dropped |= new
    return ~dropped, counts


def _check_arrival(where, arrival: np.ndarray, lines) -> None:
    """Arrival times on the source clock (s): finite, >= 0, within a century."""
    bad = violation(arrival, np.ones(arrival.size, dtype=bool), Check(0, MAX_TRACE_S))
    if bad is not None:
        raise_at(where, "arrival_s", bad[0], arrival[bad[0]].item(), bad[1] + " (s on the source clock)", lines)


def _source_order(columns: dict, t0: float) -> dict:
    """The numeric ``requests`` columns in source order, times rebased by ``t0`` (s)."""
    out = {}
    for name, values in columns.items():
        if isinstance(values, np.ndarray):
            out[name] = values.astype(np.float64) - t0 if name.endswith("_s") else values
    return out


def finish(
    fmt: str,
    columns: dict,
    origin_epoch_s: float | None = None,
    metadata: dict | None = None,
    tokens: dict | None = None,
    path=None,
    lines=None,
) -> tuple[pa.Table, pa.Table | None]:
    """Sort by arrival (stable), rebase times so min(arrival_s) == 0, build tables.

    Parameters
    ----------
    fmt : str
        Source format name, stored as ``mist.source_format``.
    columns : dict
        ``requests`` columns as arrays in source order; ``arrival_s`` and every other
        ``*_s`` column are on one clock (s), rebased here together.
    origin_epoch_s : float, optional
        Epoch (s) of the clock's zero; the epoch of the earliest arrival is stored.
    tokens : dict, optional
        ``tokens`` columns (``request_id``, ``token_index``, ``time_s`` on the same clock).
    path, lines : optional
        The source and each row's 1-based line, named in the TraceError raised on a value
        breaking the declared checks (:mod:`mist.traces.checks`; source-clock arrivals
        must be finite, >= 0 and within a century, 3.2e9 s).
    """
    where = path if path is not None else f"<{fmt} input>"
    arrival = np.asarray(columns["arrival_s"], dtype=np.float64)
    _check_arrival(where, arrival, lines)
    order = np.argsort(arrival, kind="stable")
    t0 = float(arrival[order[0]]) if arrival.size else 0.0
    out = {}
    for name, values in columns.items():
        if isinstance(values, pa.Array):
            values = values.take(pa.array(order))
        elif isinstance(values, np.ndarray):
            values = values[order]
            if name.endswith("_s"):
                values = values.astype(np.float64) - t0
        else:  # lists of strings or of token-id lists
            values = [values[i] for i in order]
        out[name] = values
    check_columns(where, "requests", _source_order(columns, t0), lines)
    meta = {
        "mist.source_format": fmt,
        "mist.reordered": "1" if (order != np.arange(order.size)).any() else "0",
    }
    if origin_epoch_s is not None:
        meta["mist.origin_epoch_s"] = repr(float(origin_epoch_s) + t0)
    meta.update(metadata or {})
    requests = from_columns(REQUESTS, out, meta)
    tok_table = None
    if tokens is not None:
        tok = dict(tokens)
        tok["time_s"] = np.asarray(tok["time_s"], dtype=np.float64) - t0
        check_columns(where, "tokens", tok)
        tok_table = from_columns(TOKENS, tok, {"mist.source_format": fmt})
    return requests, tok_table
