"""Reader for ``vllm bench serve --save-result --save-detailed`` JSON (``vllm-bench``).

The per-request arrays (same order, one entry per request; see
``vllm/benchmarks/serve.py``) used here are ``input_lens``, ``output_lens``
(tokens), ``ttfts``, ``latencies`` (s), ``itls`` (list of inter-chunk gaps, s),
``start_times`` (client ``time.perf_counter()`` when the request was sent, s,
arbitrary origin) and ``errors`` (``""`` = success). Derived, on the send clock:
``arrival_s = start_time``, ``first_token_s = arrival_s + ttft``,
``finished_s = arrival_s + latency``; the ``tokens`` table puts chunk 0 at
``first_token_s`` and chunk ``k`` at ``first_token_s + sum(itls[:k])``. A streamed
chunk may carry more than one token; requests where ``len(itls) + 1 !=
output_len`` are counted in ``meta["chunks_ne_output_tokens"]``.

``queue_times`` is the *client-side* wait on the benchmark's ``--max-concurrency``
semaphore (``start_time - scheduled dispatch time``), not the engine's queue: it is
not mapped to ``queued_s`` (left null). Its maximum is kept in
``meta["client_queue_max_s"]``; with ``max_concurrency`` unset it is ~0 and the
send times are the open-loop arrival times.

Version differences handled: ``errors``, ``itls``, ``queue_times`` and
``generated_texts`` may be absent (older or pooling outputs); without
``start_times`` (older vLLM) arrival times are unknown and the file is rejected, as is
a result saved without ``--save-detailed`` (no per-request arrays). Failed requests
(non-empty error, or no first token: ``ttft`` null/0 with ``latency`` 0, as vLLM
leaves them) and zero-output requests are skipped and counted by reason. There are no
request ids in the file: ``request_id`` is the 0-based position in the arrays.
No wall clock is stored, so no ``mist.origin_epoch_s``; ``meta`` keeps the file's
scalar fields (``date``, ``model_id``, aggregates in ms …).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from mist.traces.checks import CHECKS, MAX_TRACE_S, Check, violation
from mist.traces.errors import TraceError
from mist.traces.io import read_json_object
from mist.traces.readers.base import ReadResult, finish, skip_mask

FORMAT = "vllm-bench"
REQUIRED = ("input_lens", "output_lens", "ttfts", "latencies")
OPTIONAL = ("start_times", "itls", "queue_times", "errors", "generated_texts")


def is_bench_result(obj) -> bool:
    """Whether a parsed JSON object looks like a ``vllm bench serve`` result."""
    return isinstance(obj, dict) and ("ttfts" in obj or "mean_ttft_ms" in obj) and "duration" in obj


def find_bench_json(path) -> Path:
    """``path`` itself, or the single bench-result ``*.json`` inside a directory."""
    path = Path(path)
    if path.is_file():
        return path
    found = []
    for p in sorted(path.glob("*.json")):
        try:
            if is_bench_result(json.loads(p.read_text(encoding="utf-8"))):
                found.append(p)
        except (OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError):
            continue
    if len(found) != 1:
        what = "no" if not found else f"{len(found)}"
        raise TraceError(path, f"{what} vllm bench result JSON files here; pass the file itself")
    return found[0]


def _load(path: Path) -> dict:
    obj = read_json_object(path)
    if not is_bench_result(obj):
        raise TraceError(path, "not a vllm bench serve result (no 'duration'/'ttfts' keys)")
    if "ttfts" not in obj:
        raise TraceError(
            path, "no per-request arrays: the result was saved without --save-detailed"
        )
    if "start_times" not in obj:
        raise TraceError(
            path, "no 'start_times' (older vLLM): arrival times are unknown, cannot replay"
        )
    missing = [k for k in REQUIRED if k not in obj]
    if missing:
        raise TraceError(path, f"missing per-request arrays {missing}")
    n = len(obj["ttfts"])
    for k in REQUIRED + OPTIONAL:
        if k in obj and (not isinstance(obj[k], list) or len(obj[k]) != n):
            raise TraceError(path, f"{k!r} must be a list of {n} entries like 'ttfts'")
    return obj


def _numbers(path, obj, key) -> np.ndarray:
    """float64 array of ``obj[key]``; None or NaN -> NaN (missing); an infinity, a
    number beyond 1e300 or anything non-numeric raises."""
    out = np.empty(len(obj[key]), dtype=np.float64)
    for i, v in enumerate(obj[key]):
        if v is None:
            out[i] = np.nan
        elif isinstance(v, (int, float)) and not isinstance(v, bool) and (abs(v) <= 1e300 or v != v):
            out[i] = v  # (an int beyond float64 would raise OverflowError here)
        else:
            raise TraceError(path, f"{key}[{i}] must be a finite number, found {v!r}")
    return out


# Per-request arrays, declared: their :class:`~mist.traces.checks.Check` and whether a
# null/NaN entry is allowed. A null time is what vLLM leaves for a failed request (skipped
# and counted); a null or negative token count, a negative time or one beyond a century is
# corrupt input.
_TOKENS, _TIME = (CHECKS["requests"]["input_tokens"], False), (Check(0, MAX_TRACE_S), True)
ARRAYS = {
    "input_lens": _TOKENS, "output_lens": _TOKENS, "ttfts": _TIME, "latencies": _TIME,
    "start_times": _TIME, "queue_times": _TIME,
}  # fmt: skip


def _checked(path, obj, key) -> np.ndarray:
    """``_numbers`` of ``key`` checked against :data:`ARRAYS`: ``key[i]: reason, found v``."""
    values = _numbers(path, obj, key)
    check, nullable = ARRAYS[key]
    bad = violation(values, ~np.isnan(values) if nullable else np.ones(values.size, dtype=bool), check)
    if bad is not None:
        raise TraceError(path, f"{key}[{bad[0]}]: {bad[1]}, found {obj[key][bad[0]]!r}")
    return values


def _check_scalars(path, obj) -> None:
    """``duration`` (s) a finite number >= 0; each ``errors`` entry a string or null."""
    d = obj["duration"]
    if not (isinstance(d, (int, float)) and not isinstance(d, bool) and 0 <= d <= MAX_TRACE_S):
        raise TraceError(path, f"duration: must be a number of s in 0 .. {MAX_TRACE_S:g}, found {d!r}")
    for i, err in enumerate(obj.get("errors") or ()):
        if err is not None and not isinstance(err, str):
            raise TraceError(path, f"errors[{i}]: must be a string (the failure) or null, found {err!r}")


def _failure_reasons(errors: list, ttft: np.ndarray, latency: np.ndarray) -> dict[str, np.ndarray]:
    reasons: dict[str, np.ndarray] = {}
    n = len(errors)
    for i, err in enumerate(errors):
        if err:
            text = [s for s in str(err).strip().splitlines() if s.strip()] or ["?"]
            key = f"failed: {text[-1].strip()[:80]}"
            reasons.setdefault(key, np.zeros(n, dtype=bool))[i] = True
    no_first = ~(ttft > 0) | ~(latency > 0)  # NaN compares False
    reasons["failed: no first token (ttft or latency missing/0)"] = no_first
    return reasons


def read_vllm_bench(path) -> ReadResult:
    """Read a ``vllm bench serve`` detailed result (see module docstring).

    Parameters
    ----------
    path : str or Path
        The result JSON, or a directory holding exactly one.

    Returns
    -------
    ReadResult
        ``requests`` (``arrival_s``, ``first_token_s``, ``finished_s``, s) and a
        ``tokens`` table of streamed-chunk times (s, same origin) when ``itls`` exist.
    """
    path = find_bench_json(path)
    obj = _load(path)
    n = len(obj["ttfts"])
    _check_scalars(path, obj)
    start, ttft, latency = (_checked(path, obj, k) for k in ("start_times", "ttfts", "latencies"))
    in_lens, out_lens = (_checked(path, obj, k) for k in ("input_lens", "output_lens"))
    errors = obj.get("errors") or [""] * n
    reasons = _failure_reasons(errors, ttft, latency)
    reasons["no start time"] = np.isnan(start)
    reasons["zero output tokens"] = ~(out_lens > 0)
    reasons["zero input tokens"] = ~(in_lens > 0)
    keep, skipped = skip_mask(reasons)
    idx = np.flatnonzero(keep)
    for i in idx:
        if latency[i] < ttft[i]:
            raise TraceError(path, f"latencies[{i}]: is below ttfts[{i}] ({float(latency[i])!r} < {float(ttft[i])!r} s)")
    arrival = start[idx]
    columns = {
        "request_id": [str(i) for i in idx],
        "model": [obj.get("model_id")] * idx.size,
        "arrival_s": arrival,
        "input_tokens": in_lens[idx].astype(np.int64),
        "output_tokens": out_lens[idx].astype(np.int64),
        "first_token_s": arrival + ttft[idx],
        "finished_s": arrival + latency[idx],
    }
    tokens, chunk_mismatch, gap = _tokens(
        path, obj, idx, arrival + ttft[idx], columns["finished_s"], out_lens
    )
    requests, tok_table = finish(FORMAT, columns, tokens=tokens, path=path, lines=idx + 1)
    meta = {k: v for k, v in obj.items() if isinstance(v, (str, int, float, bool)) or v is None}
    queue = _checked(path, obj, "queue_times")[idx] if "queue_times" in obj else np.array([])
    meta.update(
        source_format=FORMAT,
        source_path=str(path),
        client_queue_max_s=float(np.nanmax(queue)) if queue.size else None,
        chunks_ne_output_tokens=chunk_mismatch,
        max_abs_latency_minus_last_chunk_s=gap,
    )
    return ReadResult(requests, tok_table, meta, rows_read=n, skipped=skipped)


def _tokens(path, obj, idx, first, finished, out_lens):
    """Chunk-time columns (``None`` without ``itls``), chunk/token mismatches, max gap (s)."""
    if "itls" not in obj:
        return None, None, None
    rids, index, times = [], [], []
    mismatch, gap = 0, 0.0
    for j, i in enumerate(idx):
        itl = obj["itls"][i]
        if not isinstance(itl, list) or not all(
            isinstance(v, (int, float)) and not isinstance(v, bool) and v >= 0 for v in itl
        ):
            raise TraceError(path, f"itls[{i}] must be a list of non-negative numbers")
        t = first[j] + np.concatenate(([0.0], np.cumsum(itl, dtype=np.float64)))
        rids.extend([str(i)] * t.size)
        index.append(np.arange(t.size, dtype=np.int32))
        times.append(t)
        mismatch += int(t.size != out_lens[i])
        gap = max(gap, abs(float(finished[j] - t[-1])))
    if not times:
        return (
            {"request_id": [], "token_index": np.array([], np.int32), "time_s": np.array([])},
            0,
            0.0,
        )
    cols = {
        "request_id": rids,
        "token_index": np.concatenate(index),
        "time_s": np.concatenate(times),
    }
    return cols, mismatch, gap
