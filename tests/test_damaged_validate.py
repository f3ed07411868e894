"""Damaged inputs of `mist validate`, `mist noise`, `mist replay --engine` and `mist
calibrate` (issue 25's fuzz campaign, bench/fuzz_kinds_validate.py): each class of damage
the campaign found silently accepted or ending in a traceback, fed to the reader on a copy
of the shipped CPU sample, must be a TraceError naming the file, the field or line, and
the reason (or a reported exclusion)."""

from __future__ import annotations

import json
import shutil
import warnings
from pathlib import Path

import pandas as pd
import pytest
import yaml

from mist.profiles.bundle import read_bundle
from mist.profiles.model import load_model_config
from mist.traces.errors import TraceError
from mist.traces.readers.vllm_run import attach_workload, read_vllm_run
from mist.traces.rules import Rule, check_document
from mist.validate.noise import NoiseSettings, noise_floor
from mist.validate.run import InputWarning, read_timeseries

REPO = Path(__file__).resolve().parents[1]
SAMPLE_RUN = REPO / "traces" / "samples" / "cpu-tiny-llama"
SAMPLE_BUNDLE = REPO / "profiles" / "samples" / "cpu-tiny-llama" / "fp32"


@pytest.fixture
def run(tmp_path) -> Path:
    shutil.copytree(SAMPLE_RUN, tmp_path / "run")
    return tmp_path / "run"


@pytest.fixture
def bundle(tmp_path) -> Path:
    shutil.copytree(SAMPLE_BUNDLE, tmp_path / "bundle")
    return tmp_path / "bundle"


def _edit_json(path: Path, dotted: str, value) -> None:
    doc = json.loads(path.read_text())
    *parents, key = dotted.split(".")
    node = doc
    for name in parents:
        node = node[name]
    if value is KeyError:
        del node[key]
    else:
        node[key] = value
    path.write_text(json.dumps(doc))


def _edit_yaml(path: Path, key: str, value) -> None:
    doc = yaml.load(path.read_text(), Loader=yaml.CSafeLoader)
    *parents, last = key.split(".")
    node = doc
    for name in parents:
        node = node[name]
    if value is KeyError:
        del node[last]
    else:
        node[last] = value
    path.write_text(yaml.dump(doc, Dumper=yaml.CSafeDumper, sort_keys=False))


def _raises(match: str, path: Path, fn, *args) -> TraceError:
    with pytest.raises(TraceError, match=match) as info:
        fn(*args)
    assert info.value.path == str(path)
    return info.value


# ------------------------------------------------------------ a run's meta.json
@pytest.mark.parametrize("key, value, reason", [
    ("speed_probe.score_s", KeyError, "speed_probe.score_s is missing"),
    ("speed_probe.score_s", "abc", "speed_probe.score_s must be a number"),
    ("speed_probe.score_s", float("nan"), "speed_probe.score_s must be a finite number"),
    ("speed_probe_end.score_s", -1, "speed_probe_end.score_s must be above 0"),
    ("speed_probe_end.score_s", 1e300, "speed_probe_end.score_s must be at most 3600"),
    ("speed_probe", 7, "speed_probe must be an object"),
    ("model", float("nan"), "model must be a string"),
    ("vllm_version", 2**64, "vllm_version must be a string"),
    ("started_at", "abc", "started_at must be an ISO 8601 date"),
    ("hardware", "abc", "hardware must be an object"),
])
def test_run_meta_rules(run, key, value, reason):
    _edit_json(run / "meta.json", key, value)
    _raises(reason, run / "meta.json", read_vllm_run, run)


def test_timeseries_folder_in_place_of_the_file_is_an_error(run):
    (run / "timeseries.csv").unlink()
    (run / "timeseries.csv").mkdir()
    _raises("timeseries_path 'timeseries.csv': no such file", run / "timeseries.csv", read_vllm_run, run)


# ------------------------------------------------------------ timeseries.csv
def _timeseries(run: Path):
    measured = read_vllm_run(run)
    return read_timeseries(measured.meta, measured.requests.schema.metadata or {})


@pytest.mark.parametrize("column, value, reason", [
    ("kv_cache_pct", "inf", "kv_cache_pct: must be a finite number"),
    ("running", "-1", "running: must be at least 0"),
    ("waiting", "2.5", "waiting: must be a whole number"),
    ("kv_cache_pct", "1e300", "kv_cache_pct: must be at most 100"),
    ("t", "abc", "t must be a number, got 'abc'"),
    ("t", "inf", "t: must be a finite number, found 'inf'"),
])
def test_timeseries_values_are_checked(run, column, value, reason):
    path = run / "timeseries.csv"
    lines = path.read_text().splitlines()
    header = lines[0].split(",")
    row = lines[3].split(",")
    row[header.index(column)] = value
    lines[3] = ",".join(row)
    path.write_text("\n".join(lines) + "\n")
    err = _raises(reason, path, _timeseries, run)
    assert err.line == 4


def test_timeseries_out_of_order_is_an_error(run):
    path = run / "timeseries.csv"
    lines = path.read_text().splitlines()
    path.write_text("\n".join([lines[0], *lines[:0:-1]]) + "\n")
    err = _raises("t: must increase from tick to tick", path, _timeseries, run)
    assert err.line == 3


def test_timeseries_without_started_at_is_a_reported_skip(run):
    _edit_json(run / "meta.json", "started_at", KeyError)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert _timeseries(run) is None
    assert any(issubclass(w.category, InputWarning) and "ignored" in str(w.message)
               and "started_at" in str(w.message) for w in caught)


