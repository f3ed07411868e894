"""Host time as the residual of measured engine steps over the composed operators."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from mist.calibrate.estimator import LatencyModel
from mist.calibrate.host import _prefills, host_model, residual_summary, residuals
from mist.calibrate.lookup import GridLookup
from mist.replay.step_cost import StepCost

A, B = 1e-4, 1e-3  # dense s/token, per-sequence s


def _cost():
    grid = [(c, k, d, kv) for c in (0, 512) for k in (0, 512) for d in (0, 64) for kv in (0, 512)]
    attn = GridLookup.from_model(LatencyModel().fit(np.array(grid, float), np.full(len(grid), 0.0)))
    return StepCost(dense_s=tuple(A * t for t in range(513)), per_seq_s=tuple(B * s for s in range(65)),
                    attention=attn, num_layers=2).operators_only().step_s


def _steps(rows):
    cols = ["sequences", "tokens", "n_decode", "kv_decode_sum", "kv_decode_max", "kv_decode_min",
            "prefills", "latency_s"]
    return pd.DataFrame(rows, columns=cols)


def test_prefill_text_parses():
    assert _prefills("64:0;32:128") == [(64, 0), (32, 128)]
    assert _prefills(np.nan) == [] and _prefills("") == []


def test_residual_is_measured_minus_composed():
    # decode step of 4: composed 4A + 4B = 0.0044 s; measured 0.0064 -> residual 2 ms
    # prefill of 100 tokens, one sequence: 100A + B = 0.011 s; measured 0.014 -> 3 ms
    steps = _steps([(4, 4, 4, 40, 10, 10, "", 0.0064), (1, 100, 0, 0, 0, 0, "100:0", 0.014),
                    (4, 4, 4, 40, 10, 10, "", 0.0084)])
    res = residuals(steps, _cost())
    assert res["residual_s"].tolist() == pytest.approx([0.002, 0.003, 0.004])
    model = host_model(steps, _cost())
    # the (4, 4) cell's median of 2 ms and 4 ms is 3 ms
    assert model.predict([[4, 4]])[0] == pytest.approx(0.003)
    assert model.predict([[1, 100]])[0] == pytest.approx(0.003)
    s = residual_summary(steps, _cost())
    assert s["steps"] == 3 and 0 < s["median_composed_over_measured"] < 1
