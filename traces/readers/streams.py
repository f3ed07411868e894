"""Request streams: arrival traces whose records map column for column onto ``requests``.

Four source formats differ only in what their columns are called, the unit of the
arrival time and the optional per-prompt list; :data:`STREAMS` declares that, and
:func:`read_csv_stream` / :func:`read_jsonl_stream` read any of them:

==================  ===================  ==========  ===================================  ==================
format              arrival              unit        prompt / output tokens               prompt list
==================  ===================  ==========  ===================================  ==================
``vidur-csv``       ``arrived_at``       s           num_prefill_tokens/num_decode_tokens
``azure-csv``       ``TIMESTAMP``        wall clock  ContextTokens / GeneratedTokens
``mooncake-jsonl``  ``timestamp``        ms          input_length / output_length         ``hash_ids``
``workload-jsonl``  ``arrival_time_ns``  ns          input_toks / output_toks             ``input_tok_ids``
==================  ===================  ==========  ===================================  ==================

- ``vidur-csv``: Vidur's processed request traces (``splitwise_conv.csv``); Vidur's
  decode count is the output length.
- ``azure-csv``: Azure LLM inference traces (Azure/AzurePublicDataset 2023).
  ``TIMESTAMP`` is a datetime with 7 fractional digits and no zone, taken as UTC,
  parsed with an explicit format at nanosecond resolution; ``arrival_s`` is the offset
  from the earliest one and that instant's epoch (s) is ``mist.origin_epoch_s``.
- ``mooncake-jsonl``: Mooncake's production traces (kvcache-ai/Mooncake). ``hash_ids``
  (one id per 512-token prompt block, shared ids = shared prefix) become
  ``block_hashes``, with ``mist.hash_block_tokens`` = 512; every line must have
  ``ceil(input_length / 512)`` of them.
- ``workload-jsonl``: a ShareGPT-style request stream (what ``mist record`` replays).
  The optional ``input_tok_ids`` (the prompt's token ids, ``input_toks`` of them)
  become ``prompt_token_ids``.

Sources timed from their own start have no wall clock, so no ``mist.origin_epoch_s``;
the source time of the first arrival (s) is kept in ``meta["source_first_arrival_s"]``
because arrivals are rebased to 0. Rows with zero prompt or output tokens cannot be
replayed (nothing to prefill or to decode): they are skipped and counted. Negative
counts, empty cells, non-numbers, malformed lines and unparsable timestamps are
corrupt input and raise with the file line.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa

from mist.traces.errors import TraceError
from mist.traces.readers.base import (
    ReadResult,
    check_tokens,
    finish,
    float_column,
    int_column,
    read_csv,
    read_jsonl,
    skip_mask,
)

WALL = "wall clock"  # unit of an arrival column holding datetimes
TIME_FORMAT = "%Y-%m-%d %H:%M:%S.%f"  # %f takes up to 9 digits in pandas: 7 in Azure's
PER_SECOND = {"s": 1.0, "ms": 1e3, "ns": 1e9}  # arrival units counted from the trace start
BLOCK_TOKENS = 512  # prompt tokens per Mooncake hash block


@dataclass(frozen=True)
class Stream:
    """How one request-stream format maps onto ``requests``.

    Attributes
    ----------
    columns : tuple of str
        Source columns (CSV) or keys (JSONL) every record must have, in the order
        they are checked.
    arrival, unit : str
        Arrival-time column and its unit: ``"s"``, ``"ms"``, ``"ns"`` from the trace
        start (``"ns"`` must be whole numbers) or :data:`WALL` (datetimes).
    input, output : str
        Prompt-token and output-token columns.
    nouns : tuple of str, optional
        How skip reasons name the input and output counts (default: the columns).
    prompt : str, optional
        JSONL key of the per-prompt list: ``hash_ids`` (-> ``block_hashes``) or
        ``input_tok_ids`` (-> ``prompt_token_ids``); optional in the source unless it
        is one of ``columns``.
    """

    columns: tuple[str, ...]
    arrival: str
    unit: str
    input: str
    output: str
    nouns: tuple[str, str] | None = None
    prompt: str | None = None


# format -> column map, in the order the formats are listed to users
STREAMS = {
    "workload-jsonl": Stream(("input_toks", "output_toks", "arrival_time_ns"),
                             "arrival_time_ns", "ns", "input_toks", "output_toks",
                             nouns=("input tokens", "output tokens"), prompt="input_tok_ids"),
    "azure-csv": Stream(("TIMESTAMP", "ContextTokens", "GeneratedTokens"),
                        "TIMESTAMP", WALL, "ContextTokens", "GeneratedTokens"),
    "vidur-csv": Stream(("arrived_at", "num_prefill_tokens", "num_decode_tokens"),
                        "arrived_at", "s", "num_prefill_tokens", "num_decode_tokens"),
    "mooncake-jsonl": Stream(("timestamp", "input_length", "output_length", "hash_ids"),
                             "timestamp", "ms", "input_length", "output_length", prompt="hash_ids"),
}  # fmt: skip


def _kept(path, spec: Stream, inp: np.ndarray, out: np.ndarray, lines) -> tuple[np.ndarray, dict]:
    """Rows to keep (indices) and the skipped counts; negative counts raise."""
    check_tokens(path, spec.input, inp, lines)
    check_tokens(path, spec.output, out, lines)
    noun_in, noun_out = spec.nouns or (spec.input, spec.output)
    keep, skipped = skip_mask({f"zero {noun_in} (nothing to prefill)": inp == 0,
                               f"zero {noun_out} (nothing to decode)": out == 0})  # fmt: skip
    return np.flatnonzero(keep), skipped


def _wall_ns(path, stamps: pd.Series, name: str) -> np.ndarray:
    """Datetimes (UTC) as epoch nanoseconds; the first unparsable one raises with its line."""
    parsed = pd.to_datetime(stamps, format=TIME_FORMAT, errors="coerce")
    bad = np.flatnonzero(parsed.isna().to_numpy())
    if bad.size:
        i = int(bad[0])
        raise TraceError(path, f"{name} {stamps.iloc[i]!r} is not {TIME_FORMAT}", i + 2)
    return parsed.to_numpy(dtype="datetime64[ns]").astype(np.int64)


def _timed(fmt: str, path, columns: dict, raw: np.ndarray, per_second: float, read: int,
           skipped: dict, metadata: dict | None = None, lines=None) -> ReadResult:
    """The result of a stream timed from its own start: ``raw`` arrivals of the kept rows
    in units of 1 / ``per_second`` s (``lines``: their source lines)."""
    columns["arrival_s"] = raw.astype(np.float64) / per_second
    requests, _ = finish(fmt, columns, metadata=metadata, path=path, lines=lines)
    first = float(raw.min()) / per_second if raw.size else 0.0
    meta = {"source_format": fmt, "source_path": str(path), "source_first_arrival_s": first}
    return ReadResult(requests, None, meta, rows_read=read, skipped=skipped)


def read_csv_stream(path, fmt: str) -> ReadResult:
    """Read a CSV request stream of format ``fmt`` (``vidur-csv`` or ``azure-csv``).

    Returns
    -------
    ReadResult
        ``requests`` with ``arrival_s`` (s, first arrival = 0) and token counts.
    """
    path, spec = Path(path), STREAMS[fmt]
    kinds = {spec.input: "int", spec.output: "int"}
    if spec.unit != WALL:
        kinds[spec.arrival] = "float"
    df = read_csv(path, spec.columns, kinds)
    ns = _wall_ns(path, df[spec.arrival], spec.arrival) if spec.unit == WALL else None
    lines = np.arange(len(df), dtype=np.int64) + 2
    inp, out = df[spec.input].to_numpy(np.int64), df[spec.output].to_numpy(np.int64)
    idx, skipped = _kept(path, spec, inp, out, lines)
    columns = {"request_id": [str(i) for i in idx], "arrival_s": None,
               "input_tokens": inp[idx], "output_tokens": out[idx]}  # fmt: skip
    if ns is None:
        raw = df[spec.arrival].to_numpy(np.float64)[idx]
        return _timed(fmt, path, columns, raw, PER_SECOND[spec.unit], len(df), skipped, lines=lines[idx])
    t0 = int(ns[idx].min()) if idx.size else 0
    columns["arrival_s"] = (ns[idx] - t0) / 1e9  # integer ns difference: exact before scaling
    requests, _ = finish(fmt, columns, origin_epoch_s=t0 / 1e9, path=path, lines=lines[idx])
    meta = {"source_format": fmt, "source_path": str(path), "origin_epoch_s": t0 / 1e9}
    return ReadResult(requests, None, meta, rows_read=len(df), skipped=skipped)


def parse_stream(path, fmt: str) -> dict:
    """Parse and check a JSONL request stream, keeping every line (no skipping).

    Returns
    -------
    dict
        One int64 (float64 for a ``ms`` arrival) array per key of the format's
        ``columns`` but its prompt list, ``records`` (the parsed lines) and ``lines``
        (1-based file line of each record).
    """
    spec = STREAMS[fmt]
    records, lines = read_jsonl(path, spec.columns)
    cols = {}
    for key in spec.columns:
        if key == spec.prompt:
            continue
        floats = key == spec.arrival and spec.unit != "ns"
        cols[key] = (float_column if floats else int_column)(records, key, path, lines)
    cols.update(records=records, lines=lines)
    return cols


def check_token_ids(path, ids: list, input_toks: np.ndarray, lines) -> None:
    """Each ``input_tok_ids`` entry None or a list of ``input_toks`` ids, else TraceError."""
    for i, row in enumerate(ids):
        if row is None:
            continue
        if not isinstance(row, list):
            raise TraceError(
                path, f"'input_tok_ids' must be a list, found {type(row).__name__}", int(lines[i])
            )
        if len(row) != input_toks[i]:
            raise TraceError(path, f"len(input_tok_ids) = {len(row)} but input_toks = {input_toks[i]}",
                             int(lines[i]))  # fmt: skip


def parse_workload(path) -> dict:
    """Parse and check a ``workload-jsonl`` file, keeping every line (no skipping).

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
    cols = parse_stream(path, "workload-jsonl")
    for name in ("input_toks", "output_toks"):  # (read_trace checks them too; mist validate reads only this)
        bad = np.flatnonzero(cols[name] < 0)
        if bad.size:
            raise TraceError(path, f"{name} is negative ({cols[name][bad[0]]})", int(cols["lines"][bad[0]]))
    ids = [rec.get("input_tok_ids") for rec in cols.pop("records")]
    check_token_ids(path, ids, cols["input_toks"], cols["lines"])
    cols["input_tok_ids"] = ids
    return cols


