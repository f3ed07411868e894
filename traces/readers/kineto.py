"""Reader for PyTorch profiler (Kineto) chrome traces (``kineto-json``).

``torch.profiler.profile(...).export_chrome_trace(path)`` writes one JSON object
whose ``traceEvents`` list holds complete events (``ph == "X"``) with ``ts`` and
``dur`` in µs, a ``cat`` (``cpu_op`` for ATen operators, ``kernel`` for GPU
kernels, ``python_function``, ``cuda_runtime`` …) and ``args``; with
``record_shapes=True`` a ``cpu_op`` has ``args["Input Dims"]`` and
``args["Input type"]``. Events of other categories and other phases are skipped and
counted.

One row per (category, name, input shapes, input types): ``latency_s`` = median
``dur``, ``spread_s`` = p90 − p10, ``samples`` = events; ``source`` =
``kineto-json:<cat>:<name><shapes>``. ``cpu_op`` times are host times: on a GPU
trace they are launch times, and device time is in the ``kernel`` rows (named by
kernel, without shapes).

GEMM-like operators (:data:`GEMM_OPS`) whose ``m, n, k`` follow from their shapes
become operator ``gemm`` with ``m, n, k`` (``m`` = rows of the activation,
flattened over leading dimensions; ``n`` = output features; ``k`` = reduction).
Only the outermost GEMM-like op of a call stack becomes ``gemm`` (``aten::linear``,
not the ``aten::addmm`` it calls, so one GEMM is not counted twice); the inner
ones, batched products (``aten::bmm`` with batch > 1) and ops without recorded
shapes keep their ATen name. On traces with GPU kernels nothing becomes ``gemm``:
the host times of ``cpu_op`` events are not GEMM latencies.

Hardware: the ``deviceProperties`` name of a GPU trace, else the top-level
``hardware`` key (add it with ``prof.add_metadata("hardware", NAME)`` inside the
profiling context); optional ``model``, ``engine`` and ``engine_version`` keys fill
those columns. ``tp`` is 1 unless the trace has ``distributedInfo`` (then unknown).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

from mist.traces.checks import MAX_TOKENS, MAX_TRACE_S
from mist.traces.errors import TraceError
from mist.traces.io import read_json_object
from mist.traces.readers.profile_base import (
    P90_P10,
    ProfileResult,
    Resolver,
    finish_profile,
    sample_stats,
)

FORMAT = "kineto-json"
US = 1e-6  # s per µs
CATEGORIES = ("cpu_op", "kernel")
MAX_TS_US = MAX_TRACE_S * 1e6  # a century of trace, in µs
# Top-level keys read: each must be a non-empty string when present (JSON null = absent).
NAME_KEYS = ("hardware", "model", "engine", "engine_version")
# GEMM-like op -> positions of (activation, weight) in its Input Dims
GEMM_ARGS = {"aten::mm": (0, 1), "aten::addmm": (1, 2), "aten::linear": (0, 1),
             "aten::matmul": (0, 1), "aten::bmm": (0, 1)}  # fmt: skip
GEMM_OPS = tuple(GEMM_ARGS)
DTYPES = {"float": "fp32", "double": "fp64", "c10::Half": "fp16", "c10::BFloat16": "bf16",
          "c10::Float8_e4m3fn": "fp8", "c10::Float8_e5m2": "fp8", "signed char": "int8"}  # fmt: skip


def is_kineto_trace(obj) -> bool:
    """Whether a parsed JSON object looks like a Kineto chrome trace."""
    return isinstance(obj, dict) and isinstance(obj.get("traceEvents"), list)


def _dims(d) -> list[int] | None:
    return d if isinstance(d, list) and all(isinstance(x, int) for x in d) else None


def gemm_mnk(name: str, dims) -> tuple[int, int, int] | None:
    """``(m, n, k)`` of a GEMM-like ATen op from its ``Input Dims``; None if not derivable.

    ``aten::mm(a[m,k], b[k,n])``, ``aten::addmm(bias, a[m,k], b[k,n])``,
    ``aten::linear(x[..., k], w[n,k], bias)``, ``aten::matmul(a[..., m, k], b[k,n])``
    and ``aten::bmm(a[1,m,k], b[1,k,n])``; batched products give None.
    """
    pos = GEMM_ARGS.get(name)
    if pos is None or not isinstance(dims, list) or len(dims) <= max(pos):
        return None
    x, w = _dims(dims[pos[0]]), _dims(dims[pos[1]])
    if x is None or w is None:
        return None
    if name == "aten::linear":
        w = w[::-1]  # the weight is (n, k)
    if name == "aten::bmm":
        if len(x) != 3 or len(w) != 3 or x[0] != 1 or w[0] != 1:
            return None
        x, w = x[1:], w[1:]
    flattens = name in ("aten::linear", "aten::matmul")  # leading dims of x fold into m
    if len(w) != 2 or not x or x[-1] != w[0] or (len(x) != 2 and not flattens):
        return None
    if name == "aten::matmul" and len(x) < 2:
        return None
    return math.prod(x[:-1]), w[1], x[-1]


def _number(v, least: float, most: float) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and least <= v <= most


def _shape(d) -> bool:
    """An ``Input Dims`` entry: a list of sizes (0 .. 2^53), or a list of such lists
    (a TensorList), possibly empty (a scalar or a non-tensor argument)."""
    return isinstance(d, list) and all(
        _shape(x) if isinstance(x, list) else isinstance(x, int) and _number(x, 0, MAX_TOKENS) for x in d
    )


def _check_event(path, i: int, ev: dict, shapes: bool) -> None:
    """Raise ``traceEvents[i] (name): field: reason`` on an operator event's first bad field."""
    where = f"traceEvents[{i}] ({ev.get('cat')})"
    checks = (
        ("name", isinstance(ev.get("name"), str) and ev["name"] != "", "must be a non-empty string"),
        ("ts", _number(ev.get("ts"), 0, MAX_TS_US), f"must be a number of µs in 0 .. {MAX_TS_US:g}"),
        ("dur", _number(ev.get("dur"), 0, MAX_TS_US), f"must be a number of µs in 0 .. {MAX_TS_US:g}"),
        *((k, isinstance(ev.get(k), (int, str)) and not isinstance(ev.get(k), bool),
           "must be an integer or a string (the thread of the event)") for k in ("pid", "tid")),
        ("args", isinstance(ev.get("args", {}), dict), "must be an object"),
    )  # fmt: skip
    for key, ok, reason in checks:
        if not ok:
            raise TraceError(path, f"{where}: {key}: {reason}, found {ev.get(key)!r}")
    args = ev.get("args", {})
    dims, types = args.get("Input Dims"), args.get("Input type")
    for key, value in (("Input Dims", dims), ("Input type", types)):
        if shapes and ev["cat"] == "cpu_op" and value is None:
            raise TraceError(path, f"{where} {ev['name']}: args.{key}: missing in a trace with record_shapes")
    if dims is not None and not (_shape(dims) and all(isinstance(d, list) for d in dims)):
        raise TraceError(path, f"{where} {ev['name']}: args.Input Dims: must be a list of shapes (lists "
                         f"of sizes 0 .. 2^53), found {dims!r}"[:400])
    if types is not None and not (isinstance(types, list) and all(isinstance(t, str) for t in types)):
        raise TraceError(path, f"{where} {ev['name']}: args.Input type: must be a list of strings, found "
                         f"{types!r}"[:400])


