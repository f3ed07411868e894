"""Source formats: the reader tables, format detection, :func:`read_trace` and
:func:`read_profile`.

Request traces are read by :data:`READERS` into ``requests`` tables; operator
profiles (third-party operator latency measurements) by :data:`PROFILE_READERS`
into ``operator_profile`` tables. Adding a request stream that differs from the
others only in its column names and units is one entry in
:data:`mist.traces.readers.streams.STREAMS`; any other format is one new module in
:mod:`mist.traces.readers`, one entry in one of the two tables and one rule in
:func:`detect_format`.
"""

from __future__ import annotations

import json
from pathlib import Path

from mist.traces.errors import TraceError
from mist.traces.readers.aiconfigurator import is_kernel_db, read_kernel_db_profile
from mist.traces.readers.base import ReadResult
from mist.traces.readers.kineto import is_kineto_trace, read_kineto_json
from mist.traces.readers.profile_base import ProfileResult, Resolver
from mist.traces.readers.splitwise import read_splitwise_csv
from mist.traces.readers.streams import STREAMS, stream_reader
from mist.traces.readers.vidur_profile import read_vidur_comm, read_vidur_mlp
from mist.traces.readers.vllm_bench import is_bench_result, read_vllm_bench
from mist.traces.readers.vllm_run import attach_workload, read_vllm_run

__all__ = [
    "PROFILE_READERS", "READERS", "ProfileResult", "ReadResult", "attach_workload",
    "detect_format", "is_profile_format", "read_profile", "read_trace",
]  # fmt: skip

# Request-trace formats: reader(path) -> ReadResult. The request streams (one column
# map each, :data:`mist.traces.readers.streams.STREAMS`) share one reader per file kind.
READERS = {
    "vllm-run": read_vllm_run,
    "vllm-bench": read_vllm_bench,
    **{fmt: stream_reader(fmt) for fmt in STREAMS},
}

# Operator-profile formats: reader(path, resolve_hardware=None) -> ProfileResult.
PROFILE_READERS = {
    "aiconfigurator-dir": read_kernel_db_profile,
    "vidur-mlp-csv": read_vidur_mlp,
    "vidur-comm-csv": read_vidur_comm,
    "splitwise-csv": read_splitwise_csv,
    "kineto-json": read_kineto_json,
}

# Header (CSV) or key (JSONL) signatures: the first format whose keys are all present wins.
CSV_HEADERS = {
    **{fmt: set(s.columns) for fmt, s in STREAMS.items() if fmt.endswith("-csv")},
    "vidur-mlp-csv": {"num_tokens", "num_tensor_parallel_workers"},
    "vidur-comm-csv": {"num_workers", "devices_per_node", "size", "collective"},
    "splitwise-csv": {"tensor_parallel", "prompt_size", "batch_size", "token_size", "prompt_time",
                      "token_time"},
}  # fmt: skip
JSONL_KEYS = {
    "vllm-run": {"request_id", "arrival_time", "queued_ts", "first_token_ts"},
    **{fmt: set(s.columns) for fmt, s in STREAMS.items() if fmt.endswith("-jsonl")},
}


def _unsure(path, why: str) -> TraceError:
    return TraceError(
        path,
        f"cannot tell the trace format: {why}; known formats: {', '.join([*READERS, *PROFILE_READERS])} "
        "(pass one explicitly, e.g. --format vllm-run)",
    )


def _first_line(path: Path) -> str:
    try:
        with path.open(encoding="utf-8") as f:
            for line in f:
                if line.strip():
                    return line.strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise TraceError(path, f"cannot read file ({exc})") from exc
    raise _unsure(path, "the file is empty")


def _by_keys(path, keys: set, table: dict[str, set], what: str) -> str:
    for name, needed in table.items():
        if needed <= keys:
            return name
    raise _unsure(path, f"unrecognised {what} {sorted(keys)[:8]}")


