"""Bad inputs and impossible settings end in one clear line and exit 2, with nothing
written: output paths that cannot be created, engines without room for a KV cache,
requests larger than the cache, a malformed throughput log, a missing skew table."""

from __future__ import annotations

import json
import shutil

import pytest

from mist.traces.io import atomic_write_json
from mist.validate.cli import main


def _workload(path, rows) -> None:
    with open(path, "w") as f:
        for i, (inp, out) in enumerate(rows):
            f.write(json.dumps({"input_toks": inp, "output_toks": out, "arrival_time_ns": i * 10**8}) + "\n")


def _replay(shared, trace, out, model=None, engine=None):
    return ["replay", "--trace", str(trace), "--profiles", str(shared.llama_bundle), "--model",
            str(model or shared.llama_config), "--engine", str(engine or shared.llama_run / "meta.json"),
            "--out", str(out)]


def test_an_output_path_that_cannot_be_created_fails_before_any_work(shared, tmp_path, capsys):
    trace = tmp_path / "w.jsonl"
    _workload(trace, [(100, 10)])
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    assert main(_replay(shared, trace, blocker / "sub")) == 2
    assert "a_file is a file, not a folder" in capsys.readouterr().err
    assert main(_replay(shared, trace, blocker)) == 2
    assert "exists and is a file" in capsys.readouterr().err
    assert blocker.read_text() == "x"


def test_an_engine_without_room_for_a_kv_cache_is_refused(shared, tmp_path, capsys):
    trace = tmp_path / "w.jsonl"
    _workload(trace, [(100, 10)])
    # Llama-3.1-70B's bf16 weights (141 GB) do not fit in the run's 96 GB
    argv = _replay(shared, trace, tmp_path / "out", model=shared.models / "llmservingsim/meta-llama/Llama-3.1-70B.json")
    assert main(argv) == 2
    assert "no KV cache" in capsys.readouterr().err and not (tmp_path / "out").exists()


