"""Reader for measured end-to-end latencies of real deployments (aiconfigurator silicon CSV).

One row per benchmarked deployment at a fixed concurrency: ``system`` (GPU type,
e.g. ``h100_sxm``), ``backend`` (vllm, sglang, trtllm) and ``backend_version``,
``model_path`` (Hugging Face id), ``precision`` / ``gemm_quant_mode`` (empty means
the checkpoint's own dtype, bf16), ``mode`` (``agg`` aggregated or ``disagg``
prefill/decode), ``isl``/``osl`` tokens, ``batch_size`` (the concurrency),
``tp_size``/``pp_size``/``attention_dp_size``/``moe_tp_size``/``moe_ep_size``, and the
measured ``silicon_ttft_ms`` and ``silicon_tpot_ms`` (ai-dynamo/aiconfigurator
``systems/silicon_sample.csv``).
"""

from __future__ import annotations

import csv
import io
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa

from mist.traces.checks import MAX_TOKENS, MAX_TRACE_S
from mist.traces.errors import TraceError
from mist.traces.schema import SILICON_ROWS, from_columns

#: columns a silicon CSV must have (values nullable or not: :data:`SILICON_ROWS`)
REQUIRED = tuple(f.name for f in SILICON_ROWS
                 if not f.nullable or (f.metadata or {}).get(b"mist.required") == b"column")
#: numeric columns (NaN where empty in the frame :func:`read_silicon` returns)
NUMERIC = tuple(f.name for f in SILICON_ROWS if pa.types.is_integer(f.type) or pa.types.is_floating(f.type))
#: counts: whole numbers where given (``batch_size`` may be empty: a disaggregated row)
COUNTS = tuple(f.name for f in SILICON_ROWS if pa.types.is_integer(f.type))
#: the measured latencies (ms)
LATENCIES = tuple(f.name for f in SILICON_ROWS if pa.types.is_floating(f.type))
TEXT = ("system", "backend", "backend_version", "model_path", "mode")
#: text a row must give (the rows are selected by the first two, predicted from the others)
NAMED = ("system", "backend", "model_path", "mode")


def _line(df: pd.DataFrame, position: int) -> int:
    return int(df.index[position]) + 2  # the header is line 1


def _load_csv(path: Path) -> pd.DataFrame:
    if path.is_dir():
        raise TraceError(path, "is a folder; a silicon CSV file is needed")
    if not path.is_file():
        raise TraceError(path, "file not found")
    try:
        text = path.read_text(encoding="utf-8")
        _check_fields(text, path)
        df = pd.read_csv(io.StringIO(text), dtype=str, keep_default_na=False)
    except pd.errors.EmptyDataError:
        raise TraceError(path, "empty file (expected a header line and rows)") from None
    except (pd.errors.ParserError, UnicodeDecodeError, csv.Error) as exc:
        raise TraceError(path, f"not a readable CSV file ({str(exc).strip().splitlines()[-1]})") from exc
    missing = [c for c in REQUIRED if c not in df.columns]
    if missing:
        raise TraceError(path, f"missing columns {missing}", line=1)
    return df


def _check_fields(text: str, path: Path) -> None:
    """Every row has as many fields as the header: a shorter one is a truncated or
    malformed row (pandas would fill it with empty cells, and the row would vanish
    from its system's selection)."""
    reader = csv.reader(io.StringIO(text))
    header = next(reader, None)
    for cells in reader:
        if cells and len(cells) != len(header):
            raise TraceError(path, f"expected {len(header)} fields as in the header, found {len(cells)} "
                                   "(a truncated or malformed row)", line=reader.line_num)


def _check_names(df: pd.DataFrame, path: Path, columns) -> None:
    """``columns`` are non-empty on every row, and ``id`` (when the file has it) is unique."""
    for col in columns:
        bad = np.flatnonzero((df[col] == "").to_numpy())
        if len(bad):
            raise TraceError(path, f"{col}: must be given (a name), found an empty cell", line=_line(df, bad[0]))
    if "id" in df.columns:
        ids = df["id"].str.strip()
        dup = np.flatnonzero((ids.duplicated() & (ids != "")).to_numpy())
        if len(dup):
            raise TraceError(path, f"id: {ids.iloc[dup[0]]!r} is given twice (a duplicated row)",
                             line=_line(df, dup[0]))


#: a release number (``0.19.0``, ``v0.12``); builds named otherwise (``nightly-…``,
#: ``main``) read the newest tables
RELEASE = re.compile(r"v?\d+(\.\d+)*")