def _ids(row, least: int, most: int) -> bool:
    """Whether ``row`` is a list of integers (not bools, not nulls) in ``least .. most``."""
    return isinstance(row, list) and all(
        isinstance(v, int) and not isinstance(v, bool) and least <= v <= most for v in row
    )


def token_id_array(ids: list, path, lines) -> pa.Array:
    """``list<int32>`` array of token-id lists (None = no list); an entry that is not a
    token id (an integer in 0 .. 2^31 - 1) raises with its line."""
    for i, row in enumerate(ids):
        if row is not None and not _ids(row, 0, 2**31 - 1):
            bad = next((v for v in row if not _ids([v], 0, 2**31 - 1)), row) if isinstance(row, list) else row
            raise TraceError(path, f"input_tok_ids: token ids must be integers in 0 .. 2^31-1, found {bad!r}",
                             int(lines[i]))  # fmt: skip
    return pa.array(ids, type=pa.list_(pa.int32()))


def block_hash_array(path, hashes: list, input_len: np.ndarray, lines) -> pa.Array:
    """``list<int64>`` array of Mooncake ``hash_ids``: ``ceil(input_len / 512)`` integers
    each (any 64-bit value: they are ids, compared only for equality)."""
    expect = -(-input_len // BLOCK_TOKENS)
    for i, h in enumerate(hashes):
        if not isinstance(h, list) or len(h) != expect[i]:
            got = len(h) if isinstance(h, list) else type(h).__name__
            raise TraceError(
                path,
                f"hash_ids has {got} entries, expected ceil({input_len[i]}/{BLOCK_TOKENS}) = {expect[i]}",
                int(lines[i]),
            )
        if not _ids(h, -(2**63), 2**63 - 1):
            bad = next(v for v in h if not _ids([v], -(2**63), 2**63 - 1))
            raise TraceError(path, f"hash_ids: must be 64-bit integers, found {bad!r}", int(lines[i]))
    return pa.array(hashes, type=pa.list_(pa.int64()))


def read_jsonl_stream(path, fmt: str) -> ReadResult:
    """Read a JSONL request stream of format ``fmt`` (``mooncake-jsonl`` or ``workload-jsonl``).

    Returns
    -------
    ReadResult
        ``requests`` with ``arrival_s`` (s, first arrival = 0), token counts and the
        prompt list (``block_hashes`` or ``prompt_token_ids``); no ``tokens`` table.
    """
    path, spec = Path(path), STREAMS[fmt]
    cols = parse_stream(path, fmt)
    records, lines = cols["records"], cols["lines"]
    inp, out = cols[spec.input], cols[spec.output]
    prompts = [rec.get(spec.prompt) for rec in records]
    if spec.prompt == "input_tok_ids":  # checked while parsing, as attach_workload does
        check_token_ids(path, prompts, inp, lines)
    idx, skipped = _kept(path, spec, inp, out, lines)
    columns = {"request_id": [str(i) for i in idx], "arrival_s": None,
               "input_tokens": inp[idx], "output_tokens": out[idx]}  # fmt: skip
    metadata = None
    if spec.prompt == "hash_ids":
        hashes = block_hash_array(path, prompts, inp, lines)
        columns["block_hashes"] = hashes.take(pa.array(idx))
        metadata = {"mist.hash_block_tokens": BLOCK_TOKENS}
    else:
        columns["prompt_token_ids"] = token_id_array([prompts[i] for i in idx], path, lines[idx])
    result = _timed(fmt, path, columns, cols[spec.arrival][idx], PER_SECOND[spec.unit],
                    len(records), skipped, metadata, lines[idx])  # fmt: skip
    if metadata:
        result.meta["hash_block_tokens"] = BLOCK_TOKENS
    return result


def stream_reader(fmt: str):
    """The reader of stream format ``fmt``: ``reader(path) -> ReadResult``."""
    return partial(read_csv_stream if fmt.endswith("-csv") else read_jsonl_stream, fmt=fmt)
