"""One latency model for every operator, following scikit-learn's estimator contract.

The model is a piecewise-multilinear interpolant over the measured grid: each
feature axis is the sorted set of measured values, grid cells that were not
measured are filled by linear interpolation along the axes (profilers measure
sparse, structured grids), and a prediction interpolates between the surrounding
measurements. Inside the measured range it reproduces the measurements exactly;
outside it either extrapolates linearly from the last segment or clips, as set by
``out_of_range`` — never silently: :meth:`LatencyModel.in_range` tells which
queries left the measured range, and the calibration report counts them.

Input is validated as by any scikit-learn regressor (``validate_data``): X must be
2-D, finite, real and dense, and must have the number of features seen in ``fit``.
"""

from __future__ import annotations

import math
from numbers import Integral

import numpy as np
from scipy.interpolate import RegularGridInterpolator
from sklearn.base import BaseEstimator, RegressorMixin
from sklearn.utils.validation import check_is_fitted, validate_data

_OUT_OF_RANGE = ("extrapolate", "clip")


def _interp_rows(x: np.ndarray, xp: np.ndarray, fp: np.ndarray) -> np.ndarray:
    """``np.interp(x, xp, fp[r])`` for every row ``r`` of ``fp`` at once, bit for bit.

    ``xp`` is increasing and ``x`` holds none of its values (they are the unmeasured
    coordinates of an axis). numpy has no batched ``interp``, and one call per row
    made fitting a sparse 20^5 grid take seconds, so its arithmetic is repeated here
    on whole columns: ``slope * (x - xp[j]) + fp[j]`` with ``fp[0]`` / ``fp[-1]``
    held beyond the ends. Rows where that gives NaN (infinite values, which numpy
    treats specially) are left to ``np.interp`` itself.
    """
    if len(xp) == 1:
        return np.repeat(fp, len(x), axis=1)
    j = np.searchsorted(xp, x) - 1
    inner = (j >= 0) & (j < len(xp) - 1)
    jj = np.clip(j, 0, len(xp) - 2)
    with np.errstate(invalid="ignore"):  # the NaNs of infinite values are redone below
        slope = (fp[:, jj + 1] - fp[:, jj]) / (xp[jj + 1] - xp[jj])
        inside = slope * (x - xp[jj]) + fp[:, jj]
    out = np.where(inner, inside, np.where(j < 0, fp[:, :1], fp[:, -1:]))
    for r in np.flatnonzero(np.isnan(out).any(axis=1)):
        out[r] = np.interp(x, xp, fp[r])
    return out


def _same_rows(mask: np.ndarray) -> list[np.ndarray]:
    """Indices of the rows of the boolean matrix ``mask``, grouped by equal rows."""
    # Rows packed into 64-bit words sort fast; np.unique(axis=0) sorts bool rows as
    # opaque records, which took seconds on 10^5 rows.
    packed = np.packbits(mask, axis=1)
    words = np.pad(packed, ((0, 0), (0, -packed.shape[1] % 8))).view(np.uint64)
    order = np.lexsort(words.T[::-1])
    ordered = words[order]
    starts = np.flatnonzero((ordered[1:] != ordered[:-1]).any(axis=1)) + 1
    return np.split(order, starts)


def _fill_axis(grid: np.ndarray, axis: int, coords: np.ndarray) -> None:
    """Fill NaNs along ``axis`` by linear interpolation between known neighbours (in place).

    Lines with one known value are filled with it; values outside the known span of
    a line are held at the nearest known value. Lines that share which cells are
    known are interpolated together (:func:`_interp_rows`).
    """
    moved = np.moveaxis(grid, axis, -1)
    flat = moved.reshape(-1, moved.shape[-1])
    known = ~np.isnan(flat)
    count = known.sum(axis=1)
    partial = np.flatnonzero((count > 0) & (count < flat.shape[1]))
    if not len(partial):
        return
    for rows in _same_rows(known[partial]):
        rows, mask = partial[rows], known[partial[rows[0]]]
        flat[np.ix_(rows, ~mask)] = _interp_rows(coords[~mask], coords[mask], flat[np.ix_(rows, mask)])
    moved[...] = flat.reshape(moved.shape)


def _fill_grid(grid: np.ndarray, axes: list[np.ndarray]) -> None:
    """Fill every NaN cell of ``grid`` (in place) by sweeping :func:`_fill_axis` over the axes.

    Sweeps repeat until nothing is left to fill; cells that no axis line can reach
    (whole slabs without a measurement) take the mean of the grid.
    """
    while np.isnan(grid).any():
        before = np.isnan(grid).sum()
        for j, a in enumerate(axes):
            _fill_axis(grid, j, a)
        if np.isnan(grid).sum() == before:  # pragma: no cover - only for all-NaN slabs
            grid[np.isnan(grid)] = np.nanmean(grid)


