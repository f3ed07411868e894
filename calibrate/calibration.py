"""Fit one :class:`LatencyModel` per operator, cross-validate, save and load artifacts.

Input is the canonical ``operator_profile`` table (any reader that produces it
works). An artifact is a folder of plain data files:

``grids.parquet``   one row per (operator, tp): feature names, axis values and the
                    filled grid, row-major — enough to rebuild the fitted models.
``report.json``     per-operator k-fold cross-validated errors and measured ranges.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
from sklearn.model_selection import KFold

from mist.calibrate.estimator import LatencyModel
from mist.calibrate.features import COMMON, MLP, OPERATORS
from mist.traces.errors import TraceError
from mist.traces.io import atomic_write_bytes, atomic_write_json, parquet_bytes, read_table
from mist.traces.schema import CALIBRATION_GRIDS

GRIDS_TABLE = CALIBRATION_GRIDS.metadata[b"mist.table"].decode()
GRIDS_VERSION = CALIBRATION_GRIDS.metadata[b"mist.version"].decode()
# the columns every version has (version 1 files lack n_measured and out_of_range)
_GRIDS_COLUMNS = ("operator", "tp", "features", "axes", "values")
REPORT_VERSION = 1
_CV_KEYS = ("mape", "median_ape", "p90_ape")


def operator_frames(profile: pa.Table, tp: int) -> dict[str, pd.DataFrame]:
    """Split ``operator_profile`` rows of degree ``tp`` by operator (known operators only)."""
    df = profile.to_pandas()
    df = df[df["tp"] == tp]
    return {op: g for op, g in df.groupby("operator", sort=True) if op in OPERATORS}


def _xy(op: str, frame: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """Feature matrix and latencies (s) of one operator's rows."""
    return frame[list(OPERATORS[op][0])].to_numpy(float), frame["latency_s"].to_numpy(float)


def fit_operators(profile: pa.Table, tp: int) -> dict[str, LatencyModel]:
    """Fit a latency model for every known operator measured at degree ``tp``."""
    return {op: LatencyModel().fit(*_xy(op, g)) for op, g in operator_frames(profile, tp).items()}


def ape_summary(pred, meas, digits: int | None = None) -> dict:
    """Percentage errors of ``pred`` against ``meas``: ``mape``, ``median_ape``, ``p90_ape``
    and ``bias`` (mean signed error), in percent; None each when there is nothing to
    compare. ``digits`` rounds them."""
    pred, meas = np.asarray(pred, dtype=float), np.asarray(meas, dtype=float)
    if not len(pred):
        return dict.fromkeys((*_CV_KEYS, "bias"))
    err = (pred - meas) / meas * 100
    ape = np.abs(err)
    out = {"mape": float(ape.mean()), "median_ape": float(np.median(ape)),
           "p90_ape": float(np.percentile(ape, 90)), "bias": float(err.mean())}
    return {k: round(v, digits) for k, v in out.items()} if digits is not None else out


def cv_errors(X: np.ndarray, y: np.ndarray, k: int = 5, seed: int = 0) -> dict[str, float]:
    """K-fold cross-validated absolute percentage errors (%) of one operator's model.

    Parameters
    ----------
    X : ndarray of shape (n_samples, n_features)
    y : ndarray of shape (n_samples,)
        Measured latencies (s).
    k : int
        Number of folds (at least 2).
    seed : int
        Seed of the fold shuffle.

    Returns
    -------
    dict
        ``mape``, ``median_ape`` and ``p90_ape`` in percent; NaN when there are fewer
        than ``2 * k`` points (folds too small to say anything).
    """
    if len(y) < 2 * k:
        return dict.fromkeys(_CV_KEYS, float("nan"))
    pred = np.empty(len(y))
    for train, test in KFold(k, shuffle=True, random_state=seed).split(X):
        pred[test] = LatencyModel().fit(X[train], y[train]).predict(X[test])
    stats = ape_summary(pred, y)
    return {key: stats[key] for key in _CV_KEYS}


