"""Fidelity baselines: regressions beyond the tolerance are flagged, within it not."""

from __future__ import annotations

import json

import pytest

from mist.traces.errors import TraceError
from mist.validate.baseline import Baselines, check, load_baselines, update


def _run(ttft, tpot=5.0, e2e=8.0):
    return {"ttft": {"mape": ttft, "bias": 1.0}, "tpot": {"mape": tpot}, "e2e": {"mape": e2e}}


def test_update_then_load_round_trip(tmp_path):
    path = tmp_path / "baselines.json"
    written = update(path, {"llama": _run(10.123456)})
    loaded = load_baselines(path)
    assert loaded == written
    assert loaded.runs["llama"]["ttft"] == {"mape": 10.1235}  # only MAPE kept, 4 decimals
    assert loaded.tolerance_pct_points == 2.0
    first = path.read_bytes()
    update(path, {"llama": _run(10.123456)})
    assert path.read_bytes() == first  # byte-stable


def test_update_keeps_other_runs_and_tolerance(tmp_path):
    path = tmp_path / "b.json"
    path.write_text(json.dumps({"tolerance_pct_points": 0.5, "runs": {"old": _run(1.0)}}))
    update(path, {"new": _run(3.0)})
    b = load_baselines(path)
    assert sorted(b.runs) == ["new", "old"] and b.tolerance_pct_points == 0.5


def test_check_flags_regression_beyond_tolerance_only():
    base = Baselines(runs={"llama": _run(10.0)}, tolerance_pct_points=2.0)
    assert check({"llama": _run(12.0)}, base) == []  # exactly at the tolerance
    assert check({"llama": _run(7.0)}, base) == []  # improvement
    problems = check({"llama": _run(12.5)}, base)
    assert len(problems) == 1 and problems[0].startswith("llama: ttft MAPE 12.50 %")
    assert check({"llama": _run(12.5)}, base, tolerance=3.0) == []
    assert len(check({"llama": _run(10.5)}, base.runs, tolerance=0.1)) == 1  # plain mapping


def test_check_reports_missing_and_unbaselined_runs():
    base = Baselines(runs={"a": _run(1.0), "b": _run(1.0)})
    problems = check({"a": _run(1.0, e2e=float("nan")), "c": _run(1.0)}, base)
    assert problems == [
        "a: e2e MAPE not computable (baseline 8.00 %)",
        "b: missing from current results (has a baseline)",
        "c: no baseline recorded (run an update to add it)",
    ]


def test_load_rejects_bad_files(tmp_path):
    with pytest.raises(TraceError, match="not found"):
        load_baselines(tmp_path / "absent.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(TraceError, match="not valid JSON"):
        load_baselines(bad)
    bad.write_text(json.dumps({"runs": {"a": {"ttft": {"mape": "high"}}}}))
    with pytest.raises(TraceError, match="mape must be a number"):
        load_baselines(bad)