def _check_versions(df: pd.DataFrame, path: Path) -> None:
    """A ``backend_version`` that reads as a number must be a release number: ``-1``,
    ``inf``, ``1e+300`` would otherwise pass for a build name and silently pick the
    newest kernel tables."""
    if "backend_version" not in df.columns:
        return
    for i, v in enumerate(df["backend_version"].to_numpy(str)):
        if v and not RELEASE.fullmatch(v) and _is_number(v):
            raise TraceError(path, f"backend_version: {v!r} is a number, not a release version "
                                   "(major.minor[.patch], e.g. 0.19.0)", line=_line(df, i))


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _to_numbers(df: pd.DataFrame, path: Path) -> None:
    """Numeric columns as floats in place (NaN where empty; absent columns all NaN)."""
    for col in NUMERIC:
        if col not in df.columns:
            df[col] = ""
        raw = df[col].str.strip()
        num = pd.to_numeric(raw.where(raw != "", None), errors="coerce")
        bad = np.flatnonzero(num.isna().to_numpy() & (raw != "").to_numpy())
        if len(bad):
            raise TraceError(path, f"column {col!r} holds {raw.iloc[bad[0]]!r}, not a number", line=_line(df, bad[0]))
        df[col] = num.astype(float)


def _check_values(df: pd.DataFrame, path: Path) -> None:
    for col in LATENCIES:
        values = df[col].to_numpy()
        bad = np.flatnonzero(~((values > 0) & (values <= MAX_TRACE_S * 1e3)))  # (NaN fails both)
        if len(bad):
            raise TraceError(path, f"{col} must be a positive finite number of ms (at most a century), "
                                   f"got {float(values[bad[0]])}",
                             line=_line(df, bad[0]))
    for col in COUNTS:
        values = df[col].to_numpy()
        least = 1 if col in ("isl", "osl", "batch_size", "tp_size") else 0  # 0: "not used" in some rows
        bad = np.flatnonzero(~np.isnan(values) & ((values < least) | (values != np.floor(values))
                                                  | ~np.isfinite(values)))
        if len(bad):
            raise TraceError(path, f"{col} must be a whole number of at least {least}, got {float(values[bad[0]])}",
                             line=_line(df, bad[0]))
    for col in ("isl", "osl"):
        bad = np.flatnonzero(np.isnan(df[col].to_numpy()))
        if len(bad):
            raise TraceError(path, f"{col} is empty", line=_line(df, bad[0]))


def read_silicon(path, system: str | None = None, backend: str | None = None) -> pd.DataFrame:
    """Rows of a silicon CSV (columns of :data:`mist.traces.schema.SILICON_ROWS`, plus any
    others the file has) with numeric columns as floats (NaN where empty).

    ``system`` / ``backend`` keep only those rows (names compared without case or
    surrounding spaces) before the values are checked, so a bad cell in another
    system's row does not stop a run. The index keeps each row's position in the file
    (line = index + 2).

    Raises
    ------
    TraceError
        Missing file or columns, or in a kept row: a non-numeric value where a number
        belongs, a latency that is not a positive finite number, a count (isl, osl,
        concurrency, parallel sizes) that is not a whole number (with its line number;
        line 1 is the header).
    """
    path = Path(path)
    df = _load_csv(path)
    for col in TEXT:
        if col in df.columns:
            df[col] = df[col].str.strip()
    _check_names(df, path, ("system", "backend"))
    if system is not None:
        df = df[df["system"].str.casefold() == system.strip().casefold()]
    if backend is not None:
        df = df[df["backend"].str.casefold() == backend.strip().casefold()]
    _check_names(df, path, NAMED)
    _check_versions(df, path)
    _to_numbers(df, path)
    _check_values(df, path)
    df.attrs["source"] = str(path)
    return df


def silicon_table(rows: pd.DataFrame) -> pa.Table:
    """The canonical :data:`mist.traces.schema.SILICON_ROWS` table of :func:`read_silicon`'s
    rows (counts as integers, null where empty; text columns null where absent or empty)."""
    cols = {}
    for field in SILICON_ROWS:
        if field.name not in rows.columns:
            continue
        values = rows[field.name]
        if pa.types.is_integer(field.type):
            huge = np.flatnonzero(values.to_numpy(float) > MAX_TOKENS)  # would overflow int64
            if len(huge):  # (the replay's own guards name tighter limits before this)
                raise TraceError(rows.attrs.get("source", "silicon rows"), f"{field.name} must be at most 2^53, "
                                 f"got {float(values.iloc[huge[0]])}", line=_line(rows, int(huge[0])))
            cols[field.name] = [None if np.isnan(v) else int(v) for v in values.to_numpy(float)]
        elif pa.types.is_string(field.type):
            cols[field.name] = [v if isinstance(v, str) and v else None for v in values]
        else:
            cols[field.name] = values.to_numpy(float)
    return from_columns(SILICON_ROWS, cols, {"mist.source": rows.attrs.get("source", "")})
