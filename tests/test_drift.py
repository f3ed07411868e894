"""Speed probe and drift correction: closed-form checks."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from mist.calibrate.estimator import LatencyModel
from mist.calibrate.lookup import GridLookup
from mist.profiles.measure.probe import PROBE_VERSION, drift_ratio, run_probe
from mist.replay.step_cost import StepCost


def test_probe_reports_positive_times_and_geometric_score():
    p = run_probe(repeats=3)
    assert p["version"] == PROBE_VERSION
    assert p["matmul_s"] > 0 and p["python_s"] > 0
    assert p["score_s"] == pytest.approx(np.sqrt(p["matmul_s"] * p["python_s"]))


def test_drift_ratio_is_recording_over_profiling():
    prof = {"version": PROBE_VERSION, "score_s": 2.0}
    rec = {"version": PROBE_VERSION, "score_s": 2.5}
    assert drift_ratio(rec, prof) == pytest.approx(1.25)
    assert drift_ratio(None, prof) is None
    assert drift_ratio({"version": -1, "score_s": 1.0}, prof) is None


def test_scale_multiplies_every_part_of_a_step():
    grid = [(c, k, d, kv) for c in (0, 64) for k in (0, 64) for d in (0, 8) for kv in (0, 64)]
    attn = GridLookup.from_model(LatencyModel().fit(np.array(grid, float), np.full(len(grid), 1e-3)))
    host = GridLookup.from_model(LatencyModel().fit(np.array([[1, 1], [8, 64]], float), [2e-3, 2e-3]))
    cost = StepCost(dense_s=tuple(1e-4 * t for t in range(65)), per_seq_s=tuple(1e-3 * s for s in range(9)),
                    attention=attn, num_layers=2, host=host)
    base = cost.step_s(10, 2, [], 2, 20, 10)
    # dense 10 tokens 1e-3 + per-seq 2e-3 + attention 2 layers x 1e-3 + host 2e-3
    assert base == pytest.approx(1e-3 + 2e-3 + 2e-3 + 2e-3)
    assert replace(cost, scale=1.3).step_s(10, 2, [], 2, 20, 10) == pytest.approx(1.3 * base)
