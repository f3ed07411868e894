"""Calibration on a real layer-profile bundle: fit, cross-validate, artifact, job, CLI.

The bundle is calibrated once for the module (fixture ``calibrated``, the job behind
``mist calibrate``); the tests read its models and report rather than fitting again.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from mist.calibrate.bundle_job import CalibrateSettings, calibrate_profiles, write_calibration
from mist.calibrate.calibration import (
    calibrate_bundle,
    cross_validate,
    fit_operators,
    load_artifact,
    save_artifact,
)
from mist.calibrate.features import DENSE, OPERATORS, REQUIRED
from mist.calibrate.lookup import GridLookup
from mist.profiles.bundle import read_bundle, to_operator_profile
from mist.traces.errors import TraceError
from mist.validate.cli import main

CPU_SAMPLE = Path(__file__).resolve().parents[1] / "profiles" / "samples" / "cpu-tiny-llama" / "fp32"


@pytest.fixture(scope="module")
def bundle(shared):
    return read_bundle(shared.llama_bundle)


@pytest.fixture(scope="module")
def profile(bundle):
    return to_operator_profile(bundle)


@pytest.fixture(scope="module")
def result(shared):
    """The Llama bundle calibrated by the job (5-fold CV, seed 0), with its skew errors."""
    return calibrate_profiles(CalibrateSettings(profiles=shared.llama_bundle))


@pytest.fixture(scope="module")
def calibrated(result):
    return result.models, result.report


def test_every_required_operator_fitted_at_tp1_and_tp2(calibrated, profile):
    models, _ = calibrated
    for tp in (1, 2):
        assert set(REQUIRED) <= set(models[tp])
        for op in REQUIRED:
            assert models[tp][op].n_features_in_ == len(OPERATORS[op][0])
    # fit_operators fits the same models the job does
    alone = fit_operators(profile, 1)
    assert sorted(alone) == sorted(models[1])
    for op, m in alone.items():
        np.testing.assert_array_equal(m.grid_, models[1][op].grid_)


def test_cross_validated_errors_are_small_on_smooth_curves(calibrated, profile):
    # Dense GEMMs and element-wise ops are smooth in the token count: held-out points
    # are predicted by interpolating neighbours a factor ~1.1 apart, so a few percent
    # at most. Attention varies over four axes and is profiled on a power-of-two
    # grid, so held-out points lie further from what remains: a looser bound.
    _, report = calibrated
    for tp in (1, 2):
        ops = report["tp"][str(tp)]["operators"]
        cv = pd.DataFrame([{"operator": op, "points": e["points"], **e["cv"]} for op, e in ops.items()])
        cv = cv.set_index("operator")
        dense = cv.loc[[op for op in cv.index if OPERATORS[op][0] == DENSE]]
        assert cv.loc["qkv_proj", "median_ape"] < 10.0
        assert (dense["mape"] < 10.0).all(), dense
        assert (dense["median_ape"] < 5.0).all(), dense
        assert cv.loc["attention", "median_ape"] < 10.0
        assert cv.loc["attention", "mape"] < 25.0
        assert (cv["points"] > 0).all()
    # cross_validate gives the report's figures (checked on the light operators)
    light = profile.filter(pc.field("operator") != "attention")
    alone = cross_validate(light, 1, k=5, seed=0).set_index("operator")
    for op, e in report["tp"]["1"]["operators"].items():
        if op != "attention":
            assert {k: round(alone.loc[op, k], 4) for k in e["cv"]} == e["cv"], op


def test_calibrate_bundle_report_matches_models(calibrated, bundle):
    models, report = calibrated
    assert sorted(models) == [1, 2] and report["bundle"]["hardware"] == "RTXPRO6000"
    assert report["bundle"]["engine_version"] == "0.19.0"
    for tp in (1, 2):
        entry = report["tp"][str(tp)]
        assert entry["missing_required"] == []
        rows = sum(len(bundle.table(tp, name)) for name in ("dense", "per_sequence", "attention"))
        assert sum(e["points"] for e in entry["operators"].values()) == rows
        for op, e in entry["operators"].items():
            assert e["ranges"] == {f: [float(a[0]), float(a[-1])]
                                   for f, a in zip(e["features"], models[tp][op].axes_)}
    with pytest.raises(TraceError, match="tp3"):
        calibrate_bundle(bundle, tps=[3])


def test_artifact_round_trip_predicts_identically(calibrated, tmp_path):
    models, report = calibrated
    save_artifact(tmp_path, models, report)
    loaded = load_artifact(tmp_path)
    assert {tp: sorted(m) for tp, m in loaded.items()} == {tp: sorted(m) for tp, m in models.items()}
    rng = np.random.default_rng(7)
    for tp, ops in models.items():
        for op, m in ops.items():
            lo = np.array([a[0] for a in m.axes_])
            hi = np.array([a[-1] for a in m.axes_])
            q = rng.uniform(lo - 0.1 * (hi - lo), hi * 1.2, size=(200, len(lo)))
            np.testing.assert_array_equal(loaded[tp][op].predict(q), m.predict(q))
            np.testing.assert_array_equal(loaded[tp][op].in_range(q), m.in_range(q))
            assert loaded[tp][op].n_measured_ == m.n_measured_
            assert GridLookup.from_model(loaded[tp][op]) == GridLookup.from_model(m)


def test_load_artifact_rejects_other_tables(tmp_path):
    with pytest.raises(TraceError, match="not found"):
        load_artifact(tmp_path)
    table = pa.table({"request_id": ["r0"]}, metadata={"mist.table": "requests"})
    pq.write_table(table, tmp_path / "grids.parquet")
    with pytest.raises(TraceError, match="expected a 'calibration_grids' table, found 'requests'"):
        load_artifact(tmp_path)
    (tmp_path / "grids.parquet").write_bytes(b"not parquet")
    with pytest.raises(TraceError, match="not a readable Parquet"):
        load_artifact(tmp_path)


def test_load_artifact_rejects_grid_not_matching_axes(tmp_path):
    rows = {"operator": ["qkv_proj"], "tp": [1], "features": [["tokens"]], "axes": [[[1.0, 2.0, 4.0]]],
            "values": [[1e-6, 2e-6]]}
    pq.write_table(pa.table(rows, metadata={"mist.table": "calibration_grids", "mist.version": "1"}),
                   tmp_path / "grids.parquet")
    with pytest.raises(TraceError, match="does not match its axes"):
        load_artifact(tmp_path)


def test_mist_calibrate_end_to_end_is_deterministic(result, shared, tmp_path, capsys):
    # the command's files and the job's (computed apart, same inputs) are the same bytes
    outs = [tmp_path / "a", tmp_path / "b"]
    assert main(["calibrate", "--profiles", str(shared.llama_bundle), "--out", str(outs[0])]) == 0
    write_calibration(result, outs[1])
    printed = capsys.readouterr().out
    assert printed == result.markdown() + f"artifact: {outs[0]}\n"
    assert "## tp=1" in printed and "| qkv_proj | tokens | 152 |" in printed
    assert "### tp=1: KV-skew correction against `skew.csv`" in printed
    skew = json.loads((outs[0] / "report.json").read_text())["tp"]["1"]["skew"]
    assert skew["batches"] > 0 and set(skew["regimes"]["all"]) >= {"mean_kv", "default", "buckets"}
    for name in ("grids.parquet", "report.json", "report.md", "cv.png"):
        assert (outs[0] / name).read_bytes() == (outs[1] / name).read_bytes(), name
    assert (outs[0] / "cv.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert set(load_artifact(outs[0])) == {1, 2}


def _two_degree_sample(tmp_path):
    """The packaged CPU sample bundle with its tp1 copied as tp2: a small two-degree bundle."""
    root = shutil.copytree(CPU_SAMPLE, tmp_path / "bundle")
    shutil.copytree(root / "tp1", root / "tp2")
    meta = root / "meta.yaml"
    meta.write_text(meta.read_text().replace("tp_degrees: [1]", "tp_degrees: [1, 2]"))
    return root


def test_mist_calibrate_selected_tp_and_errors(tmp_path, capsys):
    out, sample = tmp_path / "one", _two_degree_sample(tmp_path)
    assert main(["calibrate", "--profiles", str(sample), "--out", str(out),
                 "--tp", "2", "--folds", "3", "--seed", "1"]) == 0
    assert set(load_artifact(out)) == {2}
    assert json.loads((out / "report.json").read_text())["cv"] == {"folds": 3, "seed": 1}
    assert main(["calibrate", "--profiles", str(sample), "--out", str(tmp_path / "x"), "--tp", "4"]) == 2
    assert "tp4" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()  # all-or-nothing: nothing written on error
    assert main(["calibrate", "--profiles", str(tmp_path), "--out", str(tmp_path / "y")]) == 2
    assert "meta.yaml" in capsys.readouterr().err