class LatencyModel(RegressorMixin, BaseEstimator):
    """Operator latency (s) as a function of its feature columns.

    Parameters
    ----------
    out_of_range : {"extrapolate", "clip"}, default="extrapolate"
        Behaviour for queries outside the measured range of any feature.
    max_grid_cells : int, default=2**24
        Largest grid (product of the numbers of distinct values of each feature) that
        :meth:`fit` will allocate; the default is 128 MiB of float64 per array, far
        above a real profile (tens of thousands of cells). Unstructured inputs such
        as continuous random features make a grid of ``n_samples ** n_features``
        cells, which :meth:`fit` refuses with a ValueError rather than exhaust memory.

    Attributes
    ----------
    axes_ : list of ndarray
        Sorted distinct measured values of each feature (the grid's axes).
    grid_ : ndarray of shape ``tuple(len(a) for a in axes_)``
        Latency (s) at every grid point: the mean of the measurements there, or the
        interpolated value where nothing was measured.
    n_measured_ : int
        Number of grid cells that hold at least one measurement.
    n_features_in_ : int
        Number of features seen in :meth:`fit`.
    feature_names_in_ : ndarray of shape (n_features_in_,)
        Column names of ``X`` in :meth:`fit`, when it had string column names.
    """

    def __init__(self, out_of_range: str = "extrapolate", max_grid_cells: int = 2**24):
        self.out_of_range = out_of_range
        self.max_grid_cells = max_grid_cells

    def _check_params(self) -> None:
        if self.out_of_range not in _OUT_OF_RANGE:
            raise ValueError(f"out_of_range must be 'extrapolate' or 'clip', not {self.out_of_range!r}")
        if not isinstance(self.max_grid_cells, Integral) or self.max_grid_cells < 1:
            raise ValueError(f"max_grid_cells must be a positive integer, not {self.max_grid_cells!r}")

    def _check_grid_size(self, axes: list[np.ndarray]) -> None:
        """Refuse a grid over ``max_grid_cells`` before any of it is allocated."""
        shape = [len(a) for a in axes]
        cells = math.prod(shape)  # Python int: no overflow however many features
        if cells > self.max_grid_cells:
            raise ValueError(
                f"the measured values span a grid of {cells:,} cells "
                f"({' x '.join(map(str, shape))} distinct values per feature, "
                f"{cells * 8 / 2**20:,.0f} MiB as float64), more than max_grid_cells="
                f"{self.max_grid_cells:,}; LatencyModel interpolates a structured grid of "
                "measurements and cannot hold this one (too many distinct values per feature)")

    def fit(self, X, y) -> LatencyModel:
        """Fit the grid on measured points.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
            Feature values of each measurement (units per operator, e.g. tokens).
        y : array-like of shape (n_samples,)
            Measured latencies (s). Repeated feature rows are averaged.

        Returns
        -------
        LatencyModel
            ``self``, fitted.

        Raises
        ------
        ValueError
            On invalid input (as any scikit-learn regressor), an unknown
            ``out_of_range``, or a grid of more than ``max_grid_cells`` cells.
        """
        self._check_params()
        X, y = validate_data(self, X, y, dtype=np.float64, y_numeric=True)
        y = np.asarray(y, dtype=np.float64)
        axes = [np.unique(X[:, j]) for j in range(X.shape[1])]
        self._check_grid_size(axes)
        idx = tuple(np.searchsorted(a, X[:, j]) for j, a in enumerate(axes))
        sums = np.zeros([len(a) for a in axes])
        counts = np.zeros_like(sums)
        np.add.at(sums, idx, y)
        np.add.at(counts, idx, 1.0)
        grid = np.where(counts > 0, sums / np.maximum(counts, 1), np.nan)
        _fill_grid(grid, axes)
        self.axes_ = axes
        self.grid_ = grid
        self.n_measured_ = int((counts > 0).sum())
        return self

    def _validated(self, X) -> np.ndarray:
        """``X`` checked against the fitted model, as float64 of shape (n, n_features_in_)."""
        check_is_fitted(self, "grid_")
        return validate_data(self, X, dtype=np.float64, reset=False)

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
        """Which rows of ``X`` lie inside the measured range of every feature.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features_in_)

        Returns
        -------
        ndarray of bool, shape (n_samples,)
        """
        X = self._validated(X)
        lo = np.array([a[0] for a in self.axes_])
        hi = np.array([a[-1] for a in self.axes_])
        return np.all((lo <= X) & (hi >= X), axis=1)

    def predict(self, X) -> np.ndarray:
        """Predicted latency (s) of each row of ``X``.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features_in_)

        Returns
        -------
        ndarray of shape (n_samples,)
            Latency (s); outside the measured range as set by ``out_of_range``.
        """
        X = self._validated(X)
        if self.out_of_range == "clip":
            lo = np.array([a[0] for a in self.axes_])
            hi = np.array([a[-1] for a in self.axes_])
            X = np.clip(X, lo, hi)
        return self._interpolator()(X)
