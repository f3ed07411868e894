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
negligible). A request reaches the engine no earlier than it arrived, so each
difference ``d_i = queued_ts_i - arrival_time_i`` is ``C`` plus that request's
front-end delay (>= 0, usually well under a second: heavy queueing happens after
``queued_ts``). ``C`` is the minimum of the ``d_i`` that are *not impossibly early*:
one bad line must not move it. A difference below the fence ``median(d) -
max(CLOCK_TOLERANCE_S, CLOCK_MADS x 1.4826 x MAD(d))`` (1 s, or ten robust standard
deviations of the front-end delay when those are wider) would make the bulk of the
requests wait that long in the front end; it is taken as a broken stamp, not as the
clock. The request with the smallest remaining difference is taken to have no
front-end delay, and an engine time ``t`` maps to wall time ``t - C`` (TTFT/E2E are
biased low by at most that request's true delay, typically a few ms). ``C`` (s) is
``meta["clock_offset_s"]`` and the table metadata ``mist.clock_offset_s``. On the
shared and shipped runs nothing is excluded and ``C`` is the plain minimum.

Excluded requests
-----------------
A request whose engine stamps contradict the clock (below the fence), or whose own
stamps are out of order (``queued <= scheduled <= first_token <= last_token``), is
kept as a row (it loaded the real engine; a replay feeds it at its client send time)
with its timeline blanked (null), and listed, never silently:
``meta["excluded"]`` and the table metadata ``mist.excluded`` (JSON) hold
``{"request_id", "line", "reason"}`` for each; ``mist validate`` leaves them out of
the comparison and says so. When half of the requests or more are out of order, the
file as a whole is broken and is rejected (the first bad line named).

Validation (each raises :class:`~traces.errors.TraceError` naming file and line):
malformed JSON, missing keys, non-numeric or null values, non-positive token counts,
duplicate request ids (both lines named), timestamps out of order in half the requests
or more (the first pair named), a missing ``meta.json`` or missing
``engine_kwargs.max_num_seqs`` / ``max_num_batched_tokens``, a ``timeseries_path``
(``meta.json``) or ``timeseries.csv`` that leaves the run folder (absolute, ``..``, a
symlink pointing outside). No row is ever dropped.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from mist.traces.errors import TraceError
from mist.traces.io import read_json_object
from mist.traces.readers.base import ReadResult, finish, float_column, int_column, read_jsonl
from mist.traces.readers.streams import parse_workload, token_id_array
from mist.traces.rules import Rule, check_document

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
#: engine stamps may precede the bulk's clock offset by this much (s) before they are
#: taken as broken; the fence is the wider of this and CLOCK_MADS robust deviations
CLOCK_TOLERANCE_S = 1.0
CLOCK_MADS = 10.0
_MAD_TO_SIGMA = 1.4826  # MAD x this = the standard deviation of a normal distribution


#: engine settings that, when a run gives them, must be positive integers
POSITIVE_IF_GIVEN = ("tensor_parallel_size", "data_parallel_size", "block_size", "num_gpu_blocks",
                     "num_gpu_blocks_override")


#: a speed probe (``mist record``/``mist profile``; :mod:`mist.profiles.measure.probe`): seconds
#: of two fixed micro-benchmarks and their geometric mean, and the probe's version
PROBE_RULES: dict[str, Rule] = {
    "": Rule("object"), ".version": Rule("int", 0, 2**31, required=True),
    ".score_s": Rule("number", 0, 3600, above=True, required=True),
    ".matmul_s": Rule("number", 0, 3600, above=True), ".python_s": Rule("number", 0, 3600, above=True),
}
#: the keys of ``meta.json`` a reader uses besides the engine settings (which
#: :data:`mist.profiles.limits.ENGINE_RULES` checks), when given (null = not given)
META_RULES: dict[str, Rule] = {
    "model": Rule("text"), "vllm_version": Rule("text"), "started_at": Rule("date"),
    "engine_kwargs.dtype": Rule("text"), "engine_kwargs.kv_cache_dtype": Rule("text"),
    "hardware": Rule("object"), "hardware.device_total_memory_bytes": Rule("number", 0, 2.0**60, above=True),
    **{f"{probe}{key}": rule for probe in ("speed_probe", "speed_probe_end") for key, rule in PROBE_RULES.items()},
}


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
        ``meta.json`` missing or malformed, ``engine_kwargs`` lacking a required key,
        or a key of :data:`META_RULES` of the wrong kind or out of range.
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
    check_document(meta, META_RULES, meta_path)
    if (directory / "cluster.json").is_file():
        meta["cluster"] = read_json_object(directory / "cluster.json")
        _check_cluster(directory / "cluster.json", meta["cluster"])
    given = meta.pop("timeseries_path", None)
    if given is not None:
        meta["timeseries_path"] = str(inside_run(directory, given, meta_path))
    elif (directory / "timeseries.csv").is_symlink() or (directory / "timeseries.csv").exists():
        # (a folder or a symlink loop in its place is rejected by name, never passed over)
        meta["timeseries_path"] = str(inside_run(directory, "timeseries.csv", directory / "timeseries.csv"))
    return meta


def inside_run(directory, name, where) -> Path:
    """``name`` (a path relative to the run folder ``directory``) as a path that stays
    inside that folder; ``where`` is the file to name in the error.

    Raises
    ------
    TraceError
        ``name`` is not a relative path string, holds ``..``, or resolves (through
        symlinks) outside ``directory``.
    """
    if not isinstance(name, str) or not name:
        raise TraceError(where, f"timeseries_path must be a path inside the run folder, got {name!r}")
    rel = Path(name)
    if rel.is_absolute() or ".." in rel.parts:
        raise TraceError(where, f"timeseries_path {name!r} must be relative to the run folder, without '..'")
    root = Path(directory).resolve()
    try:
        target = (root / rel).resolve()
    except (OSError, RuntimeError) as exc:  # a symlink loop
        raise TraceError(where, f"timeseries_path {name!r} cannot be resolved ({exc})") from exc
    if not target.is_relative_to(root):
        raise TraceError(where, f"timeseries_path {name!r} leaves the run folder (a symlink to {target})")
    if not target.is_file():
        raise TraceError(where, f"timeseries_path {name!r}: no such file in the run folder")
    return Path(directory) / rel


def _check_ids(path, ids: list[str], lines) -> None:
    seen: dict[str, int] = {}
    for rid, line in zip(ids, lines, strict=True):
        if rid in seen:
            raise TraceError(
                path, f"duplicate request_id {rid!r} (first on line {seen[rid]})", int(line)
            )
        seen[rid] = int(line)


def _order_violations(path, times: dict[str, np.ndarray], lines) -> dict[int, str]:
    """Row index -> reason for each request whose own stamps are out of order (its first
    bad pair); TraceError at the first such line when half of the requests or more are."""
    keys = [k for k, _ in TIMELINE]
    found: dict[int, str] = {}
    for a, b in zip(keys[:-1], keys[1:], strict=True):
        for i in np.flatnonzero(times[a] > times[b]):
            found.setdefault(int(i), f"timestamps out of order: {a} ({float(times[a][i])!r}) > "
                                     f"{b} ({float(times[b][i])!r})")
    n = len(lines)
    if found and 2 * len(found) >= n:
        first = min(found)
        raise TraceError(path, f"{found[first]} ({len(found)} of {n} requests out of order: the file "
                               "is broken, not a request)", int(lines[first]))
    return found


def clock_offset(diff: np.ndarray, usable: np.ndarray) -> tuple[float, np.ndarray, float]:
    """The engine-minus-client clock offset ``C`` (s) and the mask of impossibly early rows.

    Parameters
    ----------
    diff : numpy.ndarray
        ``queued_ts - arrival_time`` per request (s).
    usable : numpy.ndarray of bool
        Rows whose stamps may enter the estimate (their own order holds).

    Returns
    -------
    (float, numpy.ndarray, float)
        ``C``: the minimum of the usable differences at or above the fence ``median -
        width``; the usable rows below it; ``width = max(CLOCK_TOLERANCE_S, CLOCK_MADS x
        1.4826 x MAD)`` (s).
    """
    d = diff[usable]
    if not d.size:
        return 0.0, np.zeros(diff.shape, dtype=bool), CLOCK_TOLERANCE_S
    centre = float(np.median(d))
    spread = _MAD_TO_SIGMA * float(np.median(np.abs(d - centre)))
    width = max(CLOCK_TOLERANCE_S, CLOCK_MADS * spread)
    early = usable & (diff < centre - width)
    return float(np.min(diff[usable & ~early])), early, width


def _exclusions(path, times, ids, lines) -> tuple[float, np.ndarray, list[dict]]:
    """The clock offset (s), the mask of excluded rows and their ``request_id``, ``line``
    and ``reason`` (in source order)."""
    bad = _order_violations(path, times, lines)
    usable = np.ones(len(ids), dtype=bool)
    usable[list(bad)] = False
    diff = times["queued_ts"] - times["arrival_time"]
    offset, early, width = clock_offset(diff, usable)
    for i in np.flatnonzero(early):
        bad[int(i)] = (f"engine stamps {offset - float(diff[i]):.3f} s before its arrival_time on the clock "
                       f"the other requests share (allowed: {width:.3f} s below their median front-end delay)")
    mask = np.zeros(len(ids), dtype=bool)
    mask[list(bad)] = True
    return offset, mask, [{"request_id": ids[i], "line": int(lines[i]), "reason": bad[i]} for i in sorted(bad)]


def _blank(requests: pa.Table, columns, ids) -> pa.Table:
    """``requests`` with ``columns`` null (not observed) in the rows of request ``ids``."""
    rows = pc.is_in(requests.column("request_id"), value_set=pa.array(ids, pa.string()))
    for name in columns:
        idx = requests.schema.get_field_index(name)
        col = requests.column(idx)
        requests = requests.set_column(idx, requests.schema.field(idx),
                                       pc.if_else(rows, pa.scalar(None, col.type), col))
    return requests


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
        ``meta`` = meta.json + ``cluster`` + ``timeseries_path`` + ``clock_offset_s``
        (+ ``excluded``, a list of ``{"request_id", "line", "reason"}``, when any
        request's stamps contradict the clock or their own order; their timeline is null).
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
    offset, blank, excluded = _exclusions(req_path, times, ids, lines)
    arrival = times["arrival_time"]
    columns = {
        "request_id": ids,
        "model": [meta.get("model")] * len(ids),
        "arrival_s": arrival,
        "input_tokens": tokens["input_toks"],
        "output_tokens": tokens["output_toks"],
    }
    # Subtract the offset before the origin so both clocks meet in epoch seconds.
    for src, dst in TIMELINE:
        # (an excluded row holds its arrival as a placeholder until it is blanked below)
        columns[dst] = np.where(blank, arrival, times[src] - offset)
    extra = {"mist.clock_offset_s": repr(offset)}
    if excluded:
        extra["mist.excluded"] = json.dumps(excluded)
    requests, _ = finish(FORMAT, columns, origin_epoch_s=0.0, metadata=extra, path=req_path, lines=lines)
    if excluded:
        requests = _blank(requests, [dst for _, dst in TIMELINE], [e["request_id"] for e in excluded])
    meta.update(source_format=FORMAT, source_path=str(directory), clock_offset_s=offset)
    if excluded:  # (absent on a clean run, whose outputs stay as they were)
        meta["excluded"] = excluded
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
        Row-count mismatch, a line without ``input_tok_ids``, ``input_toks``
        differing from the request's ``input_tokens``, or arrival times that decrease
        (with the workload line).
    """
    meta = requests.schema.metadata or {}
    if meta.get(b"mist.reordered") == b"1":
        raise TraceError(workload_path, "requests were reordered by arrival; cannot pair by position")
    w = parse_workload(workload_path)
    lines = w["lines"]
    back = np.flatnonzero(np.diff(w["arrival_time_ns"]) < 0)
    if back.size:  # line i pairs with the i-th request sent: a stream out of order pairs wrongly
        i = int(back[0]) + 1
        raise TraceError(workload_path, f"arrival_time_ns: must not decrease (records pair with requests by "
                                        f"position), found {w['arrival_time_ns'][i]} after "
                                        f"{w['arrival_time_ns'][i - 1]}", int(lines[i]))
    if len(lines) != requests.num_rows:
        raise TraceError(workload_path, f"{len(lines)} workload records but {requests.num_rows} requests")
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
