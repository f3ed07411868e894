"""Robust clock alignment: one bad line cannot move the engine-to-client clock offset.

A vLLM run's engine stamps (monotonic clock) meet the client's arrival times (wall
clock) through one offset. The damaged run is the shipped sample with one line's
engine stamps moved 1000 s early: before, that line set the offset for every request
and `mist validate` reported TTFT/E2E MAPE 0.04 % instead of ~7.3 % / ~6.0 %; now the
request is named, excluded from the comparison, and the errors are the clean run's.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from mist.traces.errors import TraceError
from mist.traces.readers.vllm_run import CLOCK_TOLERANCE_S, clock_offset, read_vllm_run
from mist.validate.run import ValidateSettings, validate_run

REPO = Path(__file__).resolve().parents[1]
RUN = REPO / "traces" / "samples" / "cpu-tiny-llama"
BUNDLE = REPO / "profiles" / "samples" / "cpu-tiny-llama" / "fp32"
MODEL = RUN / "model_config.json"
STAMPS = ("queued_ts", "scheduled_ts", "first_token_ts", "last_token_ts")
BAD = 57  # 0-based line of requests.jsonl that gets damaged (request id "57")


def _copy_run(tmp_path: Path, **changes) -> Path:
    """The shipped sample in ``tmp_path/run``; ``changes``: {line index: {key: shift or value}}."""
    run = tmp_path / "run"
    shutil.copytree(RUN, run)
    path = run / "requests.jsonl"
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    for i, change in changes.get("rows", {}).items():
        rows[i].update(change(rows[i]))
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return run


def _early(row, by=1000.0):
    return {k: row[k] - by for k in STAMPS}


def _raw_diffs(run: Path) -> np.ndarray:
    rows = [json.loads(line) for line in (run / "requests.jsonl").read_text().splitlines() if line.strip()]
    return np.array([r["queued_ts"] - r["arrival_time"] for r in rows])


def _summary(run: Path) -> dict:
    return validate_run(ValidateSettings(run_dir=run, profiles=BUNDLE, model=MODEL, timeseries=False)).summary()


@pytest.fixture(scope="module")
def clean():
    return _summary(RUN)


def test_one_bad_stamp_is_named_excluded_and_leaves_the_errors_as_clean(clean, tmp_path):
    damaged = _summary(_copy_run(tmp_path, rows={BAD: _early}))
    assert damaged["requests"] == {"measured": 200, "simulated": 200, "matched": 199, "excluded": 1}
    (only,) = damaged["excluded"]
    assert only["request_id"] == "57" and only["line"] == BAD + 1
    assert only["reason"].startswith("engine stamps 999.99")
    for metric in ("ttft", "tpot", "e2e"):
        assert damaged["metrics"][metric]["mape"] == pytest.approx(clean["metrics"][metric]["mape"], abs=0.1)
    # the figures: ~7.3 % / ~6.0 %, not the 0.04 % the moved offset gave
    assert clean["metrics"]["ttft"]["mape"] > 5 and clean["metrics"]["e2e"]["mape"] > 5


def test_the_clean_sample_excludes_nothing(clean):
    assert clean["requests"]["excluded"] == 0 and clean["excluded"] == []
    assert clean["requests"]["matched"] == 200


@pytest.mark.parametrize("run", ["sample", "llama", "qwen"])
def test_real_runs_keep_the_plain_minimum_offset(shared, run):
    path = {"sample": RUN, "llama": shared.llama_run, "qwen": shared.runs / "Qwen3-32B"}[run]
    res = read_vllm_run(path)
    assert "excluded" not in res.meta and b"mist.excluded" not in res.requests.schema.metadata
    assert res.meta["clock_offset_s"] == float(np.min(_raw_diffs(path)))
    assert res.requests.column("queued_s").null_count == 0


def test_clock_offset_known_answers():
    everyone = np.ones(6, dtype=bool)
    # front-end delays 0..50 ms on a clock 100 s apart, one line 1000 s early
    diff = 100.0 + np.array([0.0, 0.01, 0.02, 0.05, 0.03, -1000.0])
    offset, early, width = clock_offset(diff, everyone)
    assert offset == 100.0 and early.tolist() == [False] * 5 + [True] and width == CLOCK_TOLERANCE_S
    # a stamp 0.9 s early is within the tolerance (1 s): it is the clock
    offset, early, _ = clock_offset(np.array([5.0, 5.0, 5.01, 5.0, 4.1]), np.ones(5, dtype=bool))
    assert offset == 4.1 and not early.any()
    offset, early, _ = clock_offset(np.array([5.0, 5.0, 5.01, 5.0, 3.9]), np.ones(5, dtype=bool))
    assert offset == 5.0 and early.tolist() == [False] * 4 + [True]
    # widely spread front-end delays widen the fence (10 robust standard deviations)
    spread = np.array([0.0, 2.0, 4.0, 6.0, 8.0])
    offset, early, width = clock_offset(spread, np.ones(5, dtype=bool))
    assert offset == 0.0 and not early.any() and width == pytest.approx(10 * 1.4826 * 2.0)
    # rows that may not enter (their own stamps out of order) neither set nor get flagged
    offset, early, _ = clock_offset(diff, np.array([True] * 5 + [False]))
    assert offset == 100.0 and not early.any()
    # two requests: no majority to tell the broken one, so both stand
    offset, early, _ = clock_offset(np.array([0.0, -1000.0]), np.ones(2, dtype=bool))
    assert offset == -1000.0 and not early.any()


def test_stamps_out_of_their_own_order_exclude_the_request(tmp_path):
    run = _copy_run(tmp_path, rows={3: lambda r: {"first_token_ts": r["last_token_ts"] + 1.0}})
    res = read_vllm_run(run)
    (only,) = res.meta["excluded"]
    assert only["request_id"] == "3" and only["line"] == 4
    assert only["reason"].startswith("timestamps out of order: first_token_ts (")
    df = res.requests.to_pandas().set_index("request_id")
    assert df.loc["3", ["queued_s", "scheduled_s", "first_token_s", "finished_s"]].isna().all()
    assert df.drop(index="3")["queued_s"].notna().all()
    assert res.meta["clock_offset_s"] == read_vllm_run(RUN).meta["clock_offset_s"]


def test_a_file_mostly_out_of_order_is_rejected(tmp_path):
    swap = {i: (lambda r: {"queued_ts": r["scheduled_ts"] + 1.0}) for i in range(0, 200, 2)}
    run = _copy_run(tmp_path, rows=swap)
    with pytest.raises(TraceError, match=r"requests\.jsonl:1: timestamps out of order: queued_ts .*"
                                         r"\(100 of 200 requests out of order: the file is broken"):
        read_vllm_run(run)


def _with_timeseries_path(run: Path, value) -> Path:
    meta = json.loads((run / "meta.json").read_text())
    (run / "meta.json").write_text(json.dumps({**meta, "timeseries_path": value}))
    return run


def test_timeseries_path_stays_inside_the_run_folder(tmp_path):
    outside = tmp_path / "secret.csv"
    outside.write_text("t,running,waiting\n0,1,0\n")
    run = _copy_run(tmp_path)
    for value, pattern in ((str(outside), "must be relative to the run folder"),
                           ("../secret.csv", "without '..'"),
                           ("nothere.csv", "no such file in the run folder"),
                           (7, "must be a path inside the run folder")):
        _with_timeseries_path(run, value)
        with pytest.raises(TraceError, match=rf"meta\.json: timeseries_path .*{pattern}"):
            read_vllm_run(run)
    os.symlink(outside, run / "link.csv")
    _with_timeseries_path(run, "link.csv")
    with pytest.raises(TraceError, match=r"meta\.json: timeseries_path 'link\.csv' leaves the run folder"):
        read_vllm_run(run)
    _with_timeseries_path(run, "timeseries.csv")  # inside: read as before
    assert read_vllm_run(run).meta["timeseries_path"] == str(run / "timeseries.csv")


def test_a_timeseries_csv_symlinked_out_of_the_folder_is_rejected(tmp_path):
    outside = tmp_path / "secret.csv"
    outside.write_text("t,running,waiting\n0,1,0\n")
    run = _copy_run(tmp_path)
    (run / "timeseries.csv").unlink()
    os.symlink(outside, run / "timeseries.csv")
    with pytest.raises(TraceError, match=r"timeseries\.csv: timeseries_path 'timeseries\.csv' leaves the run folder"):
        read_vllm_run(run)


def test_a_started_at_that_is_not_a_date_names_meta_json(tmp_path):
    run = _copy_run(tmp_path)
    meta = json.loads((run / "meta.json").read_text())
    meta["started_at"] = "yesterday"
    (run / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(TraceError, match=r"meta\.json: started_at must be an ISO 8601 date, got 'yesterday'"):
        validate_run(ValidateSettings(run_dir=run, profiles=BUNDLE, model=MODEL))


def test_a_checked_value_in_requests_jsonl_names_its_line(tmp_path):
    run = _copy_run(tmp_path, rows={3: lambda row: {"arrival_time": 1e15}})
    with pytest.raises(TraceError) as err:
        read_vllm_run(run)
    assert "requests.jsonl" in str(err.value) and ":4:" in str(err.value), str(err.value)
