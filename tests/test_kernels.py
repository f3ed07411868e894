"""Kernel databases: reader, log-grid regressors, composition into engine steps, closed loops."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from calibrate.kernels import Datasheet, KernelSet, LogGrid
from replay.closed_loop import run_closed_loop
from replay.config import EngineConfig
from replay.cost import StepCost
from replay.kernel_cost import prefill_attention
from traces.errors import TraceError
from traces.readers.silicon import read_silicon

H100 = "profiles/aiconfigurator/h100_sxm"
SILICON = "silicon/aiconfigurator_silicon_sample.csv"


# -- LogGrid: closed-form checks --------------------------------------------------------
def test_loggrid_recovers_power_law_between_and_beyond_grid_points():
    # t = 2e-6 * m^0.5 * n^1: exact in log space, so interpolation is exact too
    m, n = np.meshgrid([1, 4, 16, 64], [8, 32, 128], indexing="ij")
    X = np.column_stack([m.ravel(), n.ravel()])
    y = 2e-6 * X[:, 0] ** 0.5 * X[:, 1]
    grid = LogGrid(X, y)
    Q = np.array([[2.0, 16.0], [50.0, 100.0], [256.0, 128.0]])
    pred, src = grid.predict(Q)
    np.testing.assert_allclose(pred, 2e-6 * Q[:, 0] ** 0.5 * Q[:, 1], rtol=1e-9)
    assert list(src) == ["measured", "measured", "extrapolated"]


def test_loggrid_fills_holes_by_local_power_law_and_labels_them():
    b = np.array([1, 2, 4, 8], dtype=float)
    s = np.array([16, 32, 64, 128], dtype=float)
    B, S = np.meshgrid(b, s, indexing="ij")
    y = 1e-6 * B * S**2
    keep = ~((B == 8) & (S == 128))  # the largest shape "did not fit in memory"
    grid = LogGrid(np.column_stack([B[keep], S[keep]]), y[keep])
    pred, src = grid.predict(np.array([[8.0, 128.0], [1.0, 16.0]]))
    assert pred[0] == pytest.approx(1e-6 * 8 * 128**2, rel=1e-9)
    assert list(src) == ["filled", "measured"]


def test_loggrid_rejects_non_positive_values():
    with pytest.raises(ValueError):
        LogGrid(np.array([[0.0], [1.0]]), np.array([1.0, 2.0]))


def test_prefill_attention_share_of_causal_work():
    # context attention t(isl) = c * isl^2: a chunk of c after p cached tokens owns
    # c(2p + c) of the (p + c)^2 score matrix
    class Quadratic:
        def context_attention(self, b, isl, *args):
            return 1e-9 * np.asarray(isl, dtype=float) ** 2

    t = prefill_attention(Quadratic(), np.array([512.0]), np.array([1536.0]), (8, 1, 128), "bfloat16")
    assert t[0] == pytest.approx(1e-9 * 512 * (2 * 1536 + 512))
    assert prefill_attention(Quadratic(), np.array([0.0]), np.array([100.0]), (8, 1, 128), "bfloat16")[0] == 0


# -- closed loops: invariants --------------------------------------------------------------
def _flat_cost(step_s: float) -> StepCost:
    from calibrate.lookup import GridLookup

    zero = GridLookup(axes=((0.0, 1.0),) * 4, values=(0.0,) * 16, strides=(8, 4, 2, 1))
    return StepCost(dense_s=(0.0,) + (step_s,) * 4096, per_seq_s=(0.0,) * 300, attention=zero, num_layers=1)


def test_closed_loop_single_user_closed_form():
    # one user, a constant step time d: prefill in one step, then osl - 1 decode steps;
    # without async scheduling each request starts when the last one ends
    d, isl, osl = 0.01, 100, 5
    cfg = EngineConfig(max_num_seqs=4, max_num_batched_tokens=512, async_scheduling=False)
    loop, s = run_closed_loop(cfg, _flat_cost(d), users=1, isl=isl, osl=osl, requests_per_user=3)
    assert s.requests == 3
    assert s.ttft_s == pytest.approx(d)
    assert s.tpot_s == pytest.approx(d)
    ends = sorted(r.finished_s for r in loop.requests)
    assert ends == pytest.approx([osl * d, 2 * osl * d, 3 * osl * d])


def test_closed_loop_keeps_concurrency_and_counts():
    cfg = EngineConfig(max_num_seqs=64, max_num_batched_tokens=2048)
    loop, s = run_closed_loop(cfg, _flat_cost(0.005), users=8, isl=300, osl=20, requests_per_user=5,
                              stagger_s=0.05)
    assert s.requests == 40 and 0 < s.measured < 40
    _, whole = run_closed_loop(cfg, _flat_cost(0.005), users=8, isl=300, osl=20, requests_per_user=5,
                               stagger_s=0.05, exclude_warmup=False)
    assert whole.measured == 40
    # every user has exactly one request in flight: requests of one user never overlap
    by_user: dict = {}
    for r in loop.requests:
        by_user.setdefault(loop.user_of[r.index], []).append((r.arrival_s, r.finished_s))
    for spans in by_user.values():
        spans.sort()
        assert all(b[0] >= a[1] for a, b in zip(spans, spans[1:]))


# -- readers and the command on the shared data --------------------------------------------
def test_silicon_reader_reports_bad_numbers(tmp_path):
    p = tmp_path / "s.csv"
    p.write_text("system,backend,model_path,mode,isl,osl,batch_size,tp_size,silicon_ttft_ms,silicon_tpot_ms\n"
                 "h100_sxm,vllm,Qwen/Qwen3-32B,agg,1024,128,8,2,154.2,18.0\n"
                 "h100_sxm,vllm,Qwen/Qwen3-32B,agg,1024,12x,8,2,154.2,18.0\n")
    with pytest.raises(TraceError) as err:
        read_silicon(p)
    assert err.value.line == 3 and "osl" in str(err.value)


def test_kernel_db_reader_units_and_families(shared_data):
    from traces.readers.aiconfigurator import read_kernel_db

    table = read_kernel_db(shared_data / H100, version="0.19.0").to_pandas()
    raw = pd.read_parquet(shared_data / H100 / "gemm/vllm/0.19.0/gemm_perf.parquet")
    r = raw.iloc[0]
    row = table[(table.operator == "gemm") & (table.dtype == r.gemm_dtype) & (table.m == r.m)
                & (table.n == r.n) & (table.k == r.k)]
    assert row.latency_s.iloc[0] == pytest.approx(r.latency * 1e-3)  # ms -> s
    assert {"gemm", "context_attention", "generation_attention", "nccl_all_reduce",
            "custom_all_reduce"} <= set(table.operator)
    # GEMM time never falls as m grows at fixed (n, k) beyond tile effects
    g = table[(table.operator == "gemm") & (table.dtype == "bfloat16") & (table.n == 4096) & (table.k == 4096)]
    lat = g.sort_values("m").latency_s.to_numpy()
    assert lat[-1] > 10 * lat[0]


def test_kernel_set_answers_inside_measured_range_as_measured(shared_data):
    from traces.readers.aiconfigurator import read_kernel_db, read_system_yaml

    d = shared_data / H100
    prof = read_kernel_db(d, version="0.19.0")
    ks = KernelSet(prof, Datasheet.from_aiconfigurator("h100_sxm", read_system_yaml(d)))
    raw = pd.read_parquet(d / "gemm/vllm/0.19.0/gemm_perf.parquet")
    r = raw[(raw.gemm_dtype == "bfloat16") & (raw.n == 5120) & (raw.k == 5120) & (raw.m == 64)].iloc[0]
    assert ks.gemm([64], 5120, 5120, "bfloat16")[0] == pytest.approx(r.latency * 1e-3, rel=1e-9)
    assert ks.tally()["gemm"] == {"measured": 1}
    # a dtype the database lacks falls back to the roofline, and says so
    ks.gemm([64], 5120, 5120, "fp4")
    assert ks.tally()["gemm"]["roofline"] == 1


def test_silicon_command_on_a_few_rows(shared_data, tmp_path):
    from validate.cli import main

    rows = pd.read_csv(shared_data / SILICON)
    pick = rows[(rows.system == "h100_sxm") & (rows.backend == "vllm")]
    pick = pd.concat([pick[pick.model_path == "Qwen/Qwen3-32B"].head(2),
                      pick[pick["mode"] == "disagg"].head(1)])
    csv = tmp_path / "rows.csv"
    pick.to_csv(csv, index=False)
    out = tmp_path / "summary.json"
    rc = main(["silicon", "--silicon", str(csv), "--kernels", str(shared_data / H100),
               "--models", str(shared_data / "models"), "--system", "h100_sxm", "--json", str(out)])
    assert rc == 0
    s = json.loads(out.read_text())
    assert s["rows"]["total"] == 3 and s["rows"]["predicted"] == 2
    assert sum(s["rows"]["skipped"].values()) == 1
    for metric in ("ttft", "tpot"):
        assert set(s[metric]) == {"mape", "median_ape", "p90_ape", "bias"}
    # predictions are of the measured order of magnitude (not a tuned bar: a sanity bound)
    assert 0 < s["tpot"]["mape"] < 100


def test_loggrid_caps_measurement_spikes_by_larger_shapes():
    # a spike at m=2048 above the m=4096 measurement (seen in a real GEMM table)
    m = np.array([1024.0, 2048.0, 4096.0])
    y = np.array([0.069e-3, 0.748e-3, 0.270e-3])
    grid = LogGrid(m[:, None], y)
    assert grid.adjusted == 1
    pred, src = grid.predict([[2048.0]])
    # the spike becomes a hole filled on the power law through its neighbours
    assert pred[0] == pytest.approx(np.sqrt(0.069e-3 * 0.270e-3)) and src[0] == "filled"
    assert LogGrid(m[:, None], y, monotone=False).predict([[2048.0]])[0][0] == pytest.approx(0.748e-3)


def test_gemm_dtype_of_rows_and_checkpoints(shared_data):
    from profiles.model import load_model_config
    from replay.silicon import gemm_dtype

    block = load_model_config(shared_data / "models" / "Qwen--Qwen3-32B-FP8_config.json")
    dense = load_model_config(shared_data / "models" / "Qwen--Qwen3-32B_config.json")
    assert block.quantization == "fp8_block"  # quantization_config has weight_block_size
    assert gemm_dtype(pd.Series({"gemm_quant_mode": "fp8"}), block) == "fp8_block"
    assert gemm_dtype(pd.Series({"gemm_quant_mode": "fp8"}), dense) == "fp8"
    assert gemm_dtype(pd.Series({"gemm_quant_mode": float("nan"), "precision": float("nan")}), dense) == "bfloat16"


def test_ingest_reads_a_kernel_database_folder(shared_data, tmp_path):
    from traces.formats import detect_format, read_profile

    d = shared_data / H100
    assert detect_format(d) == "aiconfigurator-dir"
    res = read_profile(d)
    ops = res.rows_per_operator()
    assert ops["gemm"] == len(pd.read_parquet(d / "gemm/vllm/0.19.0/gemm_perf.parquet"))  # newest table
    assert set(res.table.column("hardware").to_pylist()) == {"h100_sxm"}


def test_kernel_db_prefers_the_serving_engine_and_its_nearest_version(tmp_path):
    from traces.readers.aiconfigurator import read_kernel_db

    def gemm(path, latency):
        path.mkdir(parents=True)
        pd.DataFrame({"gemm_dtype": ["bfloat16"], "m": [8], "n": [64], "k": [64],
                      "latency": [latency]}).to_parquet(path / "gemm_perf.parquet")

    root = tmp_path / "sys"
    gemm(root / "gemm/vllm/0.14.0", 1.0)
    gemm(root / "gemm/vllm/0.19.0", 2.0)
    gemm(root / "gemm/trtllm/1.0.0", 3.0)
    lat = lambda **kw: read_kernel_db(root, **kw).column("latency_s").to_pylist()  # noqa: E731
    assert lat(version="0.12.0", framework="vllm") == [1e-3]
    assert lat(framework="vllm") == [2e-3]  # newest of the engine's own tables
    assert lat(version="1.0.0", framework="trtllm") == [3e-3]
    assert lat(framework="sglang") == [3e-3]  # engine not measured: newest of any


def test_gemm_roofline_uses_the_efficiency_of_measured_gemms():
    # one measured compute-bound bf16 GEMM at half the datasheet peak
    sheet = Datasheet(name="toy", mem_bw_bytes_s=1e12, peak_flops={"bfloat16": 1e15, "fp8": 2e15})
    shape = 8192.0
    flops = 2 * shape**3
    prof = pa.table({"operator": ["gemm"], "dtype": ["bfloat16"], "m": [8192], "n": [8192], "k": [8192],
                     "latency_s": [flops / 0.5e15]})
    ks = KernelSet(prof, sheet)
    assert ks.gemm_efficiency() == pytest.approx(0.5)
    t = ks.gemm([16384.0], 16384, 16384, "fp8")[0]  # fp8 not measured: its peak x 0.5
    assert t == pytest.approx(2 * 16384.0**3 / (2e15 * 0.5))
    assert ks.tally()["gemm"] == {"roofline": 1}


def test_attention_without_measurements_falls_back_to_roofline_and_says_so():
    sheet = Datasheet(name="toy", mem_bw_bytes_s=1e12, peak_flops={"bfloat16": 1e15}, mem_efficiency=1.0,
                      mem_latency_s=0.0)
    ks = KernelSet(pa.table({"operator": ["gemm"], "dtype": ["bfloat16"], "m": [1], "n": [1], "k": [1],
                             "latency_s": [1e-6]}), sheet)
    t = ks.generation_attention([4.0], [1000.0], 8, 2, 128)[0]
    assert t == pytest.approx(4 * 1000 * 2 * 128 * 2 * 2 / 1e12)  # K and V, bf16
    assert ks.tally()["generation_attention"] == {"roofline": 1}