def cross_validate(profile: pa.Table, tp: int, k: int = 5, seed: int = 0) -> pd.DataFrame:
    """K-fold cross-validated error (%) of each operator's model at degree ``tp``.

    Each fold's points are predicted by a model fitted without them, so the figures
    say how well the model interpolates between measured shapes.
    """
    rows = []
    for op, g in operator_frames(profile, tp).items():
        X, y = _xy(op, g)
        rows.append({"operator": op, "tp": tp, "points": len(y), **cv_errors(X, y, k, seed)})
    return pd.DataFrame(rows)


def measured_ranges(models: dict[str, LatencyModel]) -> dict[str, dict[str, list[float]]]:
    """``{operator: {feature: [min, max]}}`` of what was measured."""
    return {op: {f: [float(a[0]), float(a[-1])] for f, a in zip(OPERATORS[op][0], m.axes_)}
            for op, m in models.items()}


def _bundle_summary(bundle) -> dict:
    """The bundle's identity from ``meta.yaml``: hardware, model, engine version."""
    meta = bundle.meta
    keys = ("gpu", "model", "variant", "cuda_version", "profiler_version", "profiled_at")
    summary = {key: (None if meta.get(key) is None else str(meta[key])) for key in keys}
    summary.update(hardware=bundle.hardware, engine="vllm", root=str(bundle.root),
                   engine_version=None if meta.get("vllm_version") is None else str(meta["vllm_version"]),
                   tp_degrees=bundle.tp_degrees)
    return summary


def _round(x: float, digits: int = 4) -> float | None:
    """JSON-safe rounding: NaN (no figure) becomes null."""
    return None if not np.isfinite(x) else round(float(x), digits)


def _degree_plan(bundle, rows: pd.DataFrame, tp: int) -> tuple[dict, list]:
    """The report entry of degree ``tp`` (operators ignored and missing) and its fitting
    tasks ``(tp, operator, rows)``; TraceError when no known operator was measured."""
    ops = sorted(set(rows["operator"]))
    known = [op for op in ops if op in OPERATORS]
    if not known:
        raise TraceError(bundle.root / f"tp{tp}", "no known operator measured at this degree")
    entry = {"ignored_operators": [op for op in ops if op not in OPERATORS],
             "missing_required": [op for op in COMMON + (() if "moe" in known else MLP) if op not in known],
             "operators": {}}  # fmt: skip
    return entry, [(tp, op, rows[rows["operator"] == op]) for op in known]


def calibrate_bundle(bundle, tps: Iterable[int] | None = None, k: int = 5, seed: int = 0,
                     progress: Callable[[list], Iterable] | None = None
                     ) -> tuple[dict[int, dict[str, LatencyModel]], dict]:
    """Fit and cross-validate every operator of a layer-profile bundle.

    Parameters
    ----------
    bundle : profiles.bundle.Bundle
        A read bundle.
    tps : iterable of int, optional
        Tensor-parallel degrees to calibrate; default every degree in the bundle.
    k, seed : int
        Folds and fold-shuffle seed of the cross-validation (:func:`cv_errors`).
    progress : callable, optional
        Wraps the list of ``(tp, operator)`` tasks, e.g. a ``tqdm`` progress bar.

    Returns
    -------
    models_by_tp : dict
        ``{tp: {operator: fitted LatencyModel}}``, for :func:`save_artifact`.
    report : dict
        JSON-ready: bundle summary, CV settings and, per tp and operator, features,
        point count, CV errors (%) and measured feature ranges.

    Raises
    ------
    TraceError
        A requested degree is not in the bundle, or has no known operator.
    """
    from mist.profiles.bundle import to_operator_profile  # profiles sits left of calibrate

    tps = sorted(set(bundle.tp_degrees if tps is None else tps))
    missing = [tp for tp in tps if tp not in bundle.tp_degrees]
    if missing:
        raise TraceError(bundle.root, f"no tp{missing[0]}/ folder; bundle has tp degrees {bundle.tp_degrees}")
    profile = to_operator_profile(bundle).to_pandas()
    tasks, per_tp = [], {}
    for tp in tps:
        per_tp[tp], more = _degree_plan(bundle, profile[profile["tp"] == tp], tp)
        tasks += more
    models: dict[int, dict[str, LatencyModel]] = {tp: {} for tp in tps}
    for tp, op, frame in (progress(tasks) if progress else tasks):
        X, y = _xy(op, frame)
        model = LatencyModel().fit(X, y)
        models[tp][op] = model
        per_tp[tp]["operators"][op] = {
            "features": list(OPERATORS[op][0]), "scope": OPERATORS[op][1], "points": int(len(y)),
            "grid_cells": int(model.grid_.size), "measured_cells": model.n_measured_,
            "cv": {key: _round(v) for key, v in cv_errors(X, y, k, seed).items()},
            "ranges": measured_ranges({op: model})[op],
        }
    report = {"mist.report": "calibration", "version": REPORT_VERSION, "bundle": _bundle_summary(bundle),
              "cv": {"folds": k, "seed": seed}, "tp": {str(tp): per_tp[tp] for tp in tps}}
    return models, report


