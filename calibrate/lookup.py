"""Fast lookups for the replay hot path.

The replay asks for operator latencies millions of times, one step at a time, so
numpy's per-call overhead (microseconds) would dominate. These lookups are compiled
once from fitted :class:`~mist.calibrate.estimator.LatencyModel` grids (its ``axes_``
and ``grid_``) into plain Python tuples and evaluated with scalar arithmetic.
"""

from __future__ import annotations

from bisect import bisect_right
from dataclasses import dataclass

import numpy as np
from sklearn.utils.validation import check_is_fitted

from mist.calibrate.estimator import LatencyModel


def integer_table(model: LatencyModel, upto: int) -> np.ndarray:
    """Latency (s) of a 1-feature model at every integer 0..upto (0 maps to 0 s).

    Parameters
    ----------
    model : LatencyModel
        Fitted on one feature (a count: tokens, sequences).
    upto : int
        Largest count tabulated.

    Returns
    -------
    ndarray of shape (upto + 1,)
        Latency (s) indexed by the count.
    """
    x = np.arange(upto + 1, dtype=float)
    out = model.predict(x[:, None])
    out[0] = 0.0
    return out


@dataclass(frozen=True)
class GridLookup:
    """Multilinear interpolation over a regular (uneven) grid, scalar arguments.

    Out-of-range arguments are clipped to the measured range; callers that need to
    know (the cost model does) test :meth:`inside` first.

    Attributes
    ----------
    axes : tuple of tuple of float
        Increasing grid coordinates of each argument (units of the model's features).
    values : tuple of float
        Latency (s) at every grid point, the grid flattened row-major.
    strides : tuple of int
        Step in ``values`` for one step along each axis.
    """

    axes: tuple[tuple[float, ...], ...]
    values: tuple[float, ...]  # row-major flattening of the grid
    strides: tuple[int, ...]

    @classmethod
    def from_model(cls, model: LatencyModel) -> GridLookup:
        """The lookup of a fitted (or loaded) model's grid: its ``axes_`` and ``grid_``."""
        check_is_fitted(model, ("axes_", "grid_"))
        grid = np.asarray(model.grid_, dtype=float)
        strides = tuple(int(s // grid.itemsize) for s in grid.strides)
        return cls(tuple(tuple(map(float, a)) for a in model.axes_), tuple(grid.ravel().tolist()), strides)

    def leading_slice(self, count: int) -> GridLookup:
        """The grid with its first ``count`` axes held at their first (lowest) value.

        E.g. attention with no prefill (chunk 0, prefill KV 0) as a function of the
        decode axes alone — a 2-D lookup is several times cheaper than a 4-D one.
        """
        grid = np.asarray(self.values).reshape([len(a) for a in self.axes])[(0,) * count]
        strides = tuple(int(st // grid.itemsize) for st in np.ascontiguousarray(grid).strides)
        return GridLookup(self.axes[count:], tuple(np.ascontiguousarray(grid).ravel().tolist()), strides)

    def bilinear(self, x: float, y: float) -> float:
        """:meth:`__call__` for a 2-axis grid, unrolled (the replay's decode-only path)."""
        ax, ay = self.axes
        vals, sx = self.values, self.strides[0]
        if x <= ax[0]:
            i, fx = 0, 0.0
        elif x >= ax[-1]:
            i, fx = len(ax) - 1, 0.0
        else:
            i = bisect_right(ax, x) - 1
            fx = (x - ax[i]) / (ax[i + 1] - ax[i])
        if y <= ay[0]:
            j, fy = 0, 0.0
        elif y >= ay[-1]:
            j, fy = len(ay) - 1, 0.0
        else:
            j = bisect_right(ay, y) - 1
            fy = (y - ay[j]) / (ay[j + 1] - ay[j])
        o = i * sx + j
        v = vals[o] * (1.0 - fy) + (vals[o + 1] * fy if fy else 0.0)
        if fx:
            v = v * (1.0 - fx) + fx * (vals[o + sx] * (1.0 - fy) + (vals[o + sx + 1] * fy if fy else 0.0))
        return v

    def inside(self, *x: float) -> bool:
        """True when every argument lies within its axis' measured range."""
        return all(a[0] <= v <= a[-1] for a, v in zip(self.axes, x))

    def __call__(self, *x: float) -> float:
        return self.total(self.corners(*x))

    def corners(self, *x: float, start: int = 0, head: list | None = None) -> list:
        """The grid corners ``[(offset into values, weight)]`` around ``x`` on the axes
        from ``start`` on, expanding ``head`` (the corners on the axes before ``start``;
        default: none). Queries that share their leading coordinates can share their
        expansion: the weights are the same products, so the result is bit for bit."""
        # Corners are expanded only along axes where the point falls strictly inside a
        # cell, so a decode-only query (prefill axes at 0) touches 4 corners, not 16.
        corners = head if head is not None else [(0, 1.0)]
        for a, s, v in zip(self.axes[start:], self.strides[start:], x):
            if v <= a[0]:
                continue
            n = len(a)
            if v >= a[-1]:
                corners = [(o + (n - 1) * s, w) for o, w in corners]
                continue
            i = bisect_right(a, v) - 1
            f = (v - a[i]) / (a[i + 1] - a[i])
            lo = i * s
            if f == 0.0:
                corners = [(o + lo, w) for o, w in corners]
            else:
                g = 1.0 - f
                corners = [c for o, w in corners for c in ((o + lo, w * g), (o + lo + s, w * f))]
        return corners

    def total(self, corners: list) -> float:
        """The interpolated value of :meth:`corners`' weighted grid corners."""
        vals = self.values
        return sum([w * vals[o] for o, w in corners])

    def total_along(self, head: list, axis: int, v: float) -> float:
        """``total(corners(v, start=axis, head=head))``, bit for bit (the same products
        summed in the same order), without building the corners."""
        a, s, vals = self.axes[axis], self.strides[axis], self.values
        if v <= a[0]:
            lo = 0
        elif v >= a[-1]:
            lo = (len(a) - 1) * s
        else:
            i = bisect_right(a, v) - 1
            f = (v - a[i]) / (a[i + 1] - a[i])
            lo = i * s
            if f != 0.0:
                g, hi = 1.0 - f, lo + s
                return sum([x for o, w in head for x in (w * g * vals[o + lo], w * f * vals[o + hi])])
        return sum([w * vals[o + lo] for o, w in head])
