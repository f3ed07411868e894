"""Operator-profile readers (Vidur, Splitwise, Kineto): real data, hand-checked values,
rejection of bad input, and `mist ingest` into an ``operator_profile`` table."""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

import numpy as np
import pytest

from mist.profiles.ingest import canonical_hardware
from mist.traces.errors import TraceError
from mist.traces.formats import PROFILE_READERS, detect_format, read_profile, read_trace
from mist.traces.io import read_table, write_table
from mist.traces.readers.kineto import gemm_mnk
from mist.validate.cli import ingest as cmd_ingest

REPO_SAMPLE = Path(__file__).resolve().parents[1] / "traces/samples/kineto/cpu-mlp.json"
MLP = "profiles/vidur/compute/{}/meta-llama/Llama-2-7b-hf/mlp.csv"
COMM = "profiles/vidur/network/{}_dgx/{}.csv"
SPLITWISE = "profiles/splitwise/perf_model.csv"


def _df(result):
    return result.table.to_pandas()


def _ingest(argv):
    p = argparse.ArgumentParser()
    cmd_ingest.add_arguments(p)
    return cmd_ingest.run(p.parse_args(argv))


def _vidur_mlp(tmp_path, rows, header="time_stats.mlp_up_proj.median,time_stats.mlp_up_proj.std,"
               "num_tokens,num_tensor_parallel_workers"):  # fmt: skip
    d = tmp_path / "compute/a100/org/model"
    d.mkdir(parents=True, exist_ok=True)
    (d / "mlp.csv").write_text(header + "\n" + "".join(r + "\n" for r in rows))
    return d / "mlp.csv"


def _vidur_comm(tmp_path, rows):
    d = tmp_path / "network/h100_dgx"
    d.mkdir(parents=True, exist_ok=True)
    head = (",time_stats.all_reduce.min,time_stats.all_reduce.max,time_stats.all_reduce.mean,"
            "time_stats.all_reduce.median,time_stats.all_reduce.std,rank,num_workers,size,collective,"
            "devices_per_node,max_devices_per_node\n")  # fmt: skip
    (d / "all_reduce.csv").write_text(head + "".join(r + "\n" for r in rows))
    return d / "all_reduce.csv"


def _splitwise(tmp_path, rows):
    p = tmp_path / "perf.csv"
    head = "model,hardware,prompt_size,batch_size,token_size,peak_power,average_power,prompt_time,token_time,e2e_time,tensor_parallel\n"
    p.write_text(head + "".join(r + "\n" for r in rows))
    return p


def _trace(tmp_path, events, **top):
    p = tmp_path / "trace.json"
    p.write_text(json.dumps({"schemaVersion": 1, "traceEvents": events, **top}))
    return p


def _op(name, ts, dur, dims=None, cat="cpu_op"):
    args = {} if dims is None else {"Input Dims": dims, "Input type": ["float"] * len(dims)}
    return {
        "ph": "X",
        "cat": cat,
        "name": name,
        "pid": 1,
        "tid": 1,
        "ts": ts,
        "dur": dur,
        "args": args,
    }


# --- real data -------------------------------------------------------------------------


def test_vidur_mlp_real_rows_units_and_names(shared):
    res = read_profile(shared / MLP.format("a100"), resolve_hardware=canonical_hardware)
    df = _df(res)
    assert res.rows_read == 1044 and len(df) == 10 * 1044 and res.skipped == {}
    assert set(df["hardware"]) == {"A100_SXM_80GB"} and set(df["dtype"]) == {"fp16"}
    assert set(df["model"]) == {"meta-llama/Llama-2-7b-hf"}
    assert res.rows_per_operator()["layernorm"] == 2 * 1044  # input and post-attention norms
    # mlp.csv lines 2-3: num_tokens 4096, TP 1, attn_pre_proj median 1.911 / 1.8865 ms, std 0.0712 / 0.0695
    qkv = df[(df["operator"] == "qkv_proj") & (df["tp"] == 1) & (df["tokens"] == 4096)]
    assert sorted(qkv["latency_s"]) == pytest.approx([1.8865e-3, 1.911e-3])
    assert sorted(qkv["spread_s"]) == pytest.approx(
        [0.06946112221955533e-3, 0.07117743673384144e-3]
    )
    assert (qkv["source"] == "vidur-mlp-csv:attn_pre_proj").all()
    assert sorted(df["tp"].unique()) == [1, 2, 4, 8] and df["tokens"].between(1, 4096).all()