def _events(path, trace: dict) -> tuple[list[dict], dict[str, int]]:
    """Operator events (checked) and the count of skipped events by reason."""
    kept, skipped = [], {}
    shapes = bool(trace.get("record_shapes"))
    for i, ev in enumerate(trace["traceEvents"]):
        if not isinstance(ev, dict):
            raise TraceError(path, f"traceEvents[{i}] is not an object")
        cat = ev.get("cat")
        if ev.get("ph") != "X" or cat not in CATEGORIES:
            why = f"{cat or 'phase ' + str(ev.get('ph'))} events (not operators)"
            skipped[why] = skipped.get(why, 0) + 1
            continue
        _check_event(path, i, ev, shapes)
        kept.append(ev)
    if not kept:
        raise TraceError(path, f"no {' or '.join(CATEGORIES)} events with ph == 'X'")
    return kept, skipped


def _outermost_gemm(events: list[dict]) -> list[bool]:
    """Per event: a GEMM-like ``cpu_op`` not nested in another GEMM-like op on its thread."""
    flags = [False] * len(events)
    order = sorted(range(len(events)), key=lambda i: (str(events[i].get("pid")), str(events[i].get("tid")),
                                                      events[i]["ts"], -events[i]["dur"]))  # fmt: skip
    stack: list[tuple[tuple, float, bool]] = []  # (thread, end µs, inside a GEMM)
    for i in order:
        ev = events[i]
        if ev["cat"] != "cpu_op":
            continue
        thread = (ev.get("pid"), ev.get("tid"))
        while stack and (stack[-1][0] != thread or stack[-1][1] <= ev["ts"]):
            stack.pop()
        inside = bool(stack) and stack[-1][2]
        gemm = ev["name"] in GEMM_OPS
        flags[i] = gemm and not inside
        stack.append((thread, ev["ts"] + ev["dur"], inside or gemm))
    return flags


