"""Reader for LLM-Inference-Bench offline batch tables (argonne-lcf/LLM-Inference-Bench, ``Plots/``).

One row is one offline batch: ``batch_size`` requests of ``input_tokens`` prompt tokens,
each generating ``output_tokens`` tokens, on ``num_devices`` accelerators of one kind,
served by one framework; ``latency_s`` is the time of the whole batch (s).  Three
layouts are read, told apart by their header:

``All_results.csv``
    ``Hardware, Num of Hardware, Framework, Model, Input Output Length, Batch Size,
    Latency, Throughput``; input and output length are both ``Input Output Length``.
``TP_PP_Results.csv``
    the same plus ``Parallelism Type`` ("Tensor Parallelism", "PP", "Hybrid TP = 2 and
    EP = 2" …), normalised to ``tp``, ``pp``, ``ep``, ``tp+pp``, ``tp+ep``.
``all_results_TTFT_ITL.csv``
    ``Input Length, Output Length, TTFT Latency, end_latency``; blank lines separate
    groups.  With one output token the batch ends at its first token, so ``latency_s``
    is ``TTFT Latency`` (s).  ``end_latency`` is read as the inter-token latency in ms
    (the repository plots it as "ITL", and its magnitude — 13.2 for Llama-2-7B at batch 16
    on one H100 — is a decode step in ms), stored in seconds as ``itl_s``; it is empty
    on some rows.

The rows are the canonical ``offline_batch_bench`` table
(:data:`mist.traces.schema.OFFLINE_BATCH_BENCH`); this module only maps each layout's
columns onto it. Units: latencies in s (``itl_s`` converted from ms), throughput in
tokens/s as the source states it.  Nothing is dropped: a malformed row raises :class:`TraceError`
with its line (header = line 1); blank lines are not rows.
"""

from __future__ import annotations

import csv
import math
import re
from pathlib import Path

import pyarrow as pa

from mist.traces.checks import MAX_TOKENS, MAX_TRACE_S
from mist.traces.errors import TraceError
from mist.traces.schema import OFFLINE_BATCH_BENCH

FORMAT = "llm-inference-bench"

_COMMON = ("Hardware", "Num of Hardware", "Framework", "Model")
#: layout name -> (its header, raw column -> canonical column)
LAYOUTS = {
    "all_results": (
        (*_COMMON, "Input Output Length", "Batch Size", "Latency", "Throughput"),
        {"Latency": "latency_s", "Throughput": "throughput_tok_s"},
    ),
    "tp_pp": (
        (*_COMMON, "Input Output Length", "Batch Size", "Parallelism Type", "Latency",
         "Throughput"),
        {"Latency": "latency_s", "Throughput": "throughput_tok_s"},
    ),
    "ttft_itl": (
        (*_COMMON, "Input Length", "Output Length", "Batch Size", "TTFT Latency",
         "end_latency"),
        {"TTFT Latency": "latency_s"},
    ),
}
_OPTIONAL = {"end_latency", "Throughput"}
#: how many trailing fields a row of a layout may leave off (the TTFT/ITL file's rows without
#: an ITL end at the TTFT); elsewhere a short row is a truncated one
TRAILING_OPTIONAL = {"all_results": 0, "tp_pp": 0, "ttft_itl": 1}
_INTS = {"Num of Hardware": "num_devices", "Input Output Length": "input_tokens",
         "Input Length": "input_tokens", "Output Length": "output_tokens",
         "Batch Size": "batch_size"}
_TEXT = {"Hardware": "hardware", "Framework": "framework", "Model": "model"}


def parallelism_kind(text: str) -> str:
    """Normalise a ``Parallelism Type`` cell: ``tp``, ``pp``, ``ep``, ``tp+pp``, ``tp+ep``.

    Raises
    ------
    ValueError
        When the text names none of tensor, pipeline or expert parallelism.
    """
    t = text.casefold()
    kinds = [k for k, pat in (("tp", r"\btp\b|tensor"), ("pp", r"\bpp\b|pipeline"),
                              ("ep", r"\bep\b|expert")) if re.search(pat, t)]
    if not kinds:
        raise ValueError(f"unknown parallelism {text!r}")
    return "+".join(kinds)


