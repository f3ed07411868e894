"""Log-log interpolation of kernel measurements on their grid, and its cross-validation.

A kernel database measures GEMMs, attention and collectives on structured grids
(``m x n x k``; ``batch x length`` per head layout; message size per GPU count)
with holes where a shape did not fit in memory. :class:`LogGrid` interpolates
multilinearly in log(feature) -> log(latency) space, which is how kernel time
scales (power laws between tile-quantisation steps), and fills holes along each
axis by log-log extrapolation from the nearest two measured points, the local
power law. :func:`cross_validate_kernels` measures how well it fills a hole.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa
from scipy.interpolate import RegularGridInterpolator

from mist.calibrate.calibration import ape_summary

# Local power-law exponents allowed when filling holes: kernel time never falls
# with size, and grows at most quadratically along one axis (causal attention).
MIN_SLOPE, MAX_SLOPE = 0.0, 2.0


def _fill_line(logx: np.ndarray, row: np.ndarray) -> None:
    """Fill NaNs of one grid line in place: interpolate inside, power-law outside."""
    known = ~np.isnan(row)
    if known.all() or not known.any():
        return
    kx, ky = logx[known], row[known]
    miss = ~known
    row[miss] = np.interp(logx[miss], kx, ky)
    if len(kx) >= 2:
        hi = miss & (logx > kx[-1])
        lo = miss & (logx < kx[0])
        s_hi = np.clip((ky[-1] - ky[-2]) / (kx[-1] - kx[-2]), MIN_SLOPE, MAX_SLOPE)
        s_lo = np.clip((ky[1] - ky[0]) / (kx[1] - kx[0]), MIN_SLOPE, MAX_SLOPE)
        row[hi] = ky[-1] + s_hi * (logx[hi] - kx[-1])
        row[lo] = ky[0] + s_lo * (logx[lo] - kx[0])


def _monotone_envelope(grid: np.ndarray, spike: float = np.log(1.2)) -> int:
    """Clean measurement spikes of a log-latency grid in place (NaN = not measured).

    A kernel does not get faster when a dimension grows, so every measured cell is
    capped by the smallest measured cell above it along each axis. A cell more
    than 20 % above that cap is a spike: it becomes a hole (NaN), filled later from
    its neighbours like any unmeasured shape. Returns how many cells changed.
    """
    before = grid.copy()
    for j in range(grid.ndim):
        moved = np.moveaxis(grid, j, -1)
        flipped = moved[..., ::-1]
        filled = np.where(np.isnan(flipped), np.inf, flipped)
        runmin = np.concatenate([np.full(filled.shape[:-1] + (1,), np.inf),
                                 np.minimum.accumulate(filled, axis=-1)[..., :-1]], axis=-1)[..., ::-1]
        spikes = ~np.isnan(moved) & (moved > runmin + spike)
        np.minimum(moved, runmin, out=moved, where=~np.isnan(moved))
        moved[spikes] = np.nan
    changed = ~np.isnan(before) & (np.isnan(grid) | (grid < before - 1e-12))
    return int(changed.sum())


class LogGrid:
    """Multilinear interpolant of log latency over log features on a measured grid.

    Parameters
    ----------
    X : array (n, d) of positive features
    y : array (n,) of positive latencies (s)
    monotone : bool
        Clean measurement spikes first (:func:`_monotone_envelope`): a kernel never
        gets faster when a dimension grows; ``adjusted`` counts the cells changed,
        and spikes are answered as ``filled``.
    """

    def __init__(self, X, y, monotone: bool = True):
        X = np.atleast_2d(np.asarray(X, dtype=float))
        y = np.asarray(y, dtype=float)
        if X.shape[0] != len(y) or not len(y):
            raise ValueError("X and y must be non-empty and the same length")
        if (X <= 0).any() or (y <= 0).any():
            raise ValueError("features and latencies must be positive")
        self.axes = [np.unique(X[:, j]) for j in range(X.shape[1])]
        self.log_axes = [np.log(a) for a in self.axes]
        idx = tuple(np.searchsorted(a, X[:, j]) for j, a in enumerate(self.axes))
        shape = [len(a) for a in self.axes]
        sums = np.zeros(shape)
        counts = np.zeros(shape)
        np.add.at(sums, idx, np.log(y))
        np.add.at(counts, idx, 1.0)
        grid = np.where(counts > 0, sums / np.maximum(counts, 1), np.nan)
        self.measured = counts > 0
        self.adjusted = 0
        if monotone:
            self.adjusted = _monotone_envelope(grid)
            self.measured &= ~np.isnan(grid)
        for _ in range(4):  # a few sweeps reach every cell of a connected grid
            if not np.isnan(grid).any():
                break
            for j, lx in enumerate(self.log_axes):
                moved = np.moveaxis(grid, j, -1)
                flat = moved.reshape(-1, moved.shape[-1])
                for row in flat:
                    _fill_line(lx, row)
                moved[...] = flat.reshape(moved.shape)
        if np.isnan(grid).any():
            grid[np.isnan(grid)] = np.nanmean(grid)
        self.grid = grid
        axes, g, m = [], grid, self.measured.astype(float)
        for j, a in enumerate(self.log_axes):
            if len(a) == 1:  # a single measured value: constant along that axis
                a = np.array([a[0], a[0] + 1.0])
                g = np.concatenate([g, g], axis=j)
                m = np.concatenate([m, m], axis=j)
            axes.append(a)
        self._interp = RegularGridInterpolator(axes, g, bounds_error=False, fill_value=None)
        self._measured = RegularGridInterpolator(axes, m, method="linear", bounds_error=False, fill_value=0.0)

    def predict(self, X) -> tuple[np.ndarray, np.ndarray]:
        """Latencies (s) and a source label per row (measured / filled / extrapolated)."""
        X = np.atleast_2d(np.asarray(X, dtype=float))
        L = np.log(np.maximum(X, 1e-12))
        out = np.exp(self._interp(L))
        lo = np.array([a[0] for a in self.axes])
        hi = np.array([a[-1] for a in self.axes])
        inside = np.all((lo <= X) & (hi >= X), axis=1)
        full = self._measured(np.clip(L, [a[0] for a in self.log_axes], [a[-1] for a in self.log_axes]))
        src = np.where(~inside, "extrapolated", np.where(full > 1 - 1e-9, "measured", "filled"))
        return out, src


def cross_validate_kernels(profile: pa.Table, k: int = 5, seed: int = 0, max_rows: int = 20000) -> pd.DataFrame:
    """K-fold cross-validated APE (%) of :class:`LogGrid` per kernel family and dtype.

    Each fold's held-out measurements become holes the interpolant must fill from
    their neighbours: the error of predicting a shape the database did not measure.
    Folds are drawn over each group's rows sorted by shape, so the order of the
    table's rows does not change the estimate.
    """
    df = profile.to_pandas()
    feats = {"gemm": ["m", "n", "k"], "context_attention": ["sequences", "tokens"],
             "generation_attention": ["sequences", "kv_decode"], "custom_all_reduce": ["message_bytes"],
             "nccl_all_reduce": ["message_bytes"]}
    keys = {"gemm": ["dtype"], "context_attention": ["dtype", "num_heads", "num_kv_heads", "head_dim"],
            "generation_attention": ["dtype", "num_heads", "num_kv_heads", "head_dim"],
            "custom_all_reduce": ["engine", "tp"], "nccl_all_reduce": ["dtype", "tp"]}
    rng = np.random.default_rng(seed)
    rows = []
    for op, cols in feats.items():
        sub = df[df["operator"] == op]
        if not len(sub):
            continue
        for dtype, part in sub.groupby("dtype" if op != "custom_all_reduce" else "engine"):
            preds, meas = [], []
            for _, group in part.groupby(keys[op]):
                if len(group) < 2 * k:
                    continue
                # folds drawn over the rows in shape order, not file order: the same
                # measurements give the same estimate however the table is sorted
                group = group.sort_values([*cols, "latency_s"], kind="stable")
                X = group[cols].to_numpy(float)
                y = group["latency_s"].to_numpy(float)
                fold = rng.integers(0, k, len(y))
                for f in range(k):
                    train, test = fold != f, fold == f
                    if train.sum() < 2 or not test.any():
                        continue
                    preds.append(LogGrid(X[train], y[train]).predict(X[test])[0])
                    meas.append(y[test])
                if sum(map(len, meas)) > max_rows:
                    break
            if meas:
                stats = ape_summary(np.concatenate(preds), np.concatenate(meas))
                rows.append({"kernel": op, "variant": dtype, "held_out": sum(map(len, meas)),
                             **{k: stats[k] for k in ("mape", "median_ape", "p90_ape")}})
    return pd.DataFrame(rows)
