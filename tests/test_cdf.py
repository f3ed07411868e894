"""The points a latency CDF is drawn from: all of them, or evenly spaced ranks of a long one."""

from __future__ import annotations

import numpy as np

from mist.validate.cdf import CDF_DRAWN, CDF_POINTS, cdf_points


def test_a_short_cdf_keeps_every_point():
    x, y = cdf_points(np.array([3.0, 1.0, 2.0, 2.0]))
    assert x.tolist() == [1.0, 2.0, 2.0, 3.0]
    assert y.tolist() == [0.25, 0.5, 0.75, 1.0]
    x, y = cdf_points(np.arange(CDF_POINTS, dtype=float)[::-1])
    assert x.size == CDF_POINTS and y[-1] == 1.0


def test_a_long_cdf_is_drawn_from_evenly_spaced_ranks_of_the_full_one():
    rng = np.random.default_rng(7)
    values = rng.lognormal(size=123_457)
    full_x = np.sort(values)
    full_y = np.arange(1, values.size + 1) / values.size
    x, y = cdf_points(values)
    assert x.size == CDF_DRAWN
    assert x[0] == full_x[0] and x[-1] == full_x[-1] and y[0] == full_y[0] and y[-1] == 1.0
    ranks = np.searchsorted(full_x, x, side="left")  # (values are distinct)
    assert np.array_equal(full_x[ranks], x) and np.array_equal(full_y[ranks], y)
    gaps = np.diff(ranks)  # even spacing: every gap 12 or 13 ranks
    assert gaps.min() >= values.size // CDF_DRAWN and gaps.max() <= -(-values.size // CDF_DRAWN)
    assert np.diff(y).max() <= 13 / values.size + 1e-15  # a step of at most 1/9,500 of the height