# ------------------------------------------------------------ workload
def test_workload_out_of_order_is_an_error(run):
    path = run / "workload.jsonl"
    path.write_text("".join(reversed(path.read_text().splitlines(keepends=True))))
    requests = read_vllm_run(run).requests
    err = _raises("arrival_time_ns: must not decrease", path, attach_workload, requests, path)
    assert err.line == 2


# ------------------------------------------------------------ model config.json
@pytest.mark.parametrize("value", ["abc", float("nan"), -1, 2**64])
def test_model_torch_dtype_must_name_a_dtype(tmp_path, value):
    path = tmp_path / "config.json"
    shutil.copy(SAMPLE_RUN / "model_config.json", path)
    _edit_json(path, "torch_dtype", value)
    _raises("'torch_dtype' must name a dtype", path, load_model_config, path)


# ------------------------------------------------------------ a bundle's meta.yaml
@pytest.mark.parametrize("key, value, reason", [
    ("speed_probe.score_s", None, "speed_probe.score_s is missing"),
    ("speed_probe_end.score_s", float("inf"), "speed_probe_end.score_s must be a finite number"),
    ("engine_effective", "abc", "engine_effective must be an object"),
    ("engine_effective.block_size", 2**64, "engine_effective.block_size must be at most"),
    ("hardware", float("nan"), "hardware must be a string"),
])
def test_bundle_meta_rules(bundle, key, value, reason):
    _edit_yaml(bundle / "meta.yaml", key, value)
    _raises(reason, bundle / "meta.yaml", read_bundle, bundle)


def test_bundle_meta_truncated_or_empty(bundle):
    path = bundle / "meta.yaml"
    text = path.read_text()
    path.write_text(text[: int(len(text) * 0.6)])
    err = _raises("invalid YAML", path, read_bundle, bundle)
    assert "\n" not in str(err) and err.line is not None  # one line: the CLI prints it as file:line: reason
    path.write_text("")
    _raises("empty", path, read_bundle, bundle)


# ------------------------------------------------------------ a bundle's CSVs
def test_bundle_truncated_row_is_an_error(bundle):
    path = bundle / "tp1" / "attention.csv"
    lines = path.read_text().splitlines()
    lines[5] = ",".join(lines[5].split(",")[:4])
    path.write_text("\n".join(lines) + "\n")
    err = _raises("4 fields, the header has 7", path, read_bundle, bundle)
    assert err.line == 6


@pytest.mark.parametrize("table", ["dense", "per_sequence"])
def test_bundle_empty_operator_name_is_an_error(bundle, table):
    path = bundle / "tp1" / f"{table}.csv"
    lines = path.read_text().splitlines()
    lines[4] = "," + lines[4].split(",", 1)[1]
    path.write_text("\n".join(lines) + "\n")
    err = _raises("layer: must name an operator", path, read_bundle, bundle)
    assert err.line == 5


# ------------------------------------------------------------ mist noise
def test_noise_leaves_out_and_reports_excluded_requests(tmp_path, run):
    b = tmp_path / "run-b"
    shutil.copytree(run, b)
    path = b / "requests.jsonl"
    records = [json.loads(line) for line in path.read_text().splitlines()]
    records[100]["first_token_ts"] = records[100]["last_token_ts"] + 5  # its own stamps out of order
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    with pytest.warns(UserWarning, match=r"recording b: request 100 \(line 101\) excluded"):
        result = noise_floor(NoiseSettings(a=run, b=b))
    assert result.aligned.matched == len(records) - 1
    assert [e["request_id"] for e in result.summary()["excluded"]] == ["100"]
    assert "excluded" not in noise_floor(NoiseSettings(a=run, b=run)).summary()  # clean: as before


def test_rule_kinds():
    rules = {"a": Rule("object"), "a.n": Rule("int", 1, 10, required=True), "d": Rule("date")}
    assert check_document({"a": {"n": 3}, "d": "2026-11-27T12:42:54Z"}, rules, "x") is not None
    assert check_document({}, rules, "x") == {}  # absent objects: nothing required
    for doc, reason in [({"a": {}}, "a.n is missing"), ({"a": {"n": True}}, "a.n must be an integer"),
                        ({"a": {"n": 11}}, "a.n must be at most 10"), ({"d": "yesterday"}, "d must be an ISO")]:
        with pytest.raises(TraceError, match=reason):
            check_document(doc, rules, "x")


@pytest.mark.parametrize("column, value, reason", [
    ("kv_decode_sum", None, "missing columns"), ("kv_decode_sum", "inf", "kv_decode_sum: must be a whole number"),
    ("prefills", "-1", "prefills: expected chunk:cached"), ("prefills", "1e+300", "prefills: expected chunk:cached"),
])
def test_a_damaged_engine_step_log_is_an_error_naming_the_column(tmp_path, column, value, reason):
    """engine_steps.csv is optional, but the host fit reads all of it: a missing column or
    a cell that is no count (was: a traceback in the fit) is an error at its line."""
    import shutil

    from mist.profiles.bundle import read_bundle

    bundle = tmp_path / "bundle"
    shutil.copytree(REPO / "profiles/samples/cpu-tiny-llama/fp32", bundle)
    path = bundle / "tp1/engine_steps.csv"
    df = pd.read_csv(path, dtype=str, keep_default_na=False)
    if value is None:
        df = df.drop(columns=[column])
    else:
        df.loc[5, column] = value
    df.to_csv(path, index=False)
    with pytest.raises(TraceError, match=reason) as err:
        read_bundle(bundle)
    assert err.value.path == str(path) and err.value.line == (1 if value is None else 7)
