"""Declared checks of the canonical tables' values, and the one function that applies them.

Each canonical column a reader fills may have a :class:`Check` here (finite, least and
greatest value, a whole number), declared beside :mod:`mist.traces.schema`; relations
between columns are declared in :data:`RELATIONS`. :func:`check_table` applies them to a
table a reader built and turns the first violation into
``TraceError(path, "<field>: <reason>", line)``, i.e. ``file:line: field: reason``.
A reader never clips or drops a violating row: it is an error (the readers' own,
documented skip reasons are counted before the table is built).

Bounds are physical limits, not guesses about workloads: at most 2^53 tokens (the
largest integer a float64 holds exactly, so every count survives a float round trip),
at most a century of trace (3.2e9 s: at 1e15 s a float64 cannot hold a millisecond, so
a 50 ms TTFT would become 0), an operator no longer than an hour.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from mist.traces.errors import TraceError

MAX_TOKENS = 2**53
MAX_TRACE_S = 3.2e9  # about a century, in s
MAX_OPERATOR_S = 3600.0  # one kernel or layer, in s
# Operator-profile rows measured twice at one shape (same hardware, operator, features,
# source …) stay separate rows when they agree; their latencies conflict, and the input is
# rejected, when the larger exceeds the smaller by more than this factor. Real repeats
# (Vidur's profiles hold a few) differ by far less; a 100x pair is a corrupt file.
DUPLICATE_TOLERANCE = 10.0


@dataclass(frozen=True)
class Check:
    """Allowed values of one numeric column (nulls allowed unless the schema forbids)."""

    least: float | None = None
    most: float | None = None
    whole: bool = False  # must be an integer value (for float-typed sources)


_COUNT = Check(0, MAX_TOKENS, whole=True)
_TIME = Check(-MAX_TRACE_S, MAX_TRACE_S)
CHECKS: dict[str, dict[str, Check]] = {
    "requests": {
        "arrival_s": Check(0, MAX_TRACE_S), "queued_s": _TIME, "scheduled_s": _TIME,
        "first_token_s": _TIME, "finished_s": _TIME, "round": _COUNT,
        "input_tokens": _COUNT, "output_tokens": _COUNT, "cached_tokens": _COUNT,
    },
    "tokens": {"token_index": _COUNT, "time_s": _TIME},
    "operator_profile": {
        **{c: _COUNT for c in ("tokens", "sequences", "prefill_chunk", "kv_prefill", "n_decode",
                               "kv_decode", "activated_experts", "m", "n", "k", "message_bytes")},
        **{c: Check(1, MAX_TOKENS) for c in ("tp", "pp", "ep", "num_heads", "num_kv_heads",
                                               "head_dim", "samples")},
        "latency_s": Check(0, MAX_OPERATOR_S), "spread_s": Check(0, MAX_OPERATOR_S),
    },
    "silicon_rows": {
        **{c: Check(1, MAX_TOKENS, whole=True) for c in ("isl", "osl", "batch_size", "tp_size")},
        # 0 means "not used" in some rows of these
        **{c: _COUNT for c in ("pp_size", "attention_dp_size", "moe_tp_size", "moe_ep_size")},
        "silicon_ttft_ms": Check(0, MAX_TRACE_S * 1e3), "silicon_tpot_ms": Check(0, MAX_TRACE_S * 1e3),
    },
    "offline_batch_bench": {
        **{c: Check(1, MAX_TOKENS, whole=True) for c in ("num_devices", "input_tokens", "output_tokens",
                                                         "batch_size")},
        **{c: Check(0, MAX_TRACE_S) for c in ("latency_s", "ttft_s", "itl_s", "throughput_tok_s")},
    },
}  # fmt: skip
# (earlier, later): where both are known, ``later`` must not be before ``earlier``.
RELATIONS: dict[str, tuple[tuple[str, str], ...]] = {
    "requests": (("first_token_s", "finished_s"),),
}
# columns that are not the shape of an operator-profile row (what a duplicate may differ in)
MEASURES = ("latency_s", "spread_s", "samples")


def _values(column) -> tuple[np.ndarray, np.ndarray]:
    """A numeric column as float64 values and a validity mask (nulls are not checked)."""
    if not isinstance(column, (pa.Array, pa.ChunkedArray)):
        try:
            column = pa.array(column)
        except (pa.ArrowInvalid, pa.ArrowTypeError, OverflowError, TypeError):  # ints beyond 64 bits
            return _python_values(column)
    arr = column
    if not (pa.types.is_integer(arr.type) or pa.types.is_floating(arr.type) or pa.types.is_null(arr.type)):
        return _python_values(arr.to_pylist())
    valid = ~np.asarray(arr.is_null().to_numpy(zero_copy_only=False), dtype=bool)
    values = np.asarray(arr.to_numpy(zero_copy_only=False), dtype=np.float64)
    return values, valid


def _python_values(column) -> tuple[np.ndarray, np.ndarray]:
    """Values of a Python sequence: None is null; a huge int is infinite; text is NaN."""
    values, valid = np.empty(len(column)), np.ones(len(column), dtype=bool)
    for i, v in enumerate(column):
        if v is None:
            values[i], valid[i] = np.nan, False
            continue
        try:
            values[i] = float(v)
        except OverflowError:
            values[i] = np.inf
        except (TypeError, ValueError):
            values[i] = np.nan
    return values, valid


def violation(values: np.ndarray, valid: np.ndarray, check: Check) -> tuple[int, str] | None:
    """First row breaking ``check`` and why, or None."""
    with np.errstate(invalid="ignore"):
        tests = [(~np.isfinite(values), "must be a finite number")]
        if check.least is not None:
            tests.append((values < check.least, f"must be at least {check.least:g}"))
        if check.most is not None:
            tests.append((values > check.most, f"must be at most {check.most:g}"))
        if check.whole:
            tests.append((values != np.round(values), "must be a whole number"))
    for bad, reason in tests:
        hit = np.flatnonzero(bad & valid)
        if hit.size:
            return int(hit[0]), reason
    return None


def raise_at(path, field: str, row: int, value, reason: str, lines=None) -> None:
    """Raise ``file:line: field: reason`` for ``row`` (its source line when ``lines``
    is given, else the 1-based row)."""
    line = int(lines[row]) if lines is not None else row + 1
    raise TraceError(path, f"{field}: {reason}, found {value!r}", line)


def check_columns(path, kind: str, columns: dict, lines=None) -> None:
    """Apply :data:`CHECKS` and :data:`RELATIONS` of table ``kind`` to ``columns`` (a dict
    of arrays or a table), raising on the first violation; ``lines[i]`` is row i's line."""
    names = columns.column_names if isinstance(columns, pa.Table) else list(columns)
    for name, check in CHECKS.get(kind, {}).items():
        if name in names:
            values, valid = _values(columns[name])
            found = violation(values, valid, check)
            if found is not None:
                raise_at(path, name, found[0], values[found[0]].item(), found[1], lines)
    for early, late in RELATIONS.get(kind, ()):
        if early in names and late in names:
            (a, va), (b, vb) = _values(columns[early]), _values(columns[late])
            hit = np.flatnonzero(va & vb & (b < a))
            if hit.size:
                i = int(hit[0])
                raise_at(path, late, i, b[i].item(), f"is before {early} ({a[i].item()!r})", lines)


def check_duplicates(path, table: pa.Table, lines=None) -> None:
    """Reject operator-profile rows of one shape whose latencies differ by more than
    :data:`DUPLICATE_TOLERANCE` times (agreeing repeats stay, as measured)."""
    if table.num_rows < 2:
        return
    shape = [c for c in table.column_names if c not in MEASURES]
    df = table.select(shape + ["latency_s"]).to_pandas()
    df["_row"] = np.arange(len(df))
    groups = df.groupby(shape, dropna=False, sort=False)["latency_s"]
    lo, hi = groups.transform("min"), groups.transform("max")
    with np.errstate(divide="ignore", invalid="ignore"):
        bad = np.flatnonzero((hi > DUPLICATE_TOLERANCE * lo).to_numpy())
    if bad.size:
        i = int(bad[0])
        raise_at(path, "latency_s", i, float(df["latency_s"].iloc[i]),
                 f"conflicts with another row of the same shape (latencies {lo.iloc[i]!r} .. "
                 f"{hi.iloc[i]!r} s differ by more than {DUPLICATE_TOLERANCE:g}x)", lines)
