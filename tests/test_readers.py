"""Trace readers: round trips, real measured data, and rejection of bad input."""

from __future__ import annotations

import json

import numpy as np
import pytest

from mist.traces.errors import TraceError
from mist.traces.formats import READERS, attach_workload, detect_format, read_trace
from mist.traces.io import read_table, write_table

REQ = {
    "request_id": "r0", "input_toks": 10, "output_toks": 4, "arrival_time": 1000.0,
    "queued_ts": 50.01, "scheduled_ts": 50.02, "first_token_ts": 50.1, "last_token_ts": 50.4,
}  # fmt: skip
META = {"model": "m", "engine_kwargs": {"max_num_seqs": 8, "max_num_batched_tokens": 512}}


def _jsonl(path, rows):
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def _run_dir(tmp_path, rows=None, meta=META):
    d = tmp_path / "run"
    d.mkdir(parents=True)
    if rows is None:
        rows = [dict(REQ), dict(REQ, request_id="r1", arrival_time=1000.5, queued_ts=50.52,
                                scheduled_ts=50.6, first_token_ts=50.7, last_token_ts=51.0)]  # fmt: skip
    _jsonl(d / "requests.jsonl", rows)
    if meta is not None:
        (d / "meta.json").write_text(json.dumps(meta))
    return d


def _bench(tmp_path, **over):
    obj = {
        "duration": 2.0, "model_id": "tiny", "input_lens": [5, 6, 7], "output_lens": [3, 0, 2],
        "ttfts": [0.1, 0.0, 0.2], "itls": [[0.01, 0.02], [], [0.05]], "latencies": [0.13, 0.0, 0.25],
        "start_times": [100.5, 100.0, 101.0], "queue_times": [0.0, 0.0, 0.0],
        "errors": ["", "Traceback ...\nConnectionError: boom", ""], "generated_texts": ["a", "", "b"],
    }  # fmt: skip
    obj.update(over)
    p = tmp_path / "bench.json"
    p.write_text(json.dumps(obj))
    return p


def _small_sources(tmp_path):
    """One small file (or directory) per format, made here."""
    w = _jsonl(tmp_path / "w.jsonl", [
        {"input_toks": 2, "output_toks": 3, "arrival_time_ns": 5_000_000, "input_tok_ids": [1, 2]},
        {"input_toks": 3, "output_toks": 1, "arrival_time_ns": 1_000_000, "input_tok_ids": [1, 2, 3]},
    ])  # fmt: skip
    az = tmp_path / "az.csv"
    az.write_text("TIMESTAMP,ContextTokens,GeneratedTokens\n2023-11-16 18:15:46.6805900,374,44\n"
                  "2023-11-16 18:15:50.9951690,396,109\n")  # fmt: skip
    vi = tmp_path / "vi.csv"
    vi.write_text("arrived_at,num_prefill_tokens,num_decode_tokens\n0.0,374,44\n4.314579,396,109\n")
    mc = _jsonl(tmp_path / "mc.jsonl", [
        {"timestamp": 0, "input_length": 600, "output_length": 5, "hash_ids": [0, 1]},
        {"timestamp": 1500, "input_length": 100, "output_length": 2, "hash_ids": [0]},
    ])  # fmt: skip
    return {"vllm-run": _run_dir(tmp_path), "vllm-bench": _bench(tmp_path), "workload-jsonl": w,
            "azure-csv": az, "vidur-csv": vi, "mooncake-jsonl": mc}  # fmt: skip


def test_every_reader_round_trips_through_parquet(tmp_path):
    sources = _small_sources(tmp_path)
    assert set(sources) == set(READERS)
    for fmt, path in sources.items():
        assert detect_format(path) == fmt
        res = read_trace(path)
        assert res.requests.schema.metadata[b"mist.source_format"] == fmt.encode()
        assert res.requests.column("arrival_s").to_numpy().min() == 0.0
        write_table(res.requests, tmp_path / f"{fmt}.parquet")
        back = read_table(tmp_path / f"{fmt}.parquet", expect="requests")
        assert back.equals(res.requests) and back.schema.metadata == res.requests.schema.metadata
        if res.tokens is not None:
            write_table(res.tokens, tmp_path / f"{fmt}.tok.parquet")
            assert read_table(tmp_path / f"{fmt}.tok.parquet", expect="tokens").equals(res.tokens)


def test_rows_sorted_by_arrival_and_ids_are_source_positions(tmp_path):
    res = read_trace(_small_sources(tmp_path)["workload-jsonl"])
    assert res.requests.column("request_id").to_pylist() == ["1", "0"]
    assert res.requests.column("arrival_s").to_pylist() == [0.0, 0.004]
    assert res.requests.column("prompt_token_ids").to_pylist() == [[1, 2, 3], [1, 2]]
    assert res.requests.schema.metadata[b"mist.reordered"] == b"1"
    assert res.meta["source_first_arrival_s"] == 0.001


