"""Reader for the Azure LLM inference traces (``azure-csv``, Azure/AzurePublicDataset 2023).

Columns: ``TIMESTAMP`` (``2023-11-16 18:15:46.6805900``: wall-clock datetime with 7
fractional digits, no zone — taken as UTC), ``ContextTokens`` and
``GeneratedTokens`` (tokens). Timestamps are parsed with an explicit format at
nanosecond resolution; ``arrival_s`` is the offset from the earliest one and that
instant's epoch (s) is stored as ``mist.origin_epoch_s``.

Rows with zero context or generated tokens cannot be replayed: they are skipped and
counted. Negative counts, empty cells and unparsable timestamps raise with the line.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from mist.traces.errors import TraceError
from mist.traces.readers.base import ReadResult, check_tokens, finish, read_csv, skip_mask

FORMAT = "azure-csv"
COLUMNS = ("TIMESTAMP", "ContextTokens", "GeneratedTokens")
TIME_FORMAT = "%Y-%m-%d %H:%M:%S.%f"  # %f takes up to 9 digits in pandas: 7 here


def read_azure_csv(path) -> ReadResult:
    """Read an Azure LLM inference trace CSV.

    Parameters
    ----------
    path : str or Path
        ``AzureLLMInferenceTrace_*.csv``.

    Returns
    -------
    ReadResult
        ``requests`` with ``arrival_s`` (s from the first request) and token counts.
    """
    path = Path(path)
    df = read_csv(path, COLUMNS, {"ContextTokens": "int", "GeneratedTokens": "int"})
    stamps = pd.to_datetime(df["TIMESTAMP"], format=TIME_FORMAT, errors="coerce")
    bad = np.flatnonzero(stamps.isna().to_numpy())
    if bad.size:
        i = int(bad[0])
        raise TraceError(path, f"TIMESTAMP {df['TIMESTAMP'].iloc[i]!r} is not {TIME_FORMAT}", i + 2)
    ns = stamps.to_numpy(dtype="datetime64[ns]").astype(np.int64)
    lines = np.arange(len(df), dtype=np.int64) + 2
    ctx = df["ContextTokens"].to_numpy(np.int64)
    gen = df["GeneratedTokens"].to_numpy(np.int64)
    check_tokens(path, "ContextTokens", ctx, lines)
    check_tokens(path, "GeneratedTokens", gen, lines)
    keep, skipped = skip_mask(
        {
            "zero ContextTokens (nothing to prefill)": ctx == 0,
            "zero GeneratedTokens (nothing to decode)": gen == 0,
        }
    )
    idx = np.flatnonzero(keep)
    t0 = int(ns[idx].min()) if idx.size else 0
    columns = {
        "request_id": [str(i) for i in idx],
        "arrival_s": (ns[idx] - t0) / 1e9,  # integer ns difference: exact before scaling
        "input_tokens": ctx[idx],
        "output_tokens": gen[idx],
    }
    requests, _ = finish(FORMAT, columns, origin_epoch_s=t0 / 1e9)
    meta = {"source_format": FORMAT, "source_path": str(path), "origin_epoch_s": t0 / 1e9}
    return ReadResult(requests, None, meta, rows_read=len(df), skipped=skipped)
