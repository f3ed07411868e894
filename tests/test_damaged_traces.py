"""Regression cases of issue 25's fuzz campaign over the request streams and operator-profile
sources (bench/fuzz_kinds_traces.py): each damaged input that was a traceback or a silent
wrong result is now a TraceError naming the file, the record (line or array index) and the
field with the reason."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from mist.traces.errors import TraceError
from mist.traces.formats import read_profile, read_trace

KINETO_SAMPLE = Path(__file__).resolve().parents[1] / "traces/samples/kineto/cpu-mlp.json"


def _raises(path: Path, pattern: str, read=read_trace) -> None:
    with pytest.raises(TraceError, match=re.escape(str(path)) + pattern):
        read(path)


# --- Kineto traces ---------------------------------------------------------------------


def _kineto(tmp_path: Path, change) -> Path:
    """The shipped CPU trace with ``change(trace, middle operator event)`` applied."""
    trace = json.loads(KINETO_SAMPLE.read_text())
    ops = [ev for ev in trace["traceEvents"] if ev.get("ph") == "X" and ev.get("cat") == "cpu_op"]
    change(trace, ops[len(ops) // 2])
    (p := tmp_path / "trace.json").write_text(json.dumps(trace))
    return p


def test_kineto_sample_reads_clean(tmp_path):
    res = read_profile(_kineto(tmp_path, lambda t, ev: None))
    assert res.table.num_rows == 72 and res.rows_read == 491


@pytest.mark.parametrize("value", [1.5, float("nan"), -1, 2**64, "abc"])
def test_kineto_device_list_of_wrong_type_is_an_error_not_a_traceback(tmp_path, value):
    p = _kineto(tmp_path, lambda t, ev: t.update(deviceProperties=value))
    _raises(p, r": deviceProperties: must be a list of objects", read_profile)


@pytest.mark.parametrize("key", ["model", "engine", "engine_version", "hardware"])
def test_kineto_names_of_wrong_type_are_errors_not_dropped(tmp_path, key):
    p = _kineto(tmp_path, lambda t, ev: t.update({key: 1e300}))
    _raises(p, rf": {key}: must be a non-empty string, found 1e\+300", read_profile)


@pytest.mark.parametrize("key, value, reason", [
    ("pid", None, "must be an integer or a string"),
    ("tid", float("nan"), "must be an integer or a string"),
    ("ts", -1, "must be a number of µs in 0 .. "),
    ("ts", 1e300, "must be a number of µs in 0 .. "),
    ("name", 5, "must be a non-empty string"),
])  # fmt: skip
def test_kineto_operator_event_fields_are_checked(tmp_path, key, value, reason):
    p = _kineto(tmp_path, lambda t, ev: ev.update({key: value}))
    _raises(p, rf": traceEvents\[\d+\] \(cpu_op\): {key}: {re.escape(reason)}", read_profile)


def test_kineto_missing_thread_is_an_error(tmp_path):
    p = _kineto(tmp_path, lambda t, ev: ev.pop("tid"))
    _raises(p, r": traceEvents\[\d+\] \(cpu_op\): tid: must be an integer or a string .*, found None",
            read_profile)


@pytest.mark.parametrize("dims", [[[8, 32, 32], None], [[8, 32, 32], "abc"], [[8, -1, 32], [1, 2]],
                                  [[8, 1.5, 32]], "abc", [[8, 2**64]]])  # fmt: skip
def test_kineto_malformed_shapes_are_errors(tmp_path, dims):
    p = _kineto(tmp_path, lambda t, ev: ev["args"].update({"Input Dims": dims}))
    _raises(p, r": traceEvents\[\d+\] \(cpu_op\) aten::\w+: args\.Input Dims: must be a list of shapes",
            read_profile)


def test_kineto_shapes_missing_in_a_record_shapes_trace_are_errors(tmp_path):
    p = _kineto(tmp_path, lambda t, ev: ev.pop("args"))
    _raises(p, r": traceEvents\[\d+\] \(cpu_op\) aten::\w+: args\.Input Dims: missing in a trace with "
               "record_shapes", read_profile)  # fmt: skip
    p = _kineto(tmp_path, lambda t, ev: ev["args"].update({"Input type": ["float", None]}))
    _raises(p, r": traceEvents\[\d+\] \(cpu_op\) aten::\w+: args\.Input type: must be a list of strings",
            read_profile)


# --- Vidur operator profiles ----------------------------------------------------------


def _vidur_mlp(tmp_path: Path, row: str, gated: str = "True") -> Path:
    (sub := tmp_path / "compute/a100/org/model").mkdir(parents=True)
    (p := sub / "mlp.csv").write_text(
        "time_stats.emb.min,time_stats.emb.max,time_stats.emb.mean,time_stats.emb.median,time_stats.emb.std,"
        "num_tokens,num_tensor_parallel_workers,use_gated_mlp\n"
        f"0.2,0.3,0.25,0.25,0.01,16,1,True\n{row},32,1,{gated}\n0.4,0.5,0.45,0.45,0.01,64,1,True\n")
    return p


def test_vidur_clean_statistics_read(tmp_path):
    assert read_profile(_vidur_mlp(tmp_path, "0.3,0.4,0.35,0.35,0.01")).table.num_rows == 3


@pytest.mark.parametrize("row, reason", [
    ("0.3,0.4,0.35,1e300,0.01", r"time_stats\.emb\.median: must be at most 3\.6e\+06 ms"),
    ("0.3,0.4,0.35,0.9,0.01", r"time_stats\.emb\.max: is below time_stats\.emb\.median \(0\.4 < 0\.9 ms\)"),
    ("0.3,1e300,0.35,0.35,0.01", r"time_stats\.emb\.max: must be at most"),
    ("0.3,0.4,-1,0.35,0.01", r"column 'time_stats\.emb\.mean' is negative"),
])  # fmt: skip
def test_vidur_statistics_out_of_range_or_order_are_errors(tmp_path, row, reason):
    _raises(_vidur_mlp(tmp_path, row), ":3: " + reason, read_profile)


def test_vidur_gated_flag_must_be_true_or_false(tmp_path):
    _raises(_vidur_mlp(tmp_path, "0.3,0.4,0.35,0.35,0.01", gated="abc"),
            r":3: use_gated_mlp: must be True or False, found 'abc'", read_profile)


# --- vllm bench serve results -----------------------------------------------------------


def _bench(tmp_path: Path, **over) -> Path:
    obj = {"duration": 2.0, "model_id": "tiny", "input_lens": [5, 6, 7], "output_lens": [3, 2, 2],
           "ttfts": [0.1, 0.15, 0.2], "itls": [[0.01, 0.02], [0.03], [0.05]], "latencies": [0.13, 0.2, 0.25],
           "start_times": [100.5, 100.0, 101.0], "queue_times": [0.0, 0.0, 0.0], "errors": ["", "", ""]}
    for key, (i, value) in over.items():
        if i is None:
            obj[key] = value
        else:
            obj[key][i] = value
    (p := tmp_path / "bench.json").write_text(json.dumps(obj))
    return p


def test_bench_clean_reads(tmp_path):
    res = read_trace(_bench(tmp_path))
    assert res.requests.num_rows == 3 and res.skipped == {}


@pytest.mark.parametrize("key, value, reason", [
    ("input_lens", -1, r"input_lens\[1\]: must be at least 0, found -1"),
    ("input_lens", None, r"input_lens\[1\]: must be a finite number, found None"),
    ("output_lens", 2.5, r"output_lens\[1\]: must be a whole number, found 2\.5"),
    ("ttfts", -1, r"ttfts\[1\]: must be at least 0, found -1"),
    ("latencies", -0.5, r"latencies\[1\]: must be at least 0, found -0\.5"),
    ("queue_times", 1e300, r"queue_times\[1\]: must be at most 3\.2e\+09, found 1e\+300"),
    ("start_times", 2**64, r"start_times\[1\]: must be at most 3\.2e\+09"),
    ("errors", 5, r"errors\[1\]: must be a string \(the failure\) or null, found 5"),
])  # fmt: skip
def test_bench_invalid_entries_are_errors_not_skips(tmp_path, key, value, reason):
    _raises(_bench(tmp_path, **{key: (1, value)}), ": " + reason)


def test_bench_null_ttft_stays_a_counted_skip(tmp_path):
    res = read_trace(_bench(tmp_path, ttfts=(1, None)))
    assert res.requests.num_rows == 2
    assert res.skipped == {"failed: no first token (ttft or latency missing/0)": 1}


@pytest.mark.parametrize("value", [-1, 1e300, "abc", None])
def test_bench_duration_is_checked(tmp_path, value):
    _raises(_bench(tmp_path, duration=(None, value)), r": duration: must be a number of s in 0 \.\. 3\.2e\+09")


# --- request streams: per-prompt lists -------------------------------------------------


@pytest.mark.parametrize("ids, found", [([1, None], "None"), ([1, -1], "-1"), ([1, True], "True"),
                                        ([1, 2**31], str(2**31))])  # fmt: skip
def test_workload_token_ids_must_be_ids(tmp_path, ids, found):
    p = tmp_path / "w.jsonl"
    p.write_text('{"input_toks": 2, "output_toks": 3, "arrival_time_ns": 0, "input_tok_ids": [4, 5]}\n'
                 + json.dumps({"input_toks": 2, "output_toks": 1, "arrival_time_ns": 10, "input_tok_ids": ids})
                 + "\n")  # fmt: skip
    _raises(p, rf":2: input_tok_ids: token ids must be integers in 0 \.\. 2\^31-1, found {found}")


@pytest.mark.parametrize("hashes, found", [([1, None], "None"), ([1, 1.5], "1.5"), ([1, False], "False"),
                                           ([1, 2**64], str(2**64))])  # fmt: skip
def test_mooncake_hash_ids_must_be_64_bit_integers(tmp_path, hashes, found):
    p = tmp_path / "m.jsonl"
    p.write_text('{"timestamp": 0, "input_length": 10, "output_length": 2, "hash_ids": [7]}\n'
                 + json.dumps({"timestamp": 5, "input_length": 600, "output_length": 4, "hash_ids": hashes})
                 + "\n")  # fmt: skip
    _raises(p, rf":2: hash_ids: must be 64-bit integers, found {re.escape(found)}")


def test_mooncake_negative_hash_ids_are_ids(tmp_path):
    """Hash ids are compared only for equality: any 64-bit value is one (not a damage)."""
    p = tmp_path / "m.jsonl"
    p.write_text('{"timestamp": 0, "input_length": 600, "output_length": 2, "hash_ids": [-7, 3]}\n')
    assert read_trace(p).requests.column("block_hashes").to_pylist() == [[-7, 3]]
