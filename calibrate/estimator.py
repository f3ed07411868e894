"""One latency model for every operator, following scikit-learn's estimator contract.

The model is a piecewise-multilinear interpolant over the measured grid: each
feature axis is the sorted set of measured values, grid cells that were not
measured are filled by linear interpolation along the axes (profilers measure
sparse, structured grids), and a prediction interpolates between the surrounding
measurements. Inside the measured range it reproduces the measurements exactly;
outside it either extrapolates linearly from the last segment or clips, as set by
``out_of_range`` — never silently: :meth:`LatencyModel.in_range` tells which
queries left the measured range, and the calibration report counts them.
"""

from __future__ import annotations

import numpy as np
from scipy.interpolate import RegularGridInterpolator
from sklearn.base import BaseEstimator, RegressorMixin
from sklearn.utils.validation import check_is_fitted


def _fill_axis(grid: np.ndarray, axis: int, coords: np.ndarray) -> None:
    """Fill NaNs along ``axis`` by linear interpolation between known neighbours (in place).

    Lines with one known value are filled with it; values outside the known span of
    a line are held at the nearest known value.
    """
    moved = np.moveaxis(grid, axis, -1)
    flat = moved.reshape(-1, moved.shape[-1])
    for row in flat:
        known = ~np.isnan(row)
        if known.all() or not known.any():
            continue
        row[~known] = np.interp(coords[~known], coords[known], row[known])
    moved[...] = flat.reshape(moved.shape)


class LatencyModel(BaseEstimator, RegressorMixin):
    """Operator latency (s) as a function of its feature columns.

    Parameters
    ----------
    out_of_range : {"extrapolate", "clip"}
        Behaviour for queries outside the measured range of any feature.
    """

    def __init__(self, out_of_range: str = "extrapolate"):
        self.out_of_range = out_of_range

    def fit(self, X, y):
        """Fit on features ``X`` (n_samples, n_features) and latencies ``y`` (s)."""
        X = np.asarray(X, dtype=float)
        y = np.asarray(y, dtype=float)
        if X.ndim == 1:
            X = X[:, None]
        if len(X) != len(y) or len(y) == 0:
            raise ValueError(f"X and y must be non-empty and the same length ({len(X)} vs {len(y)})")
        if self.out_of_range not in ("extrapolate", "clip"):
            raise ValueError(f"out_of_range must be 'extrapolate' or 'clip', not {self.out_of_range!r}")
        axes = [np.unique(X[:, j]) for j in range(X.shape[1])]
        idx = tuple(np.searchsorted(a, X[:, j]) for j, a in enumerate(axes))
        sums = np.zeros([len(a) for a in axes])
        counts = np.zeros_like(sums)
        np.add.at(sums, idx, y)
        np.add.at(counts, idx, 1.0)
        grid = np.where(counts > 0, sums / np.maximum(counts, 1), np.nan)
        while np.isnan(grid).any():
            before = np.isnan(grid).sum()
            for j, a in enumerate(axes):
                _fill_axis(grid, j, a)
            if np.isnan(grid).sum() == before:  # pragma: no cover - only for all-NaN slabs
                grid[np.isnan(grid)] = np.nanmean(grid)
        self.axes_ = axes
        self.grid_ = grid
        self.n_features_in_ = X.shape[1]
        self.n_measured_ = int((counts > 0).sum())
        return self

    def _interpolator(self) -> RegularGridInterpolator:
        # Axes of length 1 cannot be interpolated; RegularGridInterpolator handles
        # them only with method="linear" when duplicated, so pad them.
        axes, grid = [], self.grid_
        for j, a in enumerate(self.axes_):
            if len(a) == 1:
                a = np.array([a[0], a[0] + 1.0])
                grid = np.concatenate([grid, grid], axis=j)
            axes.append(a)
        return RegularGridInterpolator(axes, grid, method="linear", bounds_error=False, fill_value=None)

    def in_range(self, X) -> np.ndarray:
        """Boolean mask: which rows of ``X`` lie inside the measured range of every feature."""
        check_is_fitted(self, "grid_")
        X = np.atleast_2d(np.asarray(X, dtype=float))
        lo = np.array([a[0] for a in self.axes_])
        hi = np.array([a[-1] for a in self.axes_])
        return np.all((lo <= X) & (hi >= X), axis=1)

    def predict(self, X) -> np.ndarray:
        """Predicted latency (s) for each row of ``X``."""
        check_is_fitted(self, "grid_")
        X = np.asarray(X, dtype=float)
        if X.ndim == 1:
            X = X[:, None]
        if X.shape[1] != self.n_features_in_:
            raise ValueError(f"expected {self.n_features_in_} features, got {X.shape[1]}")
        if self.out_of_range == "clip":
            lo = np.array([a[0] for a in self.axes_])
            hi = np.array([a[-1] for a in self.axes_])
            X = np.clip(X, lo, hi)
        return self._interpolator()(X)
