"""Shared plumbing of the operator-profile readers: the result type, the CSV header,
sample statistics, and the final "name the hardware, build the table" step.

Every operator-profile reader returns a :class:`ProfileResult` whose ``table``
follows :data:`mist.traces.schema.OPERATOR_PROFILE`: latencies in seconds (float64), one
row per operator and feature point, table metadata ``mist.source_format``,
``mist.source_path``, ``mist.spread`` (what ``spread_s`` measures) and
``mist.hardware_names`` (JSON: source spelling -> name written).

Hardware names: a reader takes the name from the file or its path and passes it
through ``resolve_hardware`` when given. ``traces`` sits left of ``profiles`` and may
not import its hardware catalog, so the caller supplies the lookup (``mist ingest``
passes the catalog's alias lookup); without one, the source spelling is kept.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa

from mist.traces.checks import check_columns, check_duplicates
from mist.traces.errors import TraceError
from mist.traces.readers.base import _line_of
from mist.traces.schema import OPERATOR_PROFILE, from_columns

Resolver = Callable[[str], str]

#: ``spread_s`` statistic of readers that compute it from raw samples (as ``mist profile``).
P90_P10 = "p90 - p10 of the samples (s)"


@dataclass
class ProfileResult:
    """What an operator-profile reader produced from one source.

    Attributes
    ----------
    table : pa.Table
        Canonical ``operator_profile`` table (:data:`mist.traces.schema.OPERATOR_PROFILE`).
    meta : dict
        JSON-serialisable summary: source format and path, hardware names, notes.
    rows_read : int
        Records found in the source (CSV data rows, trace events).
    skipped : dict of str to int
        Records left out, by reason.
    """

    table: pa.Table
    meta: dict
    rows_read: int
    skipped: dict[str, int] = field(default_factory=dict)

    def rows_per_operator(self) -> dict[str, int]:
        """Output rows by ``operator``, sorted by name."""
        return dict(sorted(Counter(self.table.column("operator").to_pylist()).items()))


def csv_header(path) -> list[str]:
    """Column names of a CSV file (header = line 1).

    Raises
    ------
    TraceError
        Unreadable, empty or malformed file.
    """
    path = Path(path)
    try:
        return [str(c) for c in pd.read_csv(path, nrows=0).columns]
    except pd.errors.ParserError as exc:
        raise TraceError(path, f"malformed CSV ({str(exc).strip()})", _line_of(exc)) from exc
    except (OSError, UnicodeDecodeError, pd.errors.EmptyDataError) as exc:
        raise TraceError(path, f"cannot read CSV ({exc})") from exc


def check_times(path, name: str, values: np.ndarray, lines: np.ndarray) -> None:
    """Raise on a negative time (corrupt input, never skipped); ``name`` is the column."""
    bad = np.flatnonzero(values < 0)
    if bad.size:
        i = int(bad[0])
        raise TraceError(path, f"column {name!r} is negative ({values[i].item()!r})", int(lines[i]))


def check_positive(path, name: str, values: np.ndarray, lines: np.ndarray) -> None:
    """Raise on a count below 1 (tokens, batch, GPUs), naming the column and line."""
    bad = np.flatnonzero(values < 1)
    if bad.size:
        i = int(bad[0])
        raise TraceError(
            path, f"column {name!r} must be at least 1, found {values[i].item()!r}", int(lines[i])
        )


def sample_stats(samples_s: np.ndarray) -> tuple[float, float, int]:
    """Median, p90 − p10 spread (linear percentiles) and count of samples (s)."""
    p10, p50, p90 = np.percentile(samples_s, [10, 50, 90])
    return float(p50), float(p90 - p10), int(samples_s.size)


def resolved(names, resolve_hardware: Resolver | None) -> tuple[list[str], dict[str, str]]:
    """Map each source hardware name through ``resolve_hardware`` (identity when None).

    Returns the mapped names and the mapping used (source spelling -> name written).
    """
    mapping: dict[str, str] = {}
    for raw in dict.fromkeys(str(n) for n in names):
        mapping[raw] = resolve_hardware(raw) if resolve_hardware is not None else raw
    return [mapping[str(n)] for n in names], mapping


def finish_profile(
    fmt: str,
    path,
    columns: dict,
    resolve_hardware: Resolver | None,
    *,
    spread: str,
    rows_read: int,
    skipped: dict[str, int] | None = None,
    meta: dict | None = None,
    lines=None,
) -> ProfileResult:
    """Resolve hardware names, build the ``operator_profile`` table and its result.

    Parameters
    ----------
    fmt : str
        Source format name (``mist.source_format``).
    path : str or Path
        The source, recorded as ``mist.source_path``.
    columns : dict
        ``operator_profile`` columns; ``hardware`` holds the source spellings.
    resolve_hardware : callable, optional
        Source hardware name -> canonical name.
    spread : str
        What ``spread_s`` is (``mist.spread``).
    rows_read, skipped, meta
        As in :class:`ProfileResult`; ``meta`` is extended with the format, path,
        spread and hardware names.
    lines : array of int, optional
        Each row's source line, for errors (default: its 1-based position).

    Raises
    ------
    TraceError
        A value breaking the declared checks or conflicting duplicates
        (:mod:`mist.traces.checks`).
    """
    check_columns(path, "operator_profile", columns, lines)
    columns = dict(columns)
    columns["hardware"], mapping = resolved(columns["hardware"], resolve_hardware)
    table_meta = {
        "mist.source_format": fmt,
        "mist.source_path": str(path),
        "mist.spread": spread,
        "mist.hardware_names": json.dumps(mapping, sort_keys=True),
    }
    table = from_columns(OPERATOR_PROFILE, columns, table_meta)
    check_duplicates(path, table, lines)
    info = {"source_format": fmt, "source_path": str(path), "spread": spread,
            "hardware_names": mapping, **(meta or {})}  # fmt: skip
    return ProfileResult(table, info, rows_read=rows_read, skipped=dict(skipped or {}))


def concat_profiles(tables: list[pa.Table]) -> pa.Table:
    """One ``operator_profile`` table from several readers' tables.

    The per-source metadata is merged: ``mist.source_format`` and ``mist.source_path``
    become JSON lists, ``mist.spread`` a JSON object by format, and
    ``mist.hardware_names`` the union of the mappings. Rows keep their ``source``.
    """
    if not tables:
        raise ValueError("no tables to concatenate")
    metas = [{k.decode(): v.decode() for k, v in (t.schema.metadata or {}).items()} for t in tables]
    names: dict[str, str] = {}
    for m in metas:
        names.update(json.loads(m.get("mist.hardware_names", "{}")))
    merged = {
        "mist.source_format": json.dumps(
            list(dict.fromkeys(m.get("mist.source_format") for m in metas))
        ),
        "mist.source_path": json.dumps([m.get("mist.source_path") for m in metas]),
        "mist.spread": json.dumps(
            {m.get("mist.source_format"): m.get("mist.spread") for m in metas}
        ),
        "mist.hardware_names": json.dumps(names, sort_keys=True),
    }
    table = pa.concat_tables([t.replace_schema_metadata(OPERATOR_PROFILE.metadata) for t in tables])
    return table.replace_schema_metadata(
        {**OPERATOR_PROFILE.metadata, **{k.encode(): v.encode() for k, v in merged.items()}}
    )