def test_vllm_run_aligns_clocks_with_tightest_request(tmp_path):
    res = read_trace(_run_dir(tmp_path))
    # offsets: 50.01-1000.0 = -949.99 and 50.52-1000.5 = -949.98 -> C = -949.99
    assert res.meta["clock_offset_s"] == pytest.approx(-949.99)
    df = res.requests.to_pandas()
    assert df["queued_s"].tolist() == pytest.approx([0.0, 0.51])
    assert df["first_token_s"].tolist() == pytest.approx([0.09, 0.69])
    assert df["finished_s"].tolist() == pytest.approx([0.39, 0.99])
    assert float(res.requests.schema.metadata[b"mist.origin_epoch_s"]) == 1000.0


def test_vllm_bench_skips_failed_requests_and_counts_them(tmp_path):
    res = read_trace(_bench(tmp_path))
    assert res.rows_read == 3 and res.skipped == {"failed: ConnectionError: boom": 1}
    df = res.requests.to_pandas()
    assert df["request_id"].tolist() == ["0", "2"]
    assert df["first_token_s"].tolist() == pytest.approx([0.1, 0.7])
    tok = res.tokens.to_pandas()
    assert tok["time_s"].tolist() == pytest.approx([0.1, 0.11, 0.13, 0.7, 0.75])
    assert df["queued_s"].isna().all()  # queue_times is client-side, not the engine queue


def test_vllm_bench_without_start_times_or_detail_is_rejected(tmp_path):
    obj = json.loads(_bench(tmp_path).read_text())
    del obj["start_times"]
    (tmp_path / "old.json").write_text(json.dumps(obj))
    with pytest.raises(TraceError, match="start_times"):
        read_trace(tmp_path / "old.json")
    (tmp_path / "agg.json").write_text(json.dumps({"duration": 1.0, "mean_ttft_ms": 3.0}))
    with pytest.raises(TraceError, match="save-detailed"):
        read_trace(tmp_path / "agg.json")


def test_real_vllm_runs(shared):
    for model in ("Llama-3.1-8B", "Qwen3-32B"):
        res = read_trace(shared.runs / model)
        df = res.requests.to_pandas()
        assert len(df) == res.rows_read == 300 and res.skipped == {}
        assert df["arrival_s"].min() == 0.0
        assert (df["first_token_s"] > df["arrival_s"]).all()
        assert (df["queued_s"] >= df["arrival_s"] - 1e-9).all()
        assert res.meta["engine_kwargs"]["max_num_seqs"] == 128
        assert "cluster" in res.meta and res.meta["timeseries_path"].endswith("timeseries.csv")


def test_real_workload_attaches_to_its_run(shared):
    res = read_trace(shared.llama_run)
    table = attach_workload(
        res.requests, shared.llama_workload
    )
    ids = table.column("prompt_token_ids").to_pylist()
    assert [len(x) for x in ids] == table.column("input_tokens").to_pylist()
    assert table.schema.metadata == res.requests.schema.metadata


def test_real_vllm_bench(shared):
    for path in sorted(shared.vllm_bench_cpu.glob("*/")):
        res = read_trace(path)
        raw = json.loads(
            next(p for p in path.glob("*.json") if "ttfts" in p.read_text()).read_text()
        )
        df = res.requests.to_pandas()
        assert len(df) == res.rows_read == 60 and res.skipped == {}
        assert df["arrival_s"].min() == 0.0
        ttft = (df["first_token_s"] - df["arrival_s"]).to_numpy()
        assert np.allclose(ttft, np.asarray(raw["ttfts"])[df["request_id"].astype(int)], atol=1e-9)
        assert res.tokens.num_rows == sum(len(x) + 1 for x in raw["itls"])


def test_real_arrival_traces(shared):
    az = read_trace(shared / "arrivals/azure-2023/AzureLLMInferenceTrace_conv.csv")
    vi = read_trace(shared.azure_conv_csv)
    assert az.requests.num_rows == vi.requests.num_rows == 19366
    # Vidur's file is the same Azure conversation trace rebased to seconds.
    assert np.allclose(az.requests.column("arrival_s"), vi.requests.column("arrival_s"), atol=1e-6)
    assert az.requests.column("input_tokens").equals(vi.requests.column("input_tokens"))
    assert float(az.requests.schema.metadata[b"mist.origin_epoch_s"]) == pytest.approx(
        1700158546.68059
    )
    assert (
        read_trace(shared / "arrivals/azure-2023/AzureLLMInferenceTrace_code.csv").rows_read
        == 8819
    )
    mc = read_trace(shared / "arrivals/mooncake/conversation_trace.jsonl")
    assert mc.requests.num_rows == 12031
    assert mc.requests.schema.metadata[b"mist.hash_block_tokens"] == b"512"