def _layout(path, header: list[str]) -> str:
    names = [h.strip() for h in header]
    for name, (cols, _) in LAYOUTS.items():
        if names == list(cols):
            return name
    known = "; ".join(", ".join(c) for c, _ in LAYOUTS.values())
    raise TraceError(path, f"unrecognised header {names}; expected one of: {known}", 1)


def _number(path, line: int, col: str, cell: str, *, integer: bool) -> float | int:
    try:
        value = float(cell)
    except ValueError:
        value = math.nan
    most = MAX_TOKENS if integer else MAX_TRACE_S  # counts; s (or tokens/s)
    if not math.isfinite(value) or value <= 0 or value > most or (integer and value != round(value)):
        want = "a positive integer" if integer else "a positive number"
        want += f" (at most {most:g})" if math.isfinite(value) and value > most else ""
        raise TraceError(path, f"column {col!r} must be {want}, found {cell!r}", line)
    return int(round(value)) if integer else value


def _row(path, line: int, layout: str, cells: list[str]) -> dict:
    cols, numbers = LAYOUTS[layout]
    if len(cells) > len(cols) or len(cells) < len(cols) - TRAILING_OPTIONAL[layout]:
        raise TraceError(path, f"expected {len(cols)} fields, found {len(cells)} (a truncated or malformed row)",
                         line)
    cells = [c.strip() for c in cells] + [""] * (len(cols) - len(cells))
    out = {"line": line, "parallelism": "", "throughput_tok_s": None, "ttft_s": None,
           "itl_s": None}
    for col, cell in zip(cols, cells):
        if col in _OPTIONAL and cell == "":
            continue
        if col in _TEXT:
            if not cell:
                raise TraceError(path, f"column {col!r} is empty", line)
            out[_TEXT[col]] = cell
        elif col in _INTS:
            out[_INTS[col]] = _number(path, line, col, cell, integer=True)
        elif col == "Parallelism Type":
            try:
                out["parallelism"] = parallelism_kind(cell)
            except ValueError as exc:
                raise TraceError(path, str(exc), line) from exc
        elif col == "end_latency":
            out["itl_s"] = _number(path, line, col, cell, integer=False) / 1e3  # ms -> s
        else:
            out[numbers[col]] = _number(path, line, col, cell, integer=False)
    if layout == "ttft_itl":
        out["ttft_s"] = out["latency_s"]
    else:
        out["output_tokens"] = out["input_tokens"]
    return out


def read_llm_inference_bench(path) -> pa.Table:
    """Read one LLM-Inference-Bench CSV into an ``offline_batch_bench`` table.

    Parameters
    ----------
    path : str or Path
        ``All_results.csv``, ``TP_PP_Results.csv`` or ``all_results_TTFT_ITL.csv`` (or a
        file with one of their headers).

    Returns
    -------
    pa.Table
        One row per batch, in file order; metadata also holds ``mist.source_format``
        and ``mist.layout``.

    Raises
    ------
    TraceError
        Unreadable file, unknown header, wrong field count, empty or non-positive cells,
        an unknown parallelism type — with the line; or a file without data rows.
    """
    path = Path(path)
    try:
        with path.open(newline="", encoding="utf-8") as f:
            rows = list(csv.reader(f))
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise TraceError(path, f"cannot read CSV ({exc})") from exc
    if not rows:
        raise TraceError(path, "empty file")
    layout = _layout(path, rows[0])
    records = [_row(path, i, layout, cells) for i, cells in enumerate(rows[1:], start=2)
               if any(c.strip() for c in cells)]
    if not records:
        raise TraceError(path, "no data rows")
    table = pa.Table.from_pylist(records, schema=OFFLINE_BATCH_BENCH)
    meta = {**OFFLINE_BATCH_BENCH.metadata, b"mist.source_format": FORMAT.encode(),
            b"mist.layout": layout.encode()}
    return table.replace_schema_metadata(meta)