def test_vidur_gemm_latency_grows_with_tokens(shared):
    for hw in ("a100", "h100"):
        df = _df(read_profile(shared / MLP.format(hw)))
        for op in ("qkv_proj", "o_proj", "gate_up_proj", "down_proj"):
            for tp in (1, 2, 4, 8):
                g = (
                    df[(df["operator"] == op) & (df["tp"] == tp)]
                    .groupby("tokens")["latency_s"]
                    .median()
                )
                doubling = g.loc[[256, 512, 1024, 2048, 4096]].to_numpy()
                assert (np.diff(doubling) > 0).all(), (hw, op, tp, doubling)
                assert g.loc[4096] > 4 * g.loc[1]
        # sharding a GEMM over more GPUs makes each rank's share faster
        big = df[(df["operator"] == "gate_up_proj") & (df["tokens"] == 4096)]
        assert big.groupby("tp")["latency_s"].median().is_monotonic_decreasing


def test_vidur_comm_real_counts_and_multinode_rows_skipped(shared):
    res = read_profile(
        shared / COMM.format("a100", "all_reduce"), resolve_hardware=canonical_hardware
    )
    df = _df(res)
    assert res.rows_read == 6958 and len(df) == 2982
    assert res.skipped == {"spans several nodes (num_workers > devices_per_node); operator_profile "
                           "has no node-count column": 3976}  # fmt: skip
    assert set(df["operator"]) == {"all_reduce"} and sorted(df["tp"].unique()) == [2, 4, 8]
    assert df["message_bytes"].min() == 2048 and df["message_bytes"].max() == 64 * 2**20
    assert set(df["hardware"]) == {"A100_SXM_80GB"}
    # all_reduce.csv line 996: 2 workers on one node, 2048 bytes, median 0.01 ms, std 0.0231 ms
    row = df[(df["tp"] == 2) & (df["message_bytes"] == 2048)].iloc[0]
    assert row["latency_s"] == pytest.approx(1e-5) and row["spread_s"] == pytest.approx(
        2.3098821518760554e-5
    )
    counts = {(hw, c): read_profile(shared / COMM.format(hw, c)).table.num_rows
              for hw in ("a100", "h100") for c in ("all_reduce", "send_recv")}  # fmt: skip
    assert counts == {("a100", "all_reduce"): 2982, ("a100", "send_recv"): 994,
                      ("h100", "all_reduce"): 2982, ("h100", "send_recv"): 994}  # fmt: skip


def test_splitwise_real_aggregates_repeats(shared):
    res = read_profile(shared / SPLITWISE, resolve_hardware=canonical_hardware)
    df = _df(res)
    assert res.rows_read == 1260 and res.rows_per_operator() == {
        "decode_iteration": 228,
        "prefill_iteration": 156,
    }
    assert df["samples"].sum() == 2 * 1260  # every CSV row counted once per operator
    assert res.meta["hardware_names"]["a100-80gb"] == "A100_SXM_80GB"
    a100 = df[(df["hardware"] == "A100_SXM_80GB") & (df["model"] == "llama2-70b") & (df["tp"] == 2)]
    # perf_model.csv lines 72-76: prompt 128, batch 1, 128 output tokens; medians 81.0758 / 53.6790 ms
    pre = a100[(a100["operator"] == "prefill_iteration") & (a100["tokens"] == 128)].iloc[0]
    assert pre["latency_s"] == pytest.approx(81.07582805678248e-3) and pre["samples"] == 5
    assert pre["sequences"] == 1 and np.isnan(pre["kv_decode"])
    dec = a100[(a100["operator"] == "decode_iteration") & (a100["kv_decode"] == 128 + 64)].iloc[0]
    assert dec["latency_s"] == pytest.approx(53.678993216356425e-3)
    assert (dec["sequences"], dec["tokens"], dec["n_decode"], dec["samples"]) == (1, 1, 1, 5)
    # prompt 512 x batch 1 appears in three sweeps: 15 runs, 9 x 5 prefill repeats
    assert (
        a100[(a100["operator"] == "prefill_iteration") & (a100["tokens"] == 512)]["samples"].item()
        == 45
    )


def test_detect_and_round_trip_real_profiles(shared, tmp_path):
    files = {"vidur-mlp-csv": MLP.format("h100"), "vidur-comm-csv": COMM.format("h100", "send_recv"),
             "splitwise-csv": SPLITWISE}  # fmt: skip
    for fmt, rel in files.items():
        assert detect_format(shared / rel) == fmt
    assert detect_format(REPO_SAMPLE) == "kineto-json"
    res = read_profile(REPO_SAMPLE)
    write_table(res.table, tmp_path / "k.parquet")
    back = read_table(tmp_path / "k.parquet", expect="operator_profile")
    assert back.equals(res.table) and back.schema.metadata == res.table.schema.metadata


