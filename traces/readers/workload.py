"""Reader for a ShareGPT-style request stream (``workload-jsonl``).

One JSON object per line: ``input_toks``, ``output_toks`` (tokens),
``arrival_time_ns`` (ns from the start of the run) and, optionally,
``input_tok_ids`` (the prompt's token ids, length ``input_toks``) which become
``prompt_token_ids``. The source has no wall clock, so no ``mist.origin_epoch_s``;
the source time of the first arrival (s) is kept in ``meta["source_first_arrival_s"]``
because arrivals are rebased to 0.

Rows with zero input or output tokens cannot be replayed (nothing to prefill or to
decode): they are skipped and counted. Negative counts are corrupt input and raise.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa

from mist.traces.errors import TraceError
from mist.traces.readers.base import (
    ReadResult,
    check_tokens,
    finish,
    int_column,
    read_jsonl,
    skip_mask,
)

FORMAT = "workload-jsonl"
REQUIRED = ("input_toks", "output_toks", "arrival_time_ns")


def parse_workload(path) -> dict:
    """Parse and check a workload file, keeping every line (no skipping).

    Returns
    -------
    dict
        ``input_toks``, ``output_toks``, ``arrival_time_ns`` (int64 arrays),
        ``input_tok_ids`` (list; ``None`` where a line has none) and ``lines``
        (1-based file line of each record).

    Raises
    ------
    TraceError
        Malformed line, missing key, non-integer value, or ``input_tok_ids`` whose
        length differs from ``input_toks``.
    """
    records, lines = read_jsonl(path, REQUIRED)
    cols = {k: int_column(records, k, path, lines) for k in REQUIRED}
    ids = [rec.get("input_tok_ids") for rec in records]
    for i, row in enumerate(ids):
        if row is None:
            continue
        if not isinstance(row, list):
            raise TraceError(
                path, f"'input_tok_ids' must be a list, found {type(row).__name__}", int(lines[i])
            )
        if len(row) != cols["input_toks"][i]:
            raise TraceError(
                path,
                f"len(input_tok_ids) = {len(row)} but input_toks = {cols['input_toks'][i]}",
                int(lines[i]),
            )
    cols["input_tok_ids"] = ids
    cols["lines"] = lines
    return cols


def token_id_array(ids: list, path, lines) -> pa.Array:
    """``list<int32>`` array of token-id lists; a non-integer id raises with its line."""
    try:
        return pa.array(ids, type=pa.list_(pa.int32()))
    except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError, OverflowError):
        for i, row in enumerate(ids):
            try:
                pa.array(row or [], type=pa.int32())
            except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError, OverflowError) as exc:
                raise TraceError(
                    path, f"token ids must be int32 integers ({exc})", int(lines[i])
                ) from exc
        raise


def read_workload_jsonl(path) -> ReadResult:
    """Read a ShareGPT workload JSONL (see the module docstring for the layout).

    Parameters
    ----------
    path : str or Path
        The ``.jsonl`` file.

    Returns
    -------
    ReadResult
        ``requests`` with ``arrival_s`` (s, first arrival = 0), token counts and
        ``prompt_token_ids``; no ``tokens`` table.
    """
    path = Path(path)
    w = parse_workload(path)
    lines = w["lines"]
    check_tokens(path, "input_toks", w["input_toks"], lines)
    check_tokens(path, "output_toks", w["output_toks"], lines)
    keep, skipped = skip_mask(
        {
            "zero input tokens (nothing to prefill)": w["input_toks"] == 0,
            "zero output tokens (nothing to decode)": w["output_toks"] == 0,
        }
    )
    idx = np.flatnonzero(keep)
    ids = [w["input_tok_ids"][i] for i in idx]
    arrival = w["arrival_time_ns"][idx]
    columns = {
        "request_id": [str(i) for i in idx],
        "arrival_s": arrival.astype(np.float64) / 1e9,
        "input_tokens": w["input_toks"][idx],
        "output_tokens": w["output_toks"][idx],
        "prompt_token_ids": token_id_array(ids, path, lines[idx]),
    }
    requests, _ = finish(FORMAT, columns)
    first = float(arrival.min()) / 1e9 if arrival.size else 0.0
    meta = {"source_format": FORMAT, "source_path": str(path), "source_first_arrival_s": first}
    return ReadResult(requests, None, meta, rows_read=len(lines), skipped=skipped)
