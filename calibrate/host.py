"""Host time per engine step, as the residual of real engine steps over the operators.

``mist profile`` times every step of a few controlled batches run by the real
engine (``engine_steps.csv``: each step's shape and wall time). Composing the same
step from the profiled operators (the replay's step cost without host time, passed in
as a function so that fitting needs nothing from the simulation)
leaves a residual: scheduling, input and metadata preparation, output handling —
and whatever the in-engine forward costs beyond the operators timed alone (Python
dispatch between kernels, caches shared with the rest of the step). A robust
linear fit of it in (sequences, tokens) becomes the replay's host time per step.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pandas as pd
from sklearn.linear_model import HuberRegressor

from mist.calibrate.estimator import LatencyModel

#: the operators' composition of one step, host time excluded: ``compose(tokens, sequences,
#: prefills, n_decode, kv_decode_sum, kv_decode_max, kv_decode_min) -> seconds``
Compose = Callable[[int, int, list, int, int, int, int], float]


def _prefills(text) -> list[tuple[int, int]]:
    if not isinstance(text, str) or not text:
        return []
    return [tuple(int(v) for v in part.split(":")) for part in text.split(";")]


def residuals(steps: pd.DataFrame, compose: Compose) -> pd.DataFrame:
    """Per measured step: ``sequences``, ``tokens``, measured and composed time, residual (s)."""
    composed = [
        compose(int(r.tokens), int(r.sequences), _prefills(r.prefills), int(r.n_decode),
                    int(r.kv_decode_sum), int(r.kv_decode_max), int(r.kv_decode_min))
        for r in steps.itertuples(index=False)
    ]
    out = steps[["sequences", "tokens"]].copy()
    out["measured_s"] = steps["latency_s"].to_numpy(float)
    out["composed_s"] = composed
    out["residual_s"] = out["measured_s"] - out["composed_s"]
    return out


def host_model(steps: pd.DataFrame, compose: Compose, method: str = "cells") -> LatencyModel:
    """Host time (s) on a (sequences, tokens) grid, from the residuals of measured steps.

    ``"cells"``: the median residual of each measured (sequences, tokens) cell — right
    for profiles of controlled batches, where each cell holds many steps.
    ``"linear"``: a robust (Huber) fit ``a + b * sequences + c * tokens`` — a per-step,
    per-sequence and per-token host cost — tabulated on the measured span; for steps
    that scatter over many cells seen once or twice.
    """
    res = residuals(steps, compose)
    if method == "cells":
        cells = res.groupby(["sequences", "tokens"], sort=True)["residual_s"].median().reset_index()
        return LatencyModel().fit(cells[["sequences", "tokens"]].to_numpy(float),
                                  cells["residual_s"].to_numpy(float))
    if method != "linear":
        raise ValueError(f"host model method must be 'cells' or 'linear', not {method!r}")
    X = res[["sequences", "tokens"]].to_numpy(float)
    fit = HuberRegressor().fit(X, res["residual_s"].to_numpy(float) * 1e3)  # ms: well scaled
    seqs = np.unique(np.concatenate([[1.0], X[:, 0]]))
    toks = np.unique(np.concatenate([[1.0], X[:, 1]]))
    S, T = np.meshgrid(seqs, toks, indexing="ij")
    grid = (fit.intercept_ + fit.coef_[0] * S + fit.coef_[1] * T) * 1e-3
    return LatencyModel().fit(np.column_stack([S.ravel(), T.ravel()]), grid.ravel())


def residual_summary(steps: pd.DataFrame, compose: Compose) -> dict:
    """How much of a measured step the operators explain: median composed/measured ratio."""
    res = residuals(steps, compose)
    ratio = (res["composed_s"] / res["measured_s"]).to_numpy(float)
    return {"steps": int(len(res)), "median_composed_over_measured": float(np.median(ratio)),
            "median_residual_ms": float(res["residual_s"].median() * 1e3)}