# --- the committed Kineto capture --------------------------------------------------------


def test_kineto_sample_gemms_and_medians():
    res = read_profile(REPO_SAMPLE, resolve_hardware=canonical_hardware)
    df = _df(res)
    assert set(df["hardware"]) == {"CPU"} and set(df["model"]) == {"mist/tiny-llama"}
    assert set(df["dtype"]) == {"fp32"} and (df["tp"] == 1).all()
    gemm = df[df["operator"] == "gemm"]
    # qkv (with bias), o_proj, gate_up, down of hidden 512 / intermediate 1408 at 8, 32, 128 tokens
    shapes = {(768, 512), (512, 512), (2816, 512), (512, 1408)}
    assert set(zip(gemm["n"], gemm["k"])) == shapes and len(gemm) == 12
    assert set(gemm["m"]) == {8, 32, 128} and (gemm["samples"] == 5).all()
    for (n, k), g in gemm.groupby(["n", "k"]):
        assert g.sort_values("m")["latency_s"].is_monotonic_increasing, (n, k)
    # inner GEMMs keep their names (aten::addmm under aten::linear); batched products too
    assert res.rows_per_operator()["aten::addmm"] == 3 and res.rows_per_operator()["aten::bmm"] == 6
    trace = json.loads(REPO_SAMPLE.read_text())
    durs = [e["dur"] for e in trace["traceEvents"]
            if e.get("name") == "aten::silu" and e["args"]["Input Dims"] == [[128, 1408]]]  # fmt: skip
    silu = df[df["source"] == "kineto-json:cpu_op:aten::silu[[128,1408]]"].iloc[0]
    assert silu["latency_s"] == pytest.approx(statistics.median(durs) * 1e-6)
    assert silu["samples"] == len(durs) == 5
    assert (
        sum(res.skipped.values()) + sum(e.get("cat") == "cpu_op" for e in trace["traceEvents"])
        == res.rows_read
    )


def test_gemm_shapes():
    assert gemm_mnk("aten::linear", [[2, 16, 512], [768, 512], [768]]) == (32, 768, 512)
    assert gemm_mnk("aten::addmm", [[768], [8, 512], [512, 768], [], []]) == (8, 768, 512)
    assert gemm_mnk("aten::mm", [[8, 512], [512, 64]]) == (8, 64, 512)
    assert gemm_mnk("aten::matmul", [[4, 8, 512], [512, 64]]) == (32, 64, 512)
    assert gemm_mnk("aten::bmm", [[1, 8, 64], [1, 64, 8]]) == (8, 8, 64)
    for name, dims in [("aten::mm", [[8, 512], [256, 64]]), ("aten::bmm", [[8, 8, 64], [8, 64, 8]]),
                       ("aten::matmul", [[8, 8, 8], [8, 8, 64]]), ("aten::mm", None),
                       ("aten::silu", [[8, 512]])]:  # fmt: skip
        assert gemm_mnk(name, dims) is None


def test_kineto_gpu_trace_keeps_host_ops_and_kernels(tmp_path):
    events = [_op("aten::mm", 0.0, 10.0, [[8, 512], [512, 64]]),
              _op("sm80_gemm", 5.0, 40.0, cat="kernel"), _op("sm80_gemm", 60.0, 20.0, cat="kernel"),
              {"ph": "X", "cat": "cuda_runtime", "name": "cudaLaunchKernel", "ts": 1.0, "dur": 2.0}]  # fmt: skip
    res = read_profile(_trace(tmp_path, events, deviceProperties=[{"name": "NVIDIA A100-SXM4-80GB"}]),
                       resolve_hardware=canonical_hardware)  # fmt: skip
    df = _df(res)
    assert set(df["hardware"]) == {"A100_SXM_80GB"}
    assert res.rows_per_operator() == {
        "aten::mm": 1,
        "sm80_gemm": 1,
    }  # host times never become gemm
    assert df.loc[df["operator"] == "sm80_gemm", "latency_s"].item() == pytest.approx(30e-6)
    assert res.skipped == {"cuda_runtime events (not operators)": 1}


# --- bad input -----------------------------------------------------------------------------


