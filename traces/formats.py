"""Source trace formats: the reader table, format detection and :func:`read_trace`.

Adding a format touches one new module in :mod:`traces.readers`, one entry in
:data:`READERS` and one rule in :func:`detect_format`.
"""

from __future__ import annotations

import json
from pathlib import Path

from traces.errors import TraceError
from traces.readers.azure import read_azure_csv
from traces.readers.base import ReadResult
from traces.readers.mooncake import read_mooncake_jsonl
from traces.readers.vidur import read_vidur_csv
from traces.readers.vllm_bench import is_bench_result, read_vllm_bench
from traces.readers.vllm_run import attach_workload, read_vllm_run
from traces.readers.workload import read_workload_jsonl

__all__ = ["READERS", "ReadResult", "attach_workload", "detect_format", "read_trace"]

READERS = {
    "vllm-run": read_vllm_run,
    "vllm-bench": read_vllm_bench,
    "workload-jsonl": read_workload_jsonl,
    "azure-csv": read_azure_csv,
    "vidur-csv": read_vidur_csv,
    "mooncake-jsonl": read_mooncake_jsonl,
}

# Header (CSV) or key (JSONL) signatures: the first format whose keys are all present wins.
CSV_HEADERS = {
    "azure-csv": {"TIMESTAMP", "ContextTokens", "GeneratedTokens"},
    "vidur-csv": {"arrived_at", "num_prefill_tokens", "num_decode_tokens"},
}
JSONL_KEYS = {
    "vllm-run": {"request_id", "arrival_time", "queued_ts", "first_token_ts"},
    "workload-jsonl": {"input_toks", "output_toks", "arrival_time_ns"},
    "mooncake-jsonl": {"timestamp", "input_length", "output_length", "hash_ids"},
}


def _unsure(path, why: str) -> TraceError:
    return TraceError(
        path,
        f"cannot tell the trace format: {why}; known formats: {', '.join(READERS)} "
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
    for p in sorted(path.glob("*.json")):
        try:
            if is_bench_result(json.loads(p.read_text(encoding="utf-8"))):
                return "vllm-bench"
        except (OSError, UnicodeDecodeError, json.JSONDecodeError):
            continue
    raise _unsure(path, "directory has neither requests.jsonl nor a vllm bench result JSON")


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
        except json.JSONDecodeError as exc:
            raise _unsure(path, f"first line is not JSON ({exc.msg})") from exc
        if not isinstance(first, dict):
            raise _unsure(path, "first line is not a JSON object")
        return _by_keys(path, set(first), JSONL_KEYS, "JSONL keys")
    if suffix == ".json":
        try:
            obj = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise _unsure(path, f"not readable JSON ({exc})") from exc
        if is_bench_result(obj):
            return "vllm-bench"
        keys = sorted(obj)[:8] if isinstance(obj, dict) else type(obj).__name__
        raise _unsure(path, f"JSON with keys {keys} is no vllm bench result")
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
    if fmt not in READERS:
        raise TraceError(path, f"unknown format {fmt!r}; known formats: {', '.join(READERS)}")
    if not Path(path).exists():
        raise TraceError(path, "not found")
    return READERS[fmt](path)