def _dtype(types) -> str | None:
    for t in types if isinstance(types, list) else ():
        if t in DTYPES:
            return DTYPES[t]
        if isinstance(t, str) and t and t not in ("Scalar", "ScalarList", "TensorList"):
            return t
    return None


def _check_top(path, trace: dict) -> None:
    """The top-level keys read besides ``traceEvents``: names are strings, devices a list."""
    for key in NAME_KEYS:
        v = trace.get(key)
        if v is not None and not (isinstance(v, str) and v.strip()):
            raise TraceError(path, f"{key}: must be a non-empty string, found {v!r}")
    devices = trace.get("deviceProperties")
    if devices is not None and not (isinstance(devices, list) and all(isinstance(d, dict) for d in devices)):
        raise TraceError(path, f"deviceProperties: must be a list of objects, found {devices!r}"[:400])


def _hardware(path, trace: dict) -> str:
    names = {d.get("name") for d in trace.get("deviceProperties") or ()}
    names.discard(None)
    if len(names) > 1:
        raise TraceError(
            path,
            f"deviceProperties name several devices {sorted(names)}; one trace per device type",
        )
    if names:
        return str(names.pop())
    if isinstance(trace.get("hardware"), str) and trace["hardware"].strip():
        return trace["hardware"].strip()
    raise TraceError(path, "cannot tell the hardware: no GPU in deviceProperties and no top-level "
                     "'hardware' key (add one with prof.add_metadata('hardware', NAME))")  # fmt: skip


def _groups(events: list[dict], outer: list[bool]) -> dict[tuple, list[float]]:
    """Durations (µs) by (category, name, shapes JSON, types JSON, outermost GEMM)."""
    groups: dict[tuple, list[float]] = {}
    for ev, is_gemm in zip(events, outer):
        args = ev.get("args", {})
        dims, types = args.get("Input Dims"), args.get("Input type")
        key = (ev["cat"], ev["name"], json.dumps(dims, separators=(",", ":")) if dims is not None else "",
               json.dumps(types) if types is not None else "", is_gemm)  # fmt: skip
        groups.setdefault(key, []).append(ev["dur"])
    return groups


def _rows(groups: dict[tuple, list[float]]) -> dict[str, list]:
    """``operator_profile`` columns, one row per group, in key order."""
    cols: dict[str, list] = {k: [] for k in ("operator", "dtype", "m", "n", "k", "latency_s",
                                              "spread_s", "samples", "source")}  # fmt: skip
    for (cat, name, dims, types, is_gemm), durs in sorted(groups.items()):
        mnk = gemm_mnk(name, json.loads(dims)) if is_gemm and dims else None
        median, spread, n = sample_stats(np.asarray(durs, dtype=np.float64) * US)
        cols["operator"].append("gemm" if mnk else name)
        cols["dtype"].append(_dtype(json.loads(types)) if types else None)
        for key, value in zip("mnk", mnk or (None, None, None)):
            cols[key].append(value)
        cols["latency_s"].append(median)
        cols["spread_s"].append(spread)
        cols["samples"].append(n)
        cols["source"].append(f"{FORMAT}:{cat}:{name}{dims}")
    return cols


def read_kineto_json(path, resolve_hardware: Resolver | None = None) -> ProfileResult:
    """Read a PyTorch profiler chrome trace (see the module docstring).

    Parameters
    ----------
    path : str or Path
        JSON written by ``export_chrome_trace``.
    resolve_hardware : callable, optional
        Maps the trace's hardware name to a canonical one.

    Returns
    -------
    ProfileResult
        One row per (category, name, shapes, types); GEMMs as ``gemm`` with m, n, k.
    """
    path = Path(path)
    trace = read_json_object(path)
    if not is_kineto_trace(trace):
        raise TraceError(path, "not a Kineto trace: no 'traceEvents' list")
    _check_top(path, trace)
    hardware = _hardware(path, trace)
    events, skipped = _events(path, trace)
    device = any(ev["cat"] == "kernel" for ev in events)
    cols = _rows(_groups(events, [False] * len(events) if device else _outermost_gemm(events)))
    rows = len(cols["operator"])
    meta_cols = {k: [str(trace[k])] * rows if isinstance(trace.get(k), str) else None
                 for k in ("model", "engine", "engine_version")}  # fmt: skip
    cols.update({k: v for k, v in meta_cols.items() if v is not None})
    cols["hardware"] = [hardware] * rows
    cols["tp"] = [None if "distributedInfo" in trace else 1] * rows
    meta = {"events": len(trace["traceEvents"]), "device_trace": device,
            "device": trace.get("device")}  # fmt: skip
    return finish_profile(FORMAT, path, cols, resolve_hardware, spread=P90_P10,
                          rows_read=len(trace["traceEvents"]), skipped=skipped, meta=meta)  # fmt: skip