def test_vidur_mlp_small_file_and_errors(tmp_path):
    res = read_profile(_vidur_mlp(tmp_path, ["0.5,0.01,16,1", "0.9,0.02,32,1"]))
    df = _df(res)
    assert (
        df["operator"].tolist() == ["gate_up_proj"] * 2 and df["hardware"].tolist() == ["a100"] * 2
    )
    assert df["latency_s"].tolist() == pytest.approx([5e-4, 9e-4]) and df["model"][0] == "org/model"
    with pytest.raises(
        TraceError,
        match=r"mlp\.csv:3: column 'time_stats.mlp_up_proj.median' must be a number, found 'x'",
    ):
        read_profile(_vidur_mlp(tmp_path, ["0.5,0.01,16,1", "x,0.01,32,1"]))
    with pytest.raises(
        TraceError, match=r"mlp\.csv:2: column 'time_stats.mlp_up_proj.median' is negative"
    ):
        read_profile(_vidur_mlp(tmp_path, ["-0.5,0.01,16,1"]))
    with pytest.raises(TraceError, match=r"mlp\.csv:2: column 'num_tokens' must be at least 1"):
        read_profile(_vidur_mlp(tmp_path, ["0.5,0.01,0,1"]))
    with pytest.raises(TraceError, match=r"mlp\.csv:1: missing columns \['num_tokens'\]"):
        read_profile(_vidur_mlp(tmp_path, ["0.5,0.01,1"], "time_stats.a.median,time_stats.a.std,num_tensor_parallel_workers"),
                     "vidur-mlp-csv")  # fmt: skip
    with pytest.raises(
        TraceError, match=r"mlp\.csv:1: operators \['a'\] have no time_stats.<op>.median"
    ):
        read_profile(
            _vidur_mlp(
                tmp_path, ["0.5,1,1"], "time_stats.a.mean,num_tokens,num_tensor_parallel_workers"
            )
        )
    stats = "time_stats.a.median,time_stats.a.min,time_stats.a.max,time_stats.b.median"
    res = read_profile(
        _vidur_mlp(
            tmp_path, ["0.5,0.25,1.0,0.7,4,2"], stats + ",num_tokens,num_tensor_parallel_workers"
        )
    )
    assert _df(res)["spread_s"].tolist()[0] == pytest.approx(0.75e-3)  # max - min without std
    assert np.isnan(_df(res)["spread_s"].tolist()[1]) and res.meta["unmapped_operators"] == [
        "a",
        "b",
    ]
    flat = tmp_path / "mlp.csv"
    flat.write_text("time_stats.a.median,num_tokens,num_tensor_parallel_workers\n0.5,1,1\n")
    with pytest.raises(TraceError, match="expected Vidur's layout"):
        read_profile(flat)


def test_vidur_comm_errors_and_skips(tmp_path):
    ok = "0,0.1,0.3,0.2,0.2,0.05,0,{w},2048,{c},{d},8"
    res = read_profile(
        _vidur_comm(
            tmp_path, [ok.format(w=2, c="all_reduce", d=2), ok.format(w=4, c="all_reduce", d=2)]
        )
    )
    assert res.table.num_rows == 1 and sum(res.skipped.values()) == 1 and res.rows_read == 2
    assert _df(res)["hardware"][0] == "h100" and res.meta["topology"] == "dgx"
    with pytest.raises(
        TraceError,
        match=r"all_reduce\.csv:3: collective 'send_recv' but the time_stats are of 'all_reduce'",
    ):
        read_profile(
            _vidur_comm(
                tmp_path, [ok.format(w=2, c="all_reduce", d=2), ok.format(w=2, c="send_recv", d=2)]
            )
        )
    with pytest.raises(TraceError, match=r"all_reduce\.csv:2: column 'size' must be an integer"):
        read_profile(
            _vidur_comm(tmp_path, [ok.format(w=2, c="all_reduce", d=2).replace("2048", "2k")])
        )


def test_splitwise_errors(tmp_path):
    good = "llama2-70b,a100-80gb,512,1,128,1.0,0.7,196.2,54.8,7168.9,2"
    res = read_profile(_splitwise(tmp_path, [good, good.replace("196.2", "198.2")]))
    assert res.rows_per_operator() == {"decode_iteration": 1, "prefill_iteration": 1}
    assert _df(res).set_index("operator").loc["prefill_iteration", "latency_s"] == pytest.approx(
        0.1972
    )
    with pytest.raises(
        TraceError, match=r"perf\.csv:3: column 'prompt_time' must be a number, found 'n/a'"
    ):
        read_profile(_splitwise(tmp_path, [good, good.replace("196.2", "n/a")]))
    with pytest.raises(
        TraceError, match=r"perf\.csv:2: column 'batch_size' must be at least 1, found 0"
    ):
        read_profile(_splitwise(tmp_path, [good.replace(",512,1,", ",512,0,")]))
    with pytest.raises(TraceError, match=r"perf\.csv:2: column 'token_time' is negative"):
        read_profile(_splitwise(tmp_path, [good.replace("54.8", "-54.8")]))