def grids_bytes(models_by_tp: dict[int, dict[str, LatencyModel]]) -> bytes:
    """``grids.parquet`` content for ``models_by_tp`` (deterministic bytes)."""
    rows = {name: [] for name in CALIBRATION_GRIDS.names}
    for tp in sorted(models_by_tp):
        for op in sorted(models_by_tp[tp]):
            m = models_by_tp[tp][op]
            rows["operator"].append(op)
            rows["tp"].append(int(tp))
            rows["features"].append(list(OPERATORS[op][0]))
            rows["axes"].append([a.tolist() for a in m.axes_])
            rows["values"].append(m.grid_.ravel().tolist())
            rows["n_measured"].append(int(m.n_measured_))
            rows["out_of_range"].append(m.out_of_range)
    return parquet_bytes(pa.table(rows, schema=CALIBRATION_GRIDS))


def save_artifact(out_dir, models_by_tp: dict[int, dict[str, LatencyModel]], report: dict) -> None:
    """Write ``grids.parquet`` and ``report.json`` to ``out_dir`` (atomically each)."""
    out = Path(out_dir)
    atomic_write_bytes(out / "grids.parquet", grids_bytes(models_by_tp))
    atomic_write_json(out / "report.json", report)


def _model_from_row(path: Path, i: int, row: dict) -> LatencyModel:
    """Rebuild one fitted model from a ``grids.parquet`` row; TraceError if inconsistent."""
    m = LatencyModel(out_of_range=row.get("out_of_range") or "extrapolate")
    m.axes_ = [np.asarray(a, dtype=float) for a in row["axes"] or []]
    shape = [len(a) for a in m.axes_]
    values = np.asarray(row["values"] or [], dtype=float)
    if not m.axes_ or values.size != int(np.prod(shape)) or len(row["features"] or []) != len(shape):
        raise TraceError(path, f"grid of {row['operator']!r} tp={row['tp']} does not match its axes", line=i)
    m.grid_ = values.reshape(shape)
    m.n_features_in_ = len(m.axes_)
    m.n_measured_ = int(row["n_measured"]) if row.get("n_measured") is not None else int(m.grid_.size)
    return m


def load_artifact(out_dir) -> dict[int, dict[str, LatencyModel]]:
    """Rebuild fitted models from ``grids.parquet`` (no refitting, no pickle).

    Raises
    ------
    TraceError
        The file is missing, unreadable, another table kind, or a grid is malformed.
    """
    path = Path(out_dir) / "grids.parquet"
    if not path.is_file():
        raise TraceError(path, "calibration artifact not found")
    table = read_table(path, expect=GRIDS_TABLE, columns=_GRIDS_COLUMNS)
    models: dict[int, dict[str, LatencyModel]] = {}
    for i, row in enumerate(table.to_pylist()):
        models.setdefault(int(row["tp"]), {})[row["operator"]] = _model_from_row(path, i, row)
    return models
