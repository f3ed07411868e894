"""The shipped CPU sample: a real vLLM recording replayed through its own profile.

`traces/samples/` holds two real recordings of one request stream (made with
`mist record`, minutes apart: `cpu-tiny-llama-repeat` first, `cpu-tiny-llama`
second), `profiles/samples/` the operator profile of the same machine (made with
`mist profile`); README says how. This needs nothing outside the repository, so it
runs on every fresh clone. The bounds are the issue's: mean, P50 and P90 errors of
TTFT, TPOT and E2E within 5 % or within the real engine's own run-to-run difference
(the noise floor), whichever is larger, and per-request E2E MAPE no worse than 1.5x
the noise floor's. The distribution bounds are asserted on `cpu-tiny-llama` only:
the repeat recording ran ~6 % faster than the primary one (the noise floor says so,
the speed probe did not see it), so the replay, which matches the primary within
~1-3 %, is ~7 % slower than the repeat — outside the bound; README and the closing
note report both.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from mist.validate.cli import main
from mist.validate.run import ValidateSettings, validate_run

REPO = Path(__file__).resolve().parents[1]
RUN_A = REPO / "traces" / "samples" / "cpu-tiny-llama"
RUN_B = REPO / "traces" / "samples" / "cpu-tiny-llama-repeat"
BUNDLE = REPO / "profiles" / "samples" / "cpu-tiny-llama" / "fp32"
MODEL = RUN_A / "model_config.json"


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("sample")
    sim, noise = tmp / "sim.json", tmp / "noise.json"
    assert main(["validate", "--run", str(RUN_A), "--profiles", str(BUNDLE), "--model", str(MODEL),
                 "--json", str(sim), "--out", str(tmp / "report")]) == 0
    assert main(["noise", "--a", str(RUN_A), "--b", str(RUN_B), "--json", str(noise)]) == 0
    return json.loads(sim.read_text()), json.loads(noise.read_text()), tmp


def test_every_request_is_replayed(results):
    sim, _, _ = results
    assert sim["requests"]["measured"] == sim["requests"]["simulated"] == sim["requests"]["matched"]
    assert sim["requests"]["excluded"] == 0 and sim["excluded"] == []  # a clean run: nothing left out


@pytest.mark.parametrize("metric", ["ttft", "tpot", "e2e"])
@pytest.mark.parametrize("stat", ["mean_error", "p50_error", "p90_error"])
def test_distribution_errors_within_bound(results, metric, stat):
    sim, noise, _ = results
    bound = max(5.0, abs(noise["metrics"][metric]["mean_error"]))
    assert abs(sim["metrics"][metric][stat]) <= bound


def test_e2e_mape_within_noise_floor(results):
    sim, noise, _ = results
    assert sim["metrics"]["e2e"]["mape"] <= 1.5 * noise["metrics"]["e2e"]["mape"]


def test_repeat_recording_e2e_mape_within_noise_floor(results):
    # through the library behind `mist validate`: its summary is the --json document
    _, noise, _ = results
    repeat = validate_run(ValidateSettings(run_dir=RUN_B, profiles=BUNDLE, model=MODEL)).summary()
    assert repeat["metrics"]["e2e"]["mape"] <= 1.5 * noise["metrics"]["e2e"]["mape"]


def test_a_run_recorded_with_another_model_is_warned_about_and_still_replayed(tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(RUN_A, run)
    meta = json.loads((run / "meta.json").read_text())
    (run / "meta.json").write_text(json.dumps({**meta, "model": "other/Model-7B"}))
    assert main(["validate", "--run", str(run), "--profiles", str(BUNDLE), "--model", str(MODEL),
                 "--drift", "off"]) == 0
    err = capsys.readouterr().err
    assert err.startswith("mist validate: warning: the run was recorded with other/Model-7B, the model config is ")


def test_report_and_drift_correction(results):
    sim, _, tmp = results
    assert "drift_ratio" in sim and "metrics_uncorrected" in sim
    report = (tmp / "report" / "report.md").read_text()
    for name in ("cdf.png", "scatter.png", "queue.png", "Error attribution"):
        assert name in report
