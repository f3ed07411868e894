"""Reader for Vidur's processed request traces (``vidur-csv``).

Columns: ``arrived_at`` (s from the trace start), ``num_prefill_tokens`` and
``num_decode_tokens`` (tokens; Vidur's decode count is the output length). No wall
clock, so no ``mist.origin_epoch_s``; the source time of the first arrival (s) is kept
in ``meta["source_first_arrival_s"]``.

Rows with zero prefill or decode tokens cannot be replayed: skipped and counted.
Negative counts, empty cells or non-numbers raise with the line.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from mist.traces.readers.base import ReadResult, check_tokens, finish, read_csv, skip_mask

FORMAT = "vidur-csv"
COLUMNS = ("arrived_at", "num_prefill_tokens", "num_decode_tokens")


def read_vidur_csv(path) -> ReadResult:
    """Read a Vidur trace CSV (e.g. ``splitwise_conv.csv``).

    Parameters
    ----------
    path : str or Path
        The CSV file.

    Returns
    -------
    ReadResult
        ``requests`` with ``arrival_s`` (s, first arrival = 0) and token counts.
    """
    path = Path(path)
    kinds = {"arrived_at": "float", "num_prefill_tokens": "int", "num_decode_tokens": "int"}
    df = read_csv(path, COLUMNS, kinds)
    lines = np.arange(len(df), dtype=np.int64) + 2
    pre = df["num_prefill_tokens"].to_numpy(np.int64)
    dec = df["num_decode_tokens"].to_numpy(np.int64)
    check_tokens(path, "num_prefill_tokens", pre, lines)
    check_tokens(path, "num_decode_tokens", dec, lines)
    keep, skipped = skip_mask(
        {
            "zero num_prefill_tokens (nothing to prefill)": pre == 0,
            "zero num_decode_tokens (nothing to decode)": dec == 0,
        }
    )
    idx = np.flatnonzero(keep)
    arrival = df["arrived_at"].to_numpy(np.float64)[idx]
    columns = {
        "request_id": [str(i) for i in idx],
        "arrival_s": arrival,
        "input_tokens": pre[idx],
        "output_tokens": dec[idx],
    }
    requests, _ = finish(FORMAT, columns)
    first = float(arrival.min()) if arrival.size else 0.0
    meta = {"source_format": FORMAT, "source_path": str(path), "source_first_arrival_s": first}
    return ReadResult(requests, None, meta, rows_read=len(df), skipped=skipped)
