"""Reader for a measured vLLM serving run directory (``vllm-run``).

Layout (LLMServingSim ``bench`` output): ``requests.jsonl`` with one object per
request — ``request_id``, ``input_toks``, ``output_toks``, ``arrival_time`` (client
wall clock, epoch s) and ``queued_ts``, ``scheduled_ts``, ``first_token_ts``,
``last_token_ts`` (engine *monotonic* clock, s); ``meta.json`` with the engine
settings (``engine_kwargs``); optionally ``cluster.json`` (hardware) and
``timeseries.csv`` (1 s ticks of running/waiting/KV use; only its path is recorded).

Clock alignment
---------------
The two clocks differ by an unknown constant ``C`` (drift over a run of minutes is
negligible). A request reaches the engine no earlier than it arrived, so
``queued_ts_i - C >= arrival_time_i`` for all ``i``, i.e. ``C <= min_i(queued_ts_i -
arrival_time_i)``. We take the tightest bound, ``C = min_i(queued_ts_i -
arrival_time_i)``: the request with the smallest frontend latency is taken to have
none, and an engine time ``t`` maps to wall time ``t - C``. Engine times are thus
at most that request's true frontend latency (typically well under a millisecond
to a few ms) early, which biases TTFT/E2E low by that much and never makes
``queued_s < arrival_s``. ``C`` (s) is stored as ``meta["clock_offset_s"]`` and in the
table metadata ``mist.clock_offset_s``.

Validation (each raises :class:`~traces.errors.TraceError` naming file and line):
malformed JSON, missing keys, non-numeric or null values, non-positive token counts,
duplicate request ids (both lines named), timestamps out of order (``queued <=
scheduled <= first_token <= last_token``; the pair is named), a missing
``meta.json`` or missing ``engine_kwargs.max_num_seqs`` / ``max_num_batched_tokens``.
No row is ever skipped: a measured run is taken whole or not at all.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pyarrow as pa

from mist.traces.errors import TraceError
from mist.traces.io import read_json_object
from mist.traces.readers.base import ReadResult, finish, float_column, int_column, read_jsonl
from mist.traces.readers.streams import parse_workload, token_id_array

FORMAT = "vllm-run"
TIMELINE = (
    ("queued_ts", "queued_s"),
    ("scheduled_ts", "scheduled_s"),
    ("first_token_ts", "first_token_s"),
    ("last_token_ts", "finished_s"),
)
REQUIRED = ("request_id", "input_toks", "output_toks", "arrival_time") + tuple(
    k for k, _ in TIMELINE
)
ENGINE_KEYS = ("max_num_seqs", "max_num_batched_tokens")


#: engine settings that, when a run gives them, must be positive integers
POSITIVE_IF_GIVEN = ("tensor_parallel_size", "data_parallel_size", "block_size", "num_gpu_blocks",
                     "num_gpu_blocks_override")


def _positive_number(value) -> bool:
    return not isinstance(value, bool) and isinstance(value, (int, float)) and math.isfinite(value) and value > 0


def _check_cluster(path: Path, cluster: dict) -> None:
    """The figures the replay reads from ``cluster.json``: positive numbers where given."""
    link_bw = cluster.get("link_bw")
    if link_bw not in (None, 0) and not _positive_number(link_bw):  # none or 0: the datasheet's link
        raise TraceError(path, f"link_bw must be a positive number (GB/s), got {link_bw!r}")
    if cluster.get("link_latency") is not None and not (
            _positive_number(cluster["link_latency"]) or cluster["link_latency"] == 0):
        raise TraceError(path, f"link_latency must be a number >= 0 (ns), got {cluster['link_latency']!r}")
    nodes = cluster.get("nodes") if isinstance(cluster.get("nodes"), list) else []
    for i, node in enumerate(nodes):
        instances = node.get("instances") if isinstance(node, dict) else None
        for j, inst in enumerate(instances if isinstance(instances, list) else []):
            mem = inst.get("npu_mem") if isinstance(inst, dict) else None
            if not isinstance(mem, dict):
                continue
            where = f"nodes[{i}].instances[{j}].npu_mem"
            if mem.get("mem_size") is not None and not _positive_number(mem["mem_size"]):
                raise TraceError(path, f"{where}.mem_size must be a positive number (GB), got {mem['mem_size']!r}")
            util = mem.get("mem_util")
            if util is not None and not (_positive_number(util) and util <= 1):
                raise TraceError(path, f"{where}.mem_util must be in (0, 1], got {util!r}")


def run_dir(path) -> Path:
    """The run directory for ``path`` (the directory or its ``requests.jsonl``)."""
    path = Path(path)
    if path.is_file() and path.name == "requests.jsonl":
        path = path.parent
    if not (path / "requests.jsonl").is_file():
        raise TraceError(path, "not a vLLM run directory: requests.jsonl not found")
    return path


def read_run_meta(directory) -> dict:
    """``meta.json`` (+ ``cluster`` from ``cluster.json``, + ``timeseries_path``).

    Raises
    ------
    TraceError
        ``meta.json`` missing or malformed, or ``engine_kwargs`` lacking a required key.
    """
    directory = Path(directory)
    meta_path = directory / "meta.json"
    if not meta_path.is_file():
        raise TraceError(meta_path, "missing: a vLLM run needs meta.json with engine_kwargs")
    meta = read_json_object(meta_path)
    engine = meta.get("engine_kwargs")
    if not isinstance(engine, dict):
        raise TraceError(meta_path, "missing key 'engine_kwargs' (an object of engine settings)")
    missing = [k for k in ENGINE_KEYS if not isinstance(engine.get(k), int) or isinstance(engine.get(k), bool)]
    if missing:
        raise TraceError(meta_path, f"engine_kwargs lacks integer {missing}")
    for key in (*ENGINE_KEYS, *POSITIVE_IF_GIVEN):
        value = engine.get(key)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise TraceError(meta_path, f"engine_kwargs.{key} must be a positive integer, got {value!r}")
    util = engine.get("gpu_memory_utilization")
    if util is not None and (isinstance(util, bool) or not isinstance(util, (int, float)) or not 0 < util <= 1):
        raise TraceError(meta_path, f"engine_kwargs.gpu_memory_utilization must be in (0, 1], got {util!r}")
    if (directory / "cluster.json").is_file():
        meta["cluster"] = read_json_object(directory / "cluster.json")
        _check_cluster(directory / "cluster.json", meta["cluster"])
    if (directory / "timeseries.csv").is_file():
        meta["timeseries_path"] = str(directory / "timeseries.csv")
    return meta


def _check_ids(path, ids: list[str], lines) -> None:
    seen: dict[str, int] = {}
    for rid, line in zip(ids, lines, strict=True):
        if rid in seen:
            raise TraceError(
                path, f"duplicate request_id {rid!r} (first on line {seen[rid]})", int(line)
            )
        seen[rid] = int(line)


def _check_order(path, times: dict[str, np.ndarray], lines) -> None:
    keys = [k for k, _ in TIMELINE]
    for a, b in zip(keys[:-1], keys[1:], strict=True):
        bad = np.flatnonzero(times[a] > times[b])
        if bad.size:
            i = int(bad[0])
            raise TraceError(
                path,
                f"timestamps out of order: {a} ({float(times[a][i])!r}) > {b} ({float(times[b][i])!r})",
                int(lines[i]),
            )


def read_vllm_run(path) -> ReadResult:
    """Read a vLLM run directory (see the module docstring for layout and clocks).

    Parameters
    ----------
    path : str or Path
        The run directory, or its ``requests.jsonl``.

    Returns
    -------
    ReadResult
        ``requests`` with ``arrival_s``, ``queued_s``, ``scheduled_s``,
        ``first_token_s``, ``finished_s`` (s, one origin: the earliest arrival);
        ``meta`` = meta.json + ``cluster`` + ``timeseries_path`` + ``clock_offset_s``.
    """
    directory = run_dir(path)
    req_path = directory / "requests.jsonl"
    meta = read_run_meta(directory)
    records, lines = read_jsonl(req_path, REQUIRED)
    ids = []
    for rec, line in zip(records, lines, strict=True):
        rid = rec["request_id"]
        if not isinstance(rid, (str, int)) or isinstance(rid, bool):
            raise TraceError(req_path, f"'request_id' must be a string, found {rid!r}", int(line))
        ids.append(str(rid))
    _check_ids(req_path, ids, lines)
    tokens = {k: int_column(records, k, req_path, lines) for k in ("input_toks", "output_toks")}
    for name, values in tokens.items():
        bad = np.flatnonzero(values <= 0)
        if bad.size:
            raise TraceError(
                req_path, f"{name} must be positive, found {values[bad[0]]}", int(lines[bad[0]])
            )
    times = {k: float_column(records, k, req_path, lines) for k in REQUIRED[3:]}
    _check_order(req_path, times, lines)
    arrival = times["arrival_time"]
    offset = float(np.min(times["queued_ts"] - arrival))
    columns = {
        "request_id": ids,
        "model": [meta.get("model")] * len(ids),
        "arrival_s": arrival,
        "input_tokens": tokens["input_toks"],
        "output_tokens": tokens["output_toks"],
    }
    # Subtract the offset before the origin so both clocks meet in epoch seconds.
    for src, dst in TIMELINE:
        columns[dst] = times[src] - offset
    requests, _ = finish(
        FORMAT, columns, origin_epoch_s=0.0, metadata={"mist.clock_offset_s": repr(offset)}
    )
    meta.update(source_format=FORMAT, source_path=str(directory), clock_offset_s=offset)
    return ReadResult(requests, None, meta, rows_read=len(records), skipped={})


def attach_workload(requests: pa.Table, workload_path) -> pa.Table:
    """Fill ``prompt_token_ids`` from the workload JSONL that drove the run.

    Workload line ``i`` (the ``i``-th record) belongs to the ``i``-th request in the
    run's source order, which is the table's row order unless the reader reordered
    rows (``mist.reordered == "1"``; then the pairing is ambiguous and this raises).

    Parameters
    ----------
    requests : pa.Table
        Canonical ``requests`` table, as returned by a reader.
    workload_path : str or Path
        ShareGPT workload JSONL with ``input_tok_ids`` on every line.

    Raises
    ------
    TraceError
        Row-count mismatch, a line without ``input_tok_ids``, or ``input_toks``
        differing from the request's ``input_tokens`` (with the workload line).
    """
    meta = requests.schema.metadata or {}
    if meta.get(b"mist.reordered") == b"1":
        raise TraceError(
            workload_path, "requests were reordered by arrival; cannot pair by position"
        )
    w = parse_workload(workload_path)
    lines = w["lines"]
    if len(lines) != requests.num_rows:
        raise TraceError(
            workload_path, f"{len(lines)} workload records but {requests.num_rows} requests"
        )
    measured = requests.column("input_tokens").to_numpy()
    bad = np.flatnonzero(measured != w["input_toks"])
    if bad.size:
        i = int(bad[0])
        rid = requests.column("request_id")[i].as_py()
        raise TraceError(
            workload_path,
            f"input_toks = {w['input_toks'][i]} but request {rid!r} has {measured[i]} input tokens",
            int(lines[i]),
        )
    for i, ids in enumerate(w["input_tok_ids"]):
        if ids is None:
            raise TraceError(workload_path, "no 'input_tok_ids' on this line", int(lines[i]))
    col = token_id_array(w["input_tok_ids"], workload_path, lines)
    idx = requests.schema.get_field_index("prompt_token_ids")
    return requests.set_column(idx, requests.schema.field(idx), col)
