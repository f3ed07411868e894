"""Pair simulated requests with the measured ones they replay.

The join key is ``request_id``. Requests present on one side only are counted and
listed in :class:`AlignResult`, never dropped without a trace, so a report can say
how much of the measured run the comparison actually covers. So are the requests the
caller excludes (a reader found their measured stamps contradictory: ``excluded``,
each with its reason); they are replayed but not compared.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from mist.traces.derive import latencies

METRICS = ("ttft", "tpot", "e2e")
"""Per-request latency metrics compared, in seconds (see :func:`mist.traces.derive.latencies`)."""

_REQUIRED = (
    "request_id",
    "arrival_s",
    "input_tokens",
    "output_tokens",
    "first_token_s",
    "finished_s",
)


@dataclass(frozen=True)
class AlignResult:
    """Measured and simulated requests joined on ``request_id``.

    Attributes
    ----------
    frame : pandas.DataFrame
        One row per matched request, sorted by (``arrival_s``, ``request_id``):
        ``request_id``, ``arrival_s`` (s, measured), ``input_tokens``,
        ``output_tokens`` (measured), then ``ttft_meas``, ``ttft_sim``,
        ``tpot_meas``, ``tpot_sim``, ``e2e_meas``, ``e2e_sim``, ``queue_meas``,
        ``queue_sim`` (all seconds; NaN where not observed). ``queue`` is
        ``scheduled_s - arrival_s``.
    measured, simulated : int
        Number of requests on each side before the join.
    matched : int
        Number of requests on both sides (rows of ``frame``).
    only_measured, only_simulated : tuple of str
        Sorted ids of requests found on one side only.
    excluded : tuple of dict
        Requests left out of the comparison by the caller, ``{"request_id", "reason"}``
        (plus whatever else the caller gave, e.g. ``line``), in the caller's order.
    """

    frame: pd.DataFrame
    measured: int
    simulated: int
    matched: int
    only_measured: tuple[str, ...] = ()
    only_simulated: tuple[str, ...] = ()
    excluded: tuple[dict, ...] = ()


def _check(df: pd.DataFrame, side: str) -> None:
    """Reject tables that cannot be aligned: missing columns or duplicate ids."""
    missing = [c for c in _REQUIRED if c not in df.columns]
    if missing:
        raise ValueError(f"{side} requests lack columns {missing}")
    dup = df["request_id"][df["request_id"].duplicated()]
    if len(dup):
        # A duplicated id makes the join ambiguous; refuse rather than guess.
        shown = sorted(map(str, dup.unique()))[:5]
        raise ValueError(f"{side} requests have {len(dup)} duplicate request_id(s), e.g. {shown}")


def _per_request(df: pd.DataFrame) -> pd.DataFrame:
    """Latencies and queueing delay (s) of one side, indexed by ``request_id``."""
    lat = latencies(df)
    if "scheduled_s" in df.columns:
        queue = df["scheduled_s"].astype(float) - df["arrival_s"].astype(float)
    else:
        queue = pd.Series(np.nan, index=df.index)
    lat["queue"] = queue.to_numpy(dtype=float)
    lat["request_id"] = lat["request_id"].astype(str)
    return lat.set_index("request_id")


def align(measured: pd.DataFrame, simulated: pd.DataFrame, excluded=()) -> AlignResult:
    """Join measured and simulated ``requests`` tables on ``request_id``.

    Parameters
    ----------
    measured, simulated : pandas.DataFrame
        Canonical ``requests`` tables (times in seconds). ``scheduled_s`` is
        optional; without it the queue columns are NaN.
    excluded : sequence of dict, optional
        Requests to leave out of the comparison, each ``{"request_id", "reason", ...}``
        (e.g. a reader's ``meta["excluded"]``); they still count as measured/simulated.

    Returns
    -------
    AlignResult
        The joined frame plus counts and ids of unmatched and excluded requests.

    Raises
    ------
    ValueError
        When a required column is missing or a side repeats a ``request_id``.
    """
    _check(measured, "measured")
    _check(simulated, "simulated")
    meas = _per_request(measured)
    sim = _per_request(simulated)
    ids_m, ids_s = set(meas.index), set(sim.index)
    left_out = {str(e["request_id"]) for e in excluded}
    common = sorted((ids_m & ids_s) - left_out)
    base = measured.assign(request_id=measured["request_id"].astype(str)).set_index("request_id")
    frame = base.loc[common, ["arrival_s", "input_tokens", "output_tokens"]].copy()
    for col in (*METRICS, "queue"):
        frame[f"{col}_meas"] = meas.loc[common, col].to_numpy(dtype=float)
        frame[f"{col}_sim"] = sim.loc[common, col].to_numpy(dtype=float)
    frame = frame.reset_index().sort_values(["arrival_s", "request_id"], kind="mergesort")
    return AlignResult(
        frame=frame.reset_index(drop=True),
        measured=len(meas),
        simulated=len(sim),
        matched=len(common),
        only_measured=tuple(sorted(ids_m - ids_s - left_out)),
        only_simulated=tuple(sorted(ids_s - ids_m - left_out)),
        excluded=tuple(dict(e, request_id=str(e["request_id"])) for e in excluded),
    )
