"""Reader for Mooncake's production traces (``mooncake-jsonl``, kvcache-ai/Mooncake).

One JSON object per line: ``timestamp`` (ms from the trace start), ``input_length``,
``output_length`` (tokens) and ``hash_ids`` (one id per 512-token prompt block,
shared ids = shared prefix). ``hash_ids`` become ``block_hashes`` and the block size
is recorded as ``mist.hash_block_tokens`` = 512; every line must have
``ceil(input_length / 512)`` hashes. No wall clock, so no ``mist.origin_epoch_s``.

Rows with zero input or output tokens cannot be replayed: skipped and counted.
Malformed lines, missing keys, wrong types and negative counts raise with the line.
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
    float_column,
    int_column,
    read_jsonl,
    skip_mask,
)

FORMAT = "mooncake-jsonl"
REQUIRED = ("timestamp", "input_length", "output_length", "hash_ids")
BLOCK_TOKENS = 512


def _hashes(path, records, lines, input_len) -> pa.Array:
    hashes = [rec["hash_ids"] for rec in records]
    expect = -(-input_len // BLOCK_TOKENS)
    for i, h in enumerate(hashes):
        if not isinstance(h, list) or len(h) != expect[i]:
            got = len(h) if isinstance(h, list) else type(h).__name__
            raise TraceError(
                path,
                f"hash_ids has {got} entries, expected ceil({input_len[i]}/{BLOCK_TOKENS}) = {expect[i]}",
                int(lines[i]),
            )
    try:
        return pa.array(hashes, type=pa.list_(pa.int64()))
    except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError, OverflowError) as exc:
        for i, h in enumerate(hashes):
            if not all(isinstance(v, int) and not isinstance(v, bool) for v in h):
                raise TraceError(path, "hash_ids must be integers", int(lines[i])) from exc
        raise


def read_mooncake_jsonl(path) -> ReadResult:
    """Read a Mooncake trace JSONL.

    Parameters
    ----------
    path : str or Path
        e.g. ``conversation_trace.jsonl``.

    Returns
    -------
    ReadResult
        ``requests`` with ``arrival_s`` (s, first = 0), token counts, ``block_hashes``.
    """
    path = Path(path)
    records, lines = read_jsonl(path, REQUIRED)
    stamp_ms = float_column(records, "timestamp", path, lines)
    inp = int_column(records, "input_length", path, lines)
    out = int_column(records, "output_length", path, lines)
    check_tokens(path, "input_length", inp, lines)
    check_tokens(path, "output_length", out, lines)
    hashes = _hashes(path, records, lines, inp)
    keep, skipped = skip_mask(
        {
            "zero input_length (nothing to prefill)": inp == 0,
            "zero output_length (nothing to decode)": out == 0,
        }
    )
    idx = np.flatnonzero(keep)
    columns = {
        "request_id": [str(i) for i in idx],
        "arrival_s": stamp_ms[idx] / 1e3,
        "input_tokens": inp[idx],
        "output_tokens": out[idx],
        "block_hashes": hashes.take(pa.array(idx)),
    }
    requests, _ = finish(FORMAT, columns, metadata={"mist.hash_block_tokens": BLOCK_TOKENS})
    first = float(stamp_ms[idx].min()) / 1e3 if idx.size else 0.0
    meta = {
        "source_format": FORMAT,
        "source_path": str(path),
        "hash_block_tokens": BLOCK_TOKENS,
        "source_first_arrival_s": first,
    }
    return ReadResult(requests, None, meta, rows_read=len(records), skipped=skipped)
