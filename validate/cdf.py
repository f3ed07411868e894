"""The points a latency CDF is drawn from (:mod:`mist.validate.report`'s plots)."""

from __future__ import annotations

import numpy as np

#: the most points a CDF line is drawn from whole; a longer one is drawn from
#: CDF_DRAWN evenly spaced ranks. At 100 dpi a step of 1/CDF_DRAWN of a panel's height
#: is a tenth of a pixel, and drawing every point of a million-request replay held the
#: ``mist replay`` job's largest memory.
CDF_POINTS, CDF_DRAWN = 20_000, 10_000


def cdf_points(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The empirical CDF of ``values``: ``(x, y)``, the sorted values and the fraction of
    values at or below each (a step function, drawn ``where="post"``).

    Every point when there are at most :data:`CDF_POINTS`; else the points at
    :data:`CDF_DRAWN` evenly spaced ranks, the first and the last among them (the same
    ``x`` and ``y`` as the full CDF at those ranks).
    """
    x = np.sort(np.asarray(values, dtype=float))
    y = np.arange(1, x.size + 1) / max(x.size, 1)
    if x.size > CDF_POINTS:
        keep = np.unique(np.linspace(0, x.size - 1, CDF_DRAWN).round().astype(np.int64))
        x, y = x[keep], y[keep]
    return x, y
