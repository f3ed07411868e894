"""Fidelity baselines: the per-run MAPE a simulator must not get worse than.

The baseline file is JSON (key-sorted, byte-stable)::

    {
      "version": 1,
      "tolerance_pct_points": 2.0,
      "runs": {"<run name>": {"ttft": {"mape": 12.3}, "tpot": {"mape": 4.5},
                              "e2e": {"mape": 6.7}}}
    }

A run's metric regresses when its current MAPE exceeds the baseline MAPE by more
than ``tolerance_pct_points`` percentage points (MAPE 10.0 -> 12.5 is +2.5 points).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from mist.traces.errors import TraceError
from mist.traces.io import atomic_write_json
from mist.validate.align import METRICS
from mist.validate.metrics import rounded

FORMAT_VERSION = 1
DEFAULT_TOLERANCE_PCT_POINTS = 2.0
GATED_KEY = "mape"


@dataclass(frozen=True)
class Baselines:
    """Loaded baseline file.

    Attributes
    ----------
    runs : dict
        ``{run: {metric: {"mape": float or None}}}``, MAPE in percent.
    tolerance_pct_points : float
        Allowed MAPE increase, in percentage points.
    """

    runs: dict = field(default_factory=dict)
    tolerance_pct_points: float = DEFAULT_TOLERANCE_PCT_POINTS


def _number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _validate(path: Path, doc) -> Baselines:
    """Check the parsed JSON document's shape; raise with file and reason."""
    if not isinstance(doc, dict) or not isinstance(doc.get("runs"), dict):
        raise TraceError(path, 'expected a JSON object with a "runs" object')
    tol = doc.get("tolerance_pct_points", DEFAULT_TOLERANCE_PCT_POINTS)
    if not _number(tol) or tol < 0:
        raise TraceError(path, f"tolerance_pct_points must be a number >= 0, got {tol!r}")
    for run, metrics in doc["runs"].items():
        if not isinstance(metrics, dict):
            raise TraceError(path, f"run {run!r}: expected an object of metrics")
        for name, summary in metrics.items():
            value = summary.get(GATED_KEY) if isinstance(summary, dict) else "?"
            if value is not None and not _number(value):
                raise TraceError(
                    path, f"run {run!r} metric {name!r}: mape must be a number or null"
                )
    return Baselines(runs=doc["runs"], tolerance_pct_points=float(tol))


def load_baselines(path) -> Baselines:
    """Read a baseline file.

    Raises
    ------
    TraceError
        When the file is missing, not JSON, or not shaped as documented above.
    """
    path = Path(path)
    if not path.exists():
        raise TraceError(path, "baseline file not found (create it with an update)")
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise TraceError(path, f"not valid JSON ({exc.msg})", line=exc.lineno) from exc
    return _validate(path, doc)


def _mape(metrics: Mapping, name: str) -> float | None:
    """The finite MAPE of ``metrics[name]``, or None when absent or not computable."""
    value = (metrics.get(name) or {}).get(GATED_KEY)
    return float(value) if _number(value) and math.isfinite(value) else None


def _check_run(run: str, current: Mapping, base: Mapping, tol: float) -> list[str]:
    """Regressions of one run's metrics against its baseline."""
    problems = []
    for name in (m for m in METRICS if m in base):
        was = _mape(base, name)
        if was is None:
            continue  # nothing recorded to hold the run to
        now = _mape(current, name)
        if now is None:
            problems.append(f"{run}: {name} MAPE not computable (baseline {was:.2f} %)")
        elif now > was + tol:
            problems.append(
                f"{run}: {name} MAPE {now:.2f} % exceeds baseline {was:.2f} % "
                f"by {now - was:.2f} points (tolerance {tol:.2f})"
            )
    return problems


def check(current: Mapping, baselines, tolerance: float | None = None) -> list[str]:
    """List fidelity regressions of ``current`` results against ``baselines``.

    Parameters
    ----------
    current : dict
        ``{run: {"ttft": summary, "tpot": summary, "e2e": summary}}`` with
        summaries from :func:`mist.validate.metrics.error_summary` (percent).
    baselines : Baselines or dict
        Loaded baselines, or a plain ``{run: {metric: {"mape": ...}}}`` mapping.
    tolerance : float, optional
        Allowed MAPE increase in percentage points; defaults to the file's
        ``tolerance_pct_points`` (or :data:`DEFAULT_TOLERANCE_PCT_POINTS`).

    Returns
    -------
    list of str
        Human-readable problems, sorted by run: regressed or uncomputable
        metrics, baseline runs missing from ``current``, and current runs without a
        baseline. Empty means the gate passes.
    """
    if isinstance(baselines, Baselines):
        runs, file_tol = baselines.runs, baselines.tolerance_pct_points
    else:
        runs, file_tol = baselines, DEFAULT_TOLERANCE_PCT_POINTS
    tol = file_tol if tolerance is None else float(tolerance)
    problems = []
    for run in sorted(set(runs) | set(current)):
        if run not in current:
            problems.append(f"{run}: missing from current results (has a baseline)")
        elif run not in runs:
            problems.append(f"{run}: no baseline recorded (run an update to add it)")
        else:
            problems.extend(_check_run(run, current[run], runs[run], tol))
    return problems


def update(path, current: Mapping) -> Baselines:
    """Record ``current`` MAPEs as the new baselines, keeping other runs and settings.

    Parameters
    ----------
    path : str or Path
        Baseline file; created (with the default tolerance) when missing.
    current : dict
        ``{run: {metric: summary}}`` as for :func:`check`. Only the MAPE of each
        metric is stored, rounded to 4 decimals (NaN stored as null).

    Returns
    -------
    Baselines
        What was written.
    """
    path = Path(path)
    old = load_baselines(path) if path.exists() else Baselines()
    runs = dict(old.runs)
    for run, metrics in current.items():
        runs[run] = {m: {GATED_KEY: metrics[m].get(GATED_KEY)} for m in METRICS if m in metrics}
    runs = rounded(runs, 4)
    doc = {
        "version": FORMAT_VERSION,
        "tolerance_pct_points": old.tolerance_pct_points,
        "runs": runs,
    }
    atomic_write_json(path, doc)
    return Baselines(runs=runs, tolerance_pct_points=old.tolerance_pct_points)