def test_malformed_jsonl_line_names_file_and_line(tmp_path):
    rows = [dict(REQ), '{"request_id": "r1", "input_toks": 3,']
    with pytest.raises(TraceError, match=r"requests\.jsonl:2: malformed JSON"):
        read_trace(_run_dir(tmp_path, rows))
    bad = _jsonl(tmp_path / "m.jsonl", [{"timestamp": 0, "input_length": 1, "output_length": 1,
                                          "hash_ids": [0]}, "", "not json"])  # fmt: skip
    with pytest.raises(TraceError, match=r"m\.jsonl:3: malformed JSON"):
        read_trace(bad, "mooncake-jsonl")


def test_missing_keys_and_meta_are_rejected(tmp_path):
    with pytest.raises(TraceError, match=r"requests\.jsonl:1: missing keys \['last_token_ts'\]"):
        read_trace(
            _run_dir(tmp_path / "a", [{k: v for k, v in REQ.items() if k != "last_token_ts"}])
        )
    with pytest.raises(TraceError, match=r"meta\.json: missing"):
        read_trace(_run_dir(tmp_path / "b", meta=None), "vllm-run")
    meta = {"engine_kwargs": {"max_num_seqs": 8}}
    with pytest.raises(
        TraceError, match=r"meta\.json: engine_kwargs lacks integer \['max_num_batched_tokens'\]"
    ):
        read_trace(_run_dir(tmp_path / "c", meta=meta))


@pytest.mark.parametrize(
    ("row", "pattern"),
    [
        (
            {"scheduled_ts": 50.8},
            r":2: timestamps out of order: scheduled_ts \(50.8\) > first_token_ts",
        ),
        ({"request_id": "r0"}, r":2: duplicate request_id 'r0' \(first on line 1\)"),
        ({"output_toks": 0}, r":2: output_toks must be positive"),
        ({"arrival_time": None}, r":2: 'arrival_time' must be a finite number, found None"),
    ],
)
def test_bad_vllm_run_rows_are_rejected(tmp_path, row, pattern):
    good = dict(REQ, request_id="r1", arrival_time=1000.5, queued_ts=50.52, scheduled_ts=50.6,
                first_token_ts=50.7, last_token_ts=51.0)  # fmt: skip
    with pytest.raises(TraceError, match=pattern):
        read_trace(_run_dir(tmp_path, [dict(REQ), dict(good, **row)]))


def test_mismatched_workload_is_rejected(tmp_path):
    req = read_trace(_run_dir(tmp_path)).requests
    w = _jsonl(tmp_path / "w.jsonl", [
        {"input_toks": 10, "output_toks": 4, "arrival_time_ns": 0, "input_tok_ids": list(range(10))},
        {"input_toks": 2, "output_toks": 4, "arrival_time_ns": 1, "input_tok_ids": [1, 2]},
    ])  # fmt: skip
    with pytest.raises(TraceError, match=r"w\.jsonl:2: input_toks = 2 but request 'r1' has 10"):
        attach_workload(req, w)
    _jsonl(w, [{"input_toks": 3, "output_toks": 4, "arrival_time_ns": 0, "input_tok_ids": [1]}])
    with pytest.raises(
        TraceError, match=r"w\.jsonl:1: len\(input_tok_ids\) = 1 but input_toks = 3"
    ):
        read_trace(w)


def test_csv_errors_name_the_line_and_zero_outputs_are_counted(tmp_path):
    p = tmp_path / "v.csv"
    p.write_text("arrived_at,num_prefill_tokens,num_decode_tokens\n0.0,3,4\n1.0,x,4\n")
    with pytest.raises(
        TraceError, match=r"v\.csv:3: column 'num_prefill_tokens' must be an integer"
    ):
        read_trace(p)
    p.write_text("arrived_at,num_prefill_tokens,num_decode_tokens\n0.0,3,4\n1.0,3,0\n")
    res = read_trace(p)
    assert res.requests.num_rows == 1 and res.skipped == {
        "zero num_decode_tokens (nothing to decode)": 1
    }
    p.write_text("TIMESTAMP,ContextTokens,GeneratedTokens\n2023-11-16 18:15,3,4\n")
    with pytest.raises(TraceError, match=r"v\.csv:2: TIMESTAMP '2023-11-16 18:15' is not"):
        read_trace(p)


def test_unknown_format_lists_known_formats(tmp_path):
    p = tmp_path / "x.csv"
    p.write_text("a,b\n1,2\n")
    with pytest.raises(TraceError, match="known formats: vllm-run, vllm-bench"):
        detect_format(p)
    with pytest.raises(TraceError, match="unknown format 'nope'"):
        read_trace(p, "nope")