def test_kineto_errors(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text('{"traceEvents": [\n{"ph": "X",\n}]}')
    with pytest.raises(TraceError, match=r"bad\.json:3: malformed JSON"):
        read_profile(bad, "kineto-json")
    with pytest.raises(TraceError, match="no 'traceEvents' list"):
        read_profile(_trace(tmp_path, None), "kineto-json")
    with pytest.raises(TraceError, match=r"traceEvents\[1\] \(cpu_op\): dur: must be a number of µs in 0 \.\."):
        read_profile(
            _trace(tmp_path, [_op("aten::add", 0, 1), _op("aten::mm", 2, -1)], hardware="CPU")
        )
    with pytest.raises(TraceError, match=r"traceEvents\[0\] \(cpu_op\): dur: must be a number"):
        read_profile(
            _trace(tmp_path, [{"ph": "X", "cat": "cpu_op", "name": "a", "ts": 0}], hardware="CPU")
        )
    with pytest.raises(TraceError, match="cannot tell the hardware"):
        read_profile(_trace(tmp_path, [_op("aten::add", 0, 1)]))
    with pytest.raises(TraceError, match="no cpu_op or kernel events"):
        read_profile(_trace(tmp_path, [{"ph": "M", "name": "process_name"}], hardware="CPU"))


def test_formats_keep_the_two_kinds_apart(tmp_path):
    assert set(PROFILE_READERS) == {
        "aiconfigurator-dir",
        "vidur-mlp-csv",
        "vidur-comm-csv",
        "splitwise-csv",
        "kineto-json",
    }
    with pytest.raises(TraceError, match="operator-profile format: read it with read_profile"):
        read_trace(REPO_SAMPLE)
    vi = tmp_path / "vi.csv"
    vi.write_text("arrived_at,num_prefill_tokens,num_decode_tokens\n0.0,3,4\n")
    with pytest.raises(TraceError, match="vidur-csv is a request-trace format"):
        read_profile(vi)


# --- mist ingest ---------------------------------------------------------------------------


def test_ingest_profiles_into_one_parquet(tmp_path, capsys):
    sw = _splitwise(tmp_path, ["llama2-70b,a100-80gb,512,1,128,1.0,0.7,196.2,54.8,7168.9,2"])
    out = tmp_path / "out" / "profile.parquet"
    assert _ingest([str(sw), str(REPO_SAMPLE), "--out", str(out)]) == 0
    table = read_table(out, expect="operator_profile")
    assert table.num_rows == 2 + 72
    assert json.loads(table.schema.metadata[b"mist.source_format"]) == [
        "splitwise-csv",
        "kineto-json",
    ]
    df = table.to_pandas()
    assert set(df["hardware"]) == {"A100_SXM_80GB", "CPU"}
    printed = capsys.readouterr().out
    assert (
        "splitwise-csv, 1 rows read, 2 operator rows (hardware a100-80gb -> A100_SXM_80GB)"
        in printed
    )
    assert "\n  gemm: 12 rows\n" in printed and f"wrote {out} (74 operator rows)" in printed


def test_ingest_profile_to_directory_and_all_or_nothing(tmp_path):
    sw = _splitwise(tmp_path, ["llama2-70b,a100-80gb,512,1,128,1.0,0.7,196.2,54.8,7168.9,2"])
    out = tmp_path / "dir"
    assert _ingest([str(sw), "--out", str(out)]) == 0
    assert (
        read_table(out / "perf.operator_profile.parquet", expect="operator_profile").num_rows == 2
    )
    meta = json.loads((out / "perf.meta.json").read_text())
    assert meta["rows_read"] == 1 and meta["rows_per_operator"] == {
        "decode_iteration": 1,
        "prefill_iteration": 1,
    }
    bad = _trace(tmp_path, [_op("aten::add", 0, -1)], hardware="CPU")
    vi = tmp_path / "vi.csv"
    vi.write_text("arrived_at,num_prefill_tokens,num_decode_tokens\n0.0,3,4\n")
    for argv, why in [
        ([str(sw), str(bad)], "dur: must be a number"),
        ([str(vi), str(sw)], "is a request trace"),
    ]:
        target = tmp_path / "o" / "p.parquet"
        with pytest.raises(TraceError, match=why):
            _ingest([*argv, "--out", str(target)])
        assert not (tmp_path / "o").exists()