def _detect_dir(path: Path) -> str:
    if (path / "requests.jsonl").is_file():
        return "vllm-run"
    if is_kernel_db(path):
        return "aiconfigurator-dir"
    for p in sorted(path.glob("*.json")):
        try:
            if is_bench_result(json.loads(p.read_text(encoding="utf-8"))):
                return "vllm-bench"
        except (OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError):
            continue
    raise _unsure(path, "directory has neither requests.jsonl, a vllm bench result JSON nor kernel tables "
                        "(gemm/<framework>/<version>/gemm_perf.parquet …)")


def detect_format(path) -> str:
    """Name of the :data:`READERS` entry that reads ``path``.

    Looks at a directory's files, the extension, a CSV's header, a JSONL file's first
    record or a JSON file's keys.

    Raises
    ------
    TraceError
        When ``path`` does not exist or matches no known format (the message lists them).
    """
    path = Path(path)
    if not path.exists():
        raise TraceError(path, "not found")
    if path.is_dir():
        return _detect_dir(path)
    suffix = path.suffix.lower()
    if suffix == ".csv":
        header = {h.strip() for h in _first_line(path).split(",")}
        return _by_keys(path, header, CSV_HEADERS, "CSV header")
    if suffix in (".jsonl", ".ndjson"):
        try:
            first = json.loads(_first_line(path))
        except (json.JSONDecodeError, RecursionError) as exc:
            raise _unsure(path, f"first line is not JSON ({exc.msg})") from exc
        if not isinstance(first, dict):
            raise _unsure(path, "first line is not a JSON object")
        return _by_keys(path, set(first), JSONL_KEYS, "JSONL keys")
    if suffix == ".json":
        try:
            obj = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
            raise _unsure(path, f"not readable JSON ({type(exc).__name__}: {str(exc)[:200]})") from exc
        if is_bench_result(obj):
            return "vllm-bench"
        if is_kineto_trace(obj):
            return "kineto-json"
        keys = sorted(obj)[:8] if isinstance(obj, dict) else type(obj).__name__
        raise _unsure(
            path, f"JSON with keys {keys} is neither a vllm bench result nor a Kineto trace"
        )
    raise _unsure(path, f"unknown extension {suffix!r}")


def read_trace(path, fmt: str | None = None) -> ReadResult:
    """Read one source trace into canonical tables.

    Parameters
    ----------
    path : str or Path
        File or run directory.
    fmt : str, optional
        A :data:`READERS` name; detected with :func:`detect_format` when omitted.

    Raises
    ------
    TraceError
        Unknown ``fmt``, undetectable format, or bad input (file, line, reason).
    """
    if fmt is None:
        fmt = detect_format(path)
    if fmt in PROFILE_READERS:
        raise TraceError(path, f"{fmt} is an operator-profile format: read it with read_profile")
    if fmt not in READERS:
        raise TraceError(path, f"unknown format {fmt!r}; known formats: {', '.join(READERS)}")
    if not Path(path).exists():
        raise TraceError(path, "not found")
    return READERS[fmt](path)


def is_profile_format(fmt: str) -> bool:
    """Whether ``fmt`` names an operator-profile format (:data:`PROFILE_READERS`)."""
    return fmt in PROFILE_READERS


def read_profile(
    path, fmt: str | None = None, resolve_hardware: Resolver | None = None
) -> ProfileResult:
    """Read one operator-profile source into an ``operator_profile`` table.

    Parameters
    ----------
    path : str or Path
        Profile file.
    fmt : str, optional
        A :data:`PROFILE_READERS` name; detected with :func:`detect_format` when omitted.
    resolve_hardware : callable, optional
        Source hardware name -> canonical name (``mist ingest`` passes the hardware
        catalog's alias lookup); the source spelling is kept without it.

    Raises
    ------
    TraceError
        Unknown or non-profile ``fmt``, undetectable format, or bad input.
    """
    if fmt is None:
        fmt = detect_format(path)
    if fmt in READERS:
        raise TraceError(path, f"{fmt} is a request-trace format, not an operator profile")
    if fmt not in PROFILE_READERS:
        raise TraceError(
            path, f"unknown format {fmt!r}; profile formats: {', '.join(PROFILE_READERS)}"
        )
    if not Path(path).exists():
        raise TraceError(path, "not found")
    return PROFILE_READERS[fmt](path, resolve_hardware)
