"""Readers for Vidur's operator profiles (microsoft/vidur, ``data/profiling/``).

``vidur-mlp-csv``: ``compute/<hardware>/<org>/<model>/mlp.csv``. One row per
(``num_tokens``, ``num_tensor_parallel_workers``) with, for each operator ``<op>``
of one decoder block, ``time_stats.<op>.{min,max,mean,median,std}`` in ms, and
the model's shape (``n_head``, ``n_embd``, ``use_gated_mlp`` …). The operators run
with one tensor-parallel rank's shard shapes, as in mist's own bundles, in float16
(Vidur's ``profiling/mlp/mlp_wrapper.py`` casts the model). Operator names are
mapped to mist's (:data:`MLP_OPERATORS`); the Vidur name is kept in ``source``.

``vidur-comm-csv``: ``network/<hardware>_<topology>/<collective>.csv`` (e.g.
``a100_dgx/all_reduce.csv``). One row per (``num_workers``, ``devices_per_node``,
``size``) with ``time_stats.<collective>.*`` in ms; ``size`` is the message size in
bytes (Vidur's ``collectives_wrapper.py`` stores 2 × the float16 element count).
``tp`` is the number of GPUs. Rows whose GPUs span several nodes (``num_workers >
devices_per_node``) are skipped and counted: ``operator_profile`` has no node-count
column, and an inter-node collective must not pass for a one-node one.

Both: ``latency_s`` = median, ``spread_s`` = std (max − min for an operator without a
std column), ms / 1e3. ``samples`` stays null: the files do not say how many runs
the statistics summarise. Feature points measured twice (the files have a few)
stay two rows; nothing is averaged here (repeats whose medians differ by more than
``mist.traces.checks.DUPLICATE_TOLERANCE`` times are rejected as corrupt).
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd

from mist.traces.checks import MAX_OPERATOR_S
from mist.traces.errors import TraceError
from mist.traces.readers.base import read_csv, skip_mask
from mist.traces.readers.profile_base import (
    ProfileResult,
    Resolver,
    check_positive,
    check_times,
    csv_header,
    finish_profile,
)

MLP_FORMAT = "vidur-mlp-csv"
COMM_FORMAT = "vidur-comm-csv"
MS = 1e-3  # s per ms
STAT = re.compile(r"time_stats\.(?P<op>.+)\.(?P<stat>min|max|mean|median|std)")
SPREAD = "std of the runs (s); max - min where the file has no std column"
DTYPE = "fp16"  # Vidur profiles the model and collectives in float16

# Vidur operator -> mist operator (the names calibrate.features knows, where one exists).
MLP_OPERATORS = {
    "emb": "embedding",
    "input_layernorm": "layernorm",  # mist profiles one RMSNorm and counts it twice
    "post_attention_layernorm": "layernorm",
    "attn_pre_proj": "qkv_proj",
    "attn_rope": "rotary_emb",
    "attn_post_proj": "o_proj",
    "mlp_up_proj": "gate_up_proj",  # 2 x intermediate wide when use_gated_mlp
    "mlp_act": "act_fn",
    "mlp_down_proj": "down_proj",
    "add": "add",  # the block's residual add; mist has no such operator
}
UNGATED_UP = "up_proj"  # mlp_up_proj of a model without a gated MLP
MAX_MS = MAX_OPERATOR_S / MS  # longest operator, ms
# statistics that bound each other row by row: min <= mean, median <= max (relative slack
# for the rounding of values written with few digits)
ORDER = (("min", "median"), ("median", "max"), ("min", "mean"), ("mean", "max"))
ORDER_RTOL = 1e-6
BOOLS = {"true": True, "false": False}  # use_gated_mlp cells, lower-cased


def _stats(path, header: list[str]) -> dict[str, set[str]]:
    """Operators with ``time_stats`` columns and the statistics each has."""
    ops: dict[str, set[str]] = {}
    for col in header:
        m = STAT.fullmatch(col)
        if m:
            ops.setdefault(m["op"], set()).add(m["stat"])
    no_median = sorted(op for op, stats in ops.items() if "median" not in stats)
    if not ops or no_median:
        what = f"operators {no_median} have" if no_median else "the header has"
        raise TraceError(path, f"{what} no time_stats.<op>.median column", 1)
    return ops


def _stat_columns(ops: dict[str, set[str]]) -> tuple[str, ...]:
    wanted = ("median", "mean", "std", "min", "max")
    return tuple(f"time_stats.{op}.{s}" for op, stats in ops.items() for s in wanted if s in stats)


def _check_stats(path, op: str, values: dict[str, np.ndarray], lines) -> None:
    """Each statistic of ``op`` (ms) in 0 .. an hour; min <= median, mean <= max."""
    for s, v in values.items():
        check_times(path, f"time_stats.{op}.{s}", v, lines)
        bad = np.flatnonzero(v > MAX_MS)
        if bad.size:
            i = int(bad[0])
            raise TraceError(path, f"time_stats.{op}.{s}: must be at most {MAX_MS:g} ms (an hour), "
                             f"found {v[i].item()!r}", int(lines[i]))  # fmt: skip
    for lo, hi in ORDER:
        if lo in values and hi in values:
            a, b = values[lo], values[hi]
            bad = np.flatnonzero(a > b + ORDER_RTOL * np.abs(b))
            if bad.size:
                i = int(bad[0])
                raise TraceError(path, f"time_stats.{op}.{hi}: is below time_stats.{op}.{lo} "
                                 f"({b[i].item()!r} < {a[i].item()!r} ms)", int(lines[i]))  # fmt: skip


def _latency(path, df, op: str, stats: set[str], lines) -> tuple[np.ndarray, pd.Series]:
    """Median and spread (s) of ``op`` (spread NaN = null when the file has neither
    std nor min and max); a statistic out of range or out of order raises with its line."""
    values = {
        s: df[f"time_stats.{op}.{s}"].to_numpy(np.float64)
        for s in ("median", "mean", "std", "min", "max") if s in stats
    }  # fmt: skip
    _check_stats(path, op, values, lines)
    if "std" in values:
        spread = values["std"]
    elif "min" in values and "max" in values:
        spread = values["max"] - values["min"]
    else:
        spread = np.full(len(df), np.nan)
    return values["median"] * MS, pd.Series(spread * MS)  # a Series: NaN becomes null


def _gated(path, df, lines) -> bool:
    """Whether any row says ``use_gated_mlp`` is false; a cell other than true/false raises."""
    cells = df["use_gated_mlp"].str.strip().str.lower()
    bad = np.flatnonzero(~cells.isin(list(BOOLS)).to_numpy())
    if bad.size:
        i = int(bad[0])
        raise TraceError(path, f"use_gated_mlp: must be True or False, found {df['use_gated_mlp'].iloc[i]!r}",
                         int(lines[i]))  # fmt: skip
    return bool((cells == "false").any())


def _mlp_layout(path: Path) -> tuple[str, str]:
    parts = path.resolve().parts
    if len(parts) < 5 or parts[-5] != "compute":
        raise TraceError(
            path,
            "cannot tell hardware and model: expected Vidur's layout "
            ".../compute/<hardware>/<org>/<model>/mlp.csv",
        )
    return parts[-4], f"{parts[-3]}/{parts[-2]}"


def _comm_layout(path: Path) -> str:
    parts = path.resolve().parts
    if len(parts) < 3 or parts[-3] != "network":
        raise TraceError(path, "cannot tell the hardware: expected Vidur's layout "
                         ".../network/<hardware>_<topology>/<collective>.csv")  # fmt: skip
    return parts[-2]


def read_vidur_mlp(path, resolve_hardware: Resolver | None = None) -> ProfileResult:
    """Read a Vidur ``mlp.csv`` compute profile (see the module docstring).

    Parameters
    ----------
    path : str or Path
        ``.../compute/<hardware>/<org>/<model>/mlp.csv``.
    resolve_hardware : callable, optional
        Maps the path's hardware name (``a100``) to a canonical one.

    Returns
    -------
    ProfileResult
        One row per (operator, CSV row): ``tokens``, ``tp``, ``latency_s``, ``spread_s``.
    """
    path = Path(path)
    hardware, model = _mlp_layout(path)
    header = csv_header(path)
    ops = _stats(path, header)
    features = ("num_tokens", "num_tensor_parallel_workers")
    gated = ("use_gated_mlp",) if "use_gated_mlp" in header else ()
    stat_cols = _stat_columns(ops)
    df = read_csv(path, features + gated + stat_cols,
                  dict.fromkeys(features, "int") | dict.fromkeys(stat_cols, "float"))  # fmt: skip
    lines = np.arange(len(df), dtype=np.int64) + 2
    tokens = df["num_tokens"].to_numpy(np.int64)
    tp = df["num_tensor_parallel_workers"].to_numpy(np.int64)
    check_positive(path, "num_tokens", tokens, lines)
    check_positive(path, "num_tensor_parallel_workers", tp, lines)
    ungated = bool(gated) and _gated(path, df, lines)
    frames = []
    for op, stats in ops.items():
        latency, spread = _latency(path, df, op, stats, lines)
        frames.append(pd.DataFrame({
            "operator": UNGATED_UP if op == "mlp_up_proj" and ungated else MLP_OPERATORS.get(op, op),
            "tokens": tokens, "tp": tp, "latency_s": latency,
            "spread_s": spread,
            "source": f"{MLP_FORMAT}:{op}",
        }))  # fmt: skip
    rows = pd.concat(frames, ignore_index=True)
    columns = {c: rows[c] for c in rows.columns}
    n = len(rows)
    columns.update(hardware=[hardware] * n, model=[model] * n, dtype=[DTYPE] * n)
    unmapped = sorted(set(ops) - set(MLP_OPERATORS))
    meta = {"model": model, "operators": {op: MLP_OPERATORS.get(op, op) for op in ops}}
    if unmapped:
        meta["unmapped_operators"] = unmapped
    return finish_profile(MLP_FORMAT, path, columns, resolve_hardware, spread=SPREAD,
                          rows_read=len(df), meta=meta, lines=np.tile(lines, len(ops)))  # fmt: skip


def read_vidur_comm(path, resolve_hardware: Resolver | None = None) -> ProfileResult:
    """Read a Vidur collective profile (``all_reduce.csv``, ``send_recv.csv``).

    Parameters
    ----------
    path : str or Path
        ``.../network/<hardware>_<topology>/<collective>.csv``.
    resolve_hardware : callable, optional
        Maps the folder's hardware name (``a100`` of ``a100_dgx``) to a canonical one.

    Returns
    -------
    ProfileResult
        One row per one-node CSV row: ``operator`` = the collective, ``tp`` = GPUs,
        ``message_bytes``, ``latency_s``, ``spread_s``; multi-node rows are skipped.
    """
    path = Path(path)
    folder = _comm_layout(path)
    hardware, _, topology = folder.partition("_")
    ops = _stats(path, csv_header(path))
    if len(ops) != 1:
        raise TraceError(path, f"expected the time_stats of one collective, found {sorted(ops)}", 1)
    ((op, stats),) = ops.items()
    ints = ("num_workers", "devices_per_node", "size")
    df = read_csv(path, ints + ("collective",) + _stat_columns(ops),
                  dict.fromkeys(ints, "int") | dict.fromkeys(_stat_columns(ops), "float"))  # fmt: skip
    lines = np.arange(len(df), dtype=np.int64) + 2
    for name in ints:
        check_positive(path, name, df[name].to_numpy(np.int64), lines)
    other = np.flatnonzero(df["collective"].to_numpy() != op)
    if other.size:
        i = int(other[0])
        raise TraceError(
            path,
            f"collective {df['collective'].iloc[i]!r} but the time_stats are of {op!r}",
            int(lines[i]),
        )
    latency, spread = _latency(path, df, op, stats, lines)
    workers = df["num_workers"].to_numpy(np.int64)
    keep, skipped = skip_mask({
        "spans several nodes (num_workers > devices_per_node); operator_profile has no node-count column":
            workers > df["devices_per_node"].to_numpy(np.int64),
    })  # fmt: skip
    n = int(keep.sum())
    columns = {
        "hardware": [hardware] * n, "operator": [op] * n, "dtype": [DTYPE] * n,
        "tp": workers[keep], "message_bytes": df["size"].to_numpy(np.int64)[keep],
        "latency_s": latency[keep], "spread_s": spread[keep].reset_index(drop=True),
        "source": [f"{COMM_FORMAT}:{folder}"] * n,
    }  # fmt: skip
    return finish_profile(COMM_FORMAT, path, columns, resolve_hardware, spread=SPREAD,
                          rows_read=len(df), skipped=skipped, lines=lines[keep],
                          meta={"collective": op, "topology": topology or None})  # fmt: skip