def test_a_request_larger_than_the_kv_cache_is_named(shared, tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    meta = json.loads((shared.llama_run / "meta.json").read_text())
    meta["engine_kwargs"]["num_gpu_blocks"] = 100  # 1600 tokens of KV cache
    (run / "meta.json").write_text(json.dumps(meta))
    trace = tmp_path / "w.jsonl"
    _workload(trace, [(100, 10), (1500, 200), (50, 5)])
    assert main(_replay(shared, trace, tmp_path / "out", engine=run / "meta.json")) == 2
    err = capsys.readouterr().err
    assert "1 request(s) need more KV cache than the engine holds (1600 tokens" in err and "needs 1699" in err
    _workload(trace, [(100, 10), (1000, 200), (50, 5)])
    assert main(_replay(shared, trace, tmp_path / "out", engine=run / "meta.json")) == 0
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["requests"] == summary["rows_read"] == 3 and summary["skipped"] == {}


def test_impossible_engine_and_cluster_figures_name_the_file(shared, tmp_path, capsys):
    trace = tmp_path / "w.jsonl"
    _workload(trace, [(100, 10)])
    run = tmp_path / "run"
    run.mkdir()
    for bad_meta, bad_cluster, expected in [
        ({"max_num_batched_tokens": -1}, None, "engine_kwargs.max_num_batched_tokens must be a positive integer"),
        ({"max_num_seqs": 0}, None, "engine_kwargs.max_num_seqs must be a positive integer"),
        ({}, {"mem_size": -96}, "npu_mem.mem_size must be a positive number"),
        ({}, {"mem_size": "96GB"}, "npu_mem.mem_size must be a positive number"),
    ]:
        meta = json.loads((shared.llama_run / "meta.json").read_text())
        meta["engine_kwargs"].update(bad_meta)
        (run / "meta.json").write_text(json.dumps(meta))
        cluster = json.loads((shared.llama_run / "cluster.json").read_text())
        cluster["nodes"][0]["instances"][0]["npu_mem"].update(bad_cluster or {})
        (run / "cluster.json").write_text(json.dumps(cluster))
        assert main(_replay(shared, trace, tmp_path / "out", engine=run / "meta.json")) == 2
        err = capsys.readouterr().err
        assert expected in err and str(run) in err, err


def test_validate_reads_every_input_before_writing_anything(shared, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(shared.llama_run, run)
    (run / "timeseries.csv").write_text("t,running\n1,x\n")
    out, summary = tmp_path / "out", tmp_path / "v.json"
    argv = ["validate", "--run", str(run), "--profiles", str(shared.llama_bundle), "--model",
            str(shared.llama_config), "--json", str(summary), "--out", str(out)]
    assert main(argv) == 2
    assert "timeseries.csv: missing columns ['waiting']" in capsys.readouterr().err
    assert not out.exists() and not summary.exists()
    (run / "timeseries.csv").write_text("t,running,waiting\n1,3,x\n")
    assert main(argv) == 2
    assert "timeseries.csv:2: waiting must be a number, got 'x'" in capsys.readouterr().err


def test_per_bucket_skew_asked_for_without_its_table_is_an_error(shared, tmp_path, capsys):
    bundle = tmp_path / "bundle"
    shutil.copytree(shared.llama_bundle, bundle)
    (bundle / "tp1" / "skew_fit.csv").unlink()
    argv = ["validate", "--run", str(shared.llama_run), "--profiles", str(bundle), "--model",
            str(shared.llama_config), "--skew", "buckets"]
    assert main(argv) == 2
    assert "skew_fit.csv: per-bucket skew asked for" in capsys.readouterr().err


def test_json_outputs_write_nan_as_null(tmp_path):
    path = tmp_path / "x.json"
    atomic_write_json(path, {"a": float("nan"), "b": [1.5, float("inf")], "c": {"d": -float("inf")}})
    assert json.loads(path.read_text()) == {"a": None, "b": [1.5, None], "c": {"d": None}}


@pytest.mark.parametrize("seed", ["-1", str(2**32), "x"])
def test_seeds_numpy_cannot_take_are_usage_errors(seed, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["calibrate", "--profiles", "p", "--out", "o", "--seed", seed])
    assert exc.value.code == 2 and "a seed is an integer" in capsys.readouterr().err


@pytest.mark.parametrize("flag", ["--max-num-batched-tokens", "--max-num-seqs"])
@pytest.mark.parametrize("value", ["0", "-3", "1.5"])
def test_silicon_engine_limits_below_one_are_usage_errors(flag, value, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["silicon", "--silicon", "s.csv", "--kernels", "k", "--models", "m", "--system", "h100_sxm",
              flag, value])
    assert exc.value.code == 2 and "a whole number of at least 1" in capsys.readouterr().err


SILICON_HEADER = ("system,backend,backend_version,model_path,mode,isl,osl,batch_size,tp_size,"
                  "silicon_ttft_ms,silicon_tpot_ms\n")


@pytest.mark.parametrize("row, message", [
    ("h100_sxm,vllm,0.19.0,m,agg,0,128,8,2,100,10", "isl must be a whole number of at least 1"),
    ("h100_sxm,vllm,0.19.0,m,agg,128,128,4.5,2,100,10", "batch_size must be a whole number"),
    ("h100_sxm,vllm,0.19.0,m,agg,128,128,8,2,inf,10", "silicon_ttft_ms must be a positive finite number"),
    ("h100_sxm,vllm,0.19.0,m,agg,,128,8,2,100,10", "isl is empty"),
])
def test_silicon_rows_of_the_chosen_system_are_checked_and_others_are_not(tmp_path, row, message):
    from mist.traces.errors import TraceError
    from mist.traces.readers.silicon import read_silicon

    path = tmp_path / "s.csv"
    other = "b200_sxm,vllm,0.19.0,m,agg,-5,x,0,0,-1,-1\n"  # junk in another system's row
    path.write_text(SILICON_HEADER + other + row + "\n")
    with pytest.raises(TraceError, match=message) as info:
        read_silicon(path, "h100_sxm", "vllm")
    assert info.value.line == 3
    good = SILICON_HEADER + other + " h100_sxm ,vllm,0.19.0,m,agg,128,128,8,2,100,10\n"
    path.write_text(good)
    rows = read_silicon(path, "H100_SXM", "vllm")
    assert list(rows.index) == [1] and rows["system"].iloc[0] == "h100_sxm"


def test_an_empty_or_folder_silicon_path_is_named(tmp_path):
    from mist.traces.errors import TraceError
    from mist.traces.readers.silicon import read_silicon

    empty = tmp_path / "empty.csv"
    empty.write_text("")
    with pytest.raises(TraceError, match="empty file"):
        read_silicon(empty)
    with pytest.raises(TraceError, match="is a folder"):
        read_silicon(tmp_path)


def test_a_version_newer_than_every_table_reads_the_newest():
    from mist.traces.readers.aiconfigurator import pick_version

    tables = [("vllm", "0.14.0", None), ("vllm", "0.19.0", None)]
    picked = {v: pick_version(tables, v)[1] for v in ("0.11.2", "0.16.0", "0.18.0", "1.0.0", "9.9.9", "nightly")}
    assert picked == {"0.11.2": "0.14.0", "0.16.0": "0.14.0", "0.18.0": "0.19.0", "1.0.0": "0.19.0",
                      "9.9.9": "0.19.0", "nightly": "0.19.0"}


def test_calibrate_accelerator_refuses_a_file_twice_and_a_k_that_leaves_nothing(shared, tmp_path, capsys):
    bench = str(shared.llm_bench_csv)
    out = tmp_path / "r.json"
    base = ["calibrate-accelerator", "--target", "Nvidia GH200 GPU", "--json", str(out)]
    assert main([*base, "--bench", bench, bench, "--points", "10"]) == 2
    assert "given twice in --bench" in capsys.readouterr().err
    assert main([*base, "--bench", bench, "--points", "5000"]) == 2
    assert "left to predict with --points 5000" in capsys.readouterr().err and not out.exists()


def test_an_unknown_hardware_name_or_a_wrong_engine_file_is_an_error(shared, tmp_path, capsys):
    trace = tmp_path / "w.jsonl"
    _workload(trace, [(100, 10)])
    assert main([*_replay(shared, trace, tmp_path / "out"), "--hardware", "FOO9000"]) == 2
    assert "unknown hardware 'FOO9000'" in capsys.readouterr().err
    wrong = _replay(shared, trace, tmp_path / "out", engine=shared.llama_run / "requests.jsonl")
    assert main(wrong) == 2 and "--engine takes a run's meta.json" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_review_regressions_stay_fixed(shared, tmp_path, capsys):
    from mist.profiles.model import load_model_config
    from mist.replay.config import EngineConfig
    from mist.replay.request import Request
    from mist.replay.run import check_capacity
    from mist.traces.errors import ReplayError

    # a config that publishes "num_key_value_heads": null is multi-head attention
    cfg = tmp_path / "phi.json"
    cfg.write_text(json.dumps({"num_hidden_layers": 2, "hidden_size": 64, "num_attention_heads": 4,
                               "num_key_value_heads": None, "vocab_size": 100, "intermediate_size": 128}))
    assert load_model_config(cfg).num_kv_heads == 4
    # chunked prefill off: a prompt longer than a step's budget could never be scheduled
    with pytest.raises(ReplayError, match="exceed max_num_batched_tokens"):
        check_capacity([Request(0, "r0", 0.0, 600, 4)],
                       EngineConfig(max_num_batched_tokens=512, enable_chunked_prefill=False, num_gpu_blocks=100))
    # `mist ingest --out X.PARQUET` may be re-run; other commands' --out stays a folder
    csv = shared / "profiles/splitwise/perf_model.csv"
    out = tmp_path / "S.PARQUET"
    assert main(["ingest", str(csv), "--out", str(out)]) == 0 and main(["ingest", str(csv), "--out", str(out)]) == 0
    trace = tmp_path / "w.jsonl"
    _workload(trace, [(100, 10)])
    assert main(_replay(shared, trace, tmp_path / "res.parquet")) == 0
    assert main(_replay(shared, trace, tmp_path / "res.parquet")) == 0
    # validate without --out does not need (or check) the run's throughput log
    run = tmp_path / "run"
    shutil.copytree(shared.llama_run, run)
    (run / "timeseries.csv").write_text("t,running\n1,3\n")
    assert main(["validate", "--run", str(run), "--profiles", str(shared.llama_bundle), "--model",
                 str(shared.llama_config), "--json", str(tmp_path / "v.json")]) == 0


@pytest.mark.parametrize("extra, message", [
    (["--length-ratio", "1.5"], "a ratio is a number in (0, 1]"),
    (["--length-ratio", "0"], "a ratio is a number in (0, 1]"),
    (["--arrivals", "client", "--seed", "-3"], "a seed is an integer"),
])
def test_silicon_client_settings_out_of_range_are_usage_errors(extra, message, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["silicon", "--silicon", "s.csv", "--kernels", "k", "--models", "m", "--system", "h100_sxm", *extra])
    assert exc.value.code == 2 and message in capsys.readouterr().err


def test_silicon_client_settings_without_the_client_are_refused(tmp_path, capsys):
    out = tmp_path / "o.json"
    code = main(["silicon", "--silicon", str(tmp_path / "s.csv"), "--kernels", str(tmp_path), "--models",
                 str(tmp_path), "--system", "h100_sxm", "--length-ratio", "0.8", "--json", str(out)])
    assert code == 2 and "go with --arrivals client" in capsys.readouterr().err
    assert not out.exists()
    code = main(["silicon", "--silicon", str(tmp_path / "s.csv"), "--kernels", str(tmp_path), "--models",
                 str(tmp_path), "--system", "h100_sxm", "--arrivals", "client", "--include-warmup",
                 "--json", str(out)])
    assert code == 2 and "counts every request already" in capsys.readouterr().err
    assert not out.exists()


def test_validate_settings_refuse_a_misspelt_rule():
    from mist.validate.run import ValidateSettings

    for field, value in (("arrival", "Client"), ("drift", "on"), ("skew", "bucket")):
        with pytest.raises(ValueError, match=f"{field} must be one of"):
            ValidateSettings(run_dir="r", profiles="p", model="m", **{field: value})
