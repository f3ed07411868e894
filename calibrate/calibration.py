"""Fit one :class:`LatencyModel` per operator, cross-validate, save and load artifacts.

Input is the canonical ``operator_profile`` table (any reader that produces it
works). An artifact is a folder of plain data files:

``grids.parquet``   one row per (operator, tp): feature names, axis values and the
                    filled grid, row-major — enough to rebuild the fitted models.
``report.json``     per-operator k-fold cross-validated errors and measured ranges.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from sklearn.model_selection import KFold

from calibrate.estimator import LatencyModel
from calibrate.features import OPERATORS
from traces.errors import TraceError
from traces.io import atomic_write_bytes, atomic_write_json


def operator_frames(profile: pa.Table, tp: int) -> dict[str, pd.DataFrame]:
    """Split ``operator_profile`` rows of degree ``tp`` by operator (known operators only)."""
    df = profile.to_pandas()
    df = df[df["tp"] == tp]
    return {op: g for op, g in df.groupby("operator", sort=True) if op in OPERATORS}


def fit_operators(profile: pa.Table, tp: int) -> dict[str, LatencyModel]:
    """Fit a latency model for every known operator measured at degree ``tp``."""
    models = {}
    for op, g in operator_frames(profile, tp).items():
        cols = list(OPERATORS[op][0])
        models[op] = LatencyModel().fit(g[cols].to_numpy(float), g["latency_s"].to_numpy(float))
    return models


def cross_validate(profile: pa.Table, tp: int, k: int = 5, seed: int = 0) -> pd.DataFrame:
    """K-fold cross-validated error (%) of each operator's model at degree ``tp``.

    Each fold's points are predicted by a model fitted without them, so the figures
    say how well the model interpolates between measured shapes.
    """
    rows = []
    for op, g in operator_frames(profile, tp).items():
        cols = list(OPERATORS[op][0])
        X = g[cols].to_numpy(float)
        y = g["latency_s"].to_numpy(float)
        if len(y) < 2 * k:
            rows.append({"operator": op, "tp": tp, "points": len(y), "mape": np.nan,
                         "median_ape": np.nan, "p90_ape": np.nan})
            continue
        ape = np.empty(len(y))
        for train, test in KFold(k, shuffle=True, random_state=seed).split(X):
            pred = LatencyModel().fit(X[train], y[train]).predict(X[test])
            ape[test] = np.abs(pred - y[test]) / y[test] * 100
        rows.append({"operator": op, "tp": tp, "points": len(y), "mape": float(ape.mean()),
                     "median_ape": float(np.median(ape)), "p90_ape": float(np.percentile(ape, 90))})
    return pd.DataFrame(rows)


def measured_ranges(models: dict[str, LatencyModel]) -> dict[str, dict[str, list[float]]]:
    """``{operator: {feature: [min, max]}}`` of what was measured."""
    return {op: {f: [float(a[0]), float(a[-1])] for f, a in zip(OPERATORS[op][0], m.axes_)}
            for op, m in models.items()}


def save_artifact(out_dir, models_by_tp: dict[int, dict[str, LatencyModel]], report: dict) -> None:
    """Write ``grids.parquet`` and ``report.json`` to ``out_dir`` (atomically each)."""
    rows = {"operator": [], "tp": [], "features": [], "axes": [], "values": []}
    for tp in sorted(models_by_tp):
        for op in sorted(models_by_tp[tp]):
            m = models_by_tp[tp][op]
            rows["operator"].append(op)
            rows["tp"].append(tp)
            rows["features"].append(list(OPERATORS[op][0]))
            rows["axes"].append([a.tolist() for a in m.axes_])
            rows["values"].append(m.grid_.ravel().tolist())
    table = pa.table(rows, metadata={"mist.table": "calibration_grids", "mist.version": "1"})
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink, compression="zstd")
    out = Path(out_dir)
    atomic_write_bytes(out / "grids.parquet", sink.getvalue().to_pybytes())
    atomic_write_json(out / "report.json", report)


def load_artifact(out_dir) -> dict[int, dict[str, LatencyModel]]:
    """Rebuild fitted models from ``grids.parquet`` (no refitting, no pickle)."""
    path = Path(out_dir) / "grids.parquet"
    if not path.is_file():
        raise TraceError(path, "calibration artifact not found")
    models: dict[int, dict[str, LatencyModel]] = {}
    for row in pq.read_table(path).to_pylist():
        m = LatencyModel()
        m.axes_ = [np.asarray(a, dtype=float) for a in row["axes"]]
        m.grid_ = np.asarray(row["values"], dtype=float).reshape([len(a) for a in m.axes_])
        m.n_features_in_ = len(m.axes_)
        m.n_measured_ = int(m.grid_.size)
        models.setdefault(int(row["tp"]), {})[row["operator"]] = m
    return models
