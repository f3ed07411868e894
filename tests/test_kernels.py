"""Kernel databases: reader, log-grid regressors, composition into engine steps, closed loops."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from mist.calibrate.kernel_profile import prefill_attention
from mist.calibrate.kernels import Datasheet, KernelSet
from mist.calibrate.kernels_grid import LogGrid
from mist.replay.clients import run_closed_loop
from mist.replay.config import EngineConfig
from mist.replay.step_cost import StepCost
from mist.traces.errors import TraceError
from mist.traces.readers.silicon import read_silicon


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


def test_sliding_window_attention_covers_the_window_only():
    # score work of a causal layer: chunk c after p keys owns c(2p + c); with a window W
    # each token attends to at most W keys, so a chunk of 4W after W keys does 4W x W-ish
    # work and a decode's keys stop at W
    from mist.calibrate.kernel_profile import decode_attention, windowed_prefill_attention

    class Toy:
        def context_attention(self, b, isl, *args):
            return 1e-9 * np.asarray(isl, dtype=float) ** 2

        def generation_attention(self, n, kv, *args):
            return 1e-6 * np.asarray(n, dtype=float) * np.asarray(kv, dtype=float)

    W, shape = 128, (8, 1, 64)
    short = windowed_prefill_attention(Toy(), np.array([64.0]), np.array([1000.0]), W, shape, "bfloat16")
    assert short[0] == pytest.approx(1e-9 * 64 * (2 * 128 + 64))  # 64 new tokens after (at most) W keys
    long = windowed_prefill_attention(Toy(), np.array([4 * W * 1.0]), np.array([0.0]), W, shape, "bfloat16")
    assert long[0] == pytest.approx(4 * 1e-9 * W * (2 * W + W))  # 4 window-long pieces after W keys each
    dec = decode_attention(Toy(), np.array([8.0, 8.0]), np.minimum(np.array([100.0, 5000.0]), W), shape, "bfloat16")
    assert dec[1] == pytest.approx(1e-6 * 8 * W) and dec[0] == pytest.approx(1e-6 * 8 * 100)


def test_sliding_layers_are_read_from_the_config(tmp_path):
    import json

    from mist.profiles.model import load_model_config

    base = {"architectures": ["X"], "num_hidden_layers": 4, "hidden_size": 256, "num_attention_heads": 4,
            "num_key_value_heads": 2, "intermediate_size": 512, "vocab_size": 1000, "max_position_embeddings": 8192}
    cases = [({}, 0, 0),
             ({"sliding_window": 1024}, 1024, 4),  # Mistral: a window and no layer types
             ({"sliding_window": 128, "layer_types": ["sliding_attention", "full_attention"] * 2}, 128, 2),
             ({"sliding_window": 8192}, 0, 0)]  # not shorter than the context: no window
    for extra, window, layers in cases:
        path = tmp_path / "config.json"
        path.write_text(json.dumps({**base, **extra}))
        m = load_model_config(path)
        assert (m.sliding_window, m.num_sliding_layers) == (window, layers)


# -- closed loops: invariants --------------------------------------------------------------
def _flat_cost(step_s: float) -> StepCost:
    from mist.calibrate.lookup import GridLookup

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


def test_kernel_db_reader_units_and_families(shared):
    from mist.traces.readers.aiconfigurator import read_kernel_db

    table = read_kernel_db(shared.h100_kernels, version="0.19.0").to_pandas()
    raw = pd.read_parquet(shared.h100_kernels / "gemm/vllm/0.19.0/gemm_perf.parquet")
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


def test_kernel_set_answers_inside_measured_range_as_measured(shared):
    from mist.traces.readers.aiconfigurator import read_kernel_db, read_system_yaml

    d = shared.h100_kernels
    prof = read_kernel_db(d, version="0.19.0")
    ks = KernelSet(prof, Datasheet.from_aiconfigurator("h100_sxm", read_system_yaml(d)))
    raw = pd.read_parquet(d / "gemm/vllm/0.19.0/gemm_perf.parquet")
    r = raw[(raw.gemm_dtype == "bfloat16") & (raw.n == 5120) & (raw.k == 5120) & (raw.m == 64)].iloc[0]
    assert ks.gemm([64], 5120, 5120, "bfloat16")[0] == pytest.approx(r.latency * 1e-3, rel=1e-9)
    assert ks.tally()["gemm"] == {"measured": 1}
    # a dtype the database lacks falls back to the roofline when the device has tensor
    # cores for it, and runs weight-only when it has none (fp4 on Hopper); each says so
    ks.gemm([64], 5120, 5120, "int8")
    assert ks.tally()["gemm"]["roofline"] == 1
    ks.gemm([64], 5120, 5120, "fp4")
    assert ks.tally()["gemm"]["weight-only"] == 1


@pytest.fixture(scope="module")
def few_rows_csv(shared, tmp_path_factory):
    """Two Qwen3-32B rows and one disaggregated row of h100_sxm/vllm."""
    rows = pd.read_csv(shared.silicon_csv)
    pick = rows[(rows.system == "h100_sxm") & (rows.backend == "vllm")]
    pick = pd.concat([pick[pick.model_path == "Qwen/Qwen3-32B"].head(2),
                      pick[pick["mode"] == "disagg"].head(1)])
    csv = tmp_path_factory.mktemp("few") / "rows.csv"
    pick.to_csv(csv, index=False)
    return csv


def _check_few_rows_summary(s: dict) -> None:
    assert s["rows"]["total"] == 3 and s["rows"]["predicted"] == 2
    assert sum(s["rows"]["skipped"].values()) == 1
    for metric in ("ttft", "tpot"):
        assert set(s[metric]) == {"mape", "median_ape", "p90_ape", "bias"}
    # predictions are of the measured order of magnitude (not a tuned bar: a sanity bound)
    assert 0 < s["tpot"]["mape"] < 100


def test_predict_deployments_on_a_few_rows(shared, few_rows_csv):
    from mist.replay.silicon import SiliconSettings, predict_deployments

    result = predict_deployments(SiliconSettings(silicon=few_rows_csv, kernels=shared.h100_kernels,
                                                 models=shared.models, system="h100_sxm", kernel_cv=False))
    _check_few_rows_summary(result.summary)
    assert len(result.predictions) == 3 and result.predictions["pred_ttft_ms"].notna().sum() == 2
    assert result.summary["kernel_cv"] == {} and result.kernel_cv.empty


@pytest.mark.slow  # the command cross-validates every kernel table (~20 s); the test above is the fast one
def test_silicon_command_on_a_few_rows(shared, few_rows_csv, tmp_path):
    from mist.validate.cli import main

    out = tmp_path / "summary.json"
    rc = main(["silicon", "--silicon", str(few_rows_csv), "--kernels", str(shared.h100_kernels),
               "--models", str(shared.models), "--system", "h100_sxm", "--json", str(out), "--out", str(tmp_path)])
    assert rc == 0
    s = json.loads(out.read_text())
    _check_few_rows_summary(s)
    assert s["kernel_cv"]["gemm/bfloat16"]["held_out"] > 0
    assert {p.name for p in tmp_path.iterdir()} >= {"predictions.csv", "scatter.png", "kernel_cv.csv"}


def test_cross_validation_holds_out_measured_shapes():
    # a pure power law along one axis: every held-out message size is filled exactly
    # from its neighbours (log-log interpolation inside, the local power law outside)
    from mist.calibrate.kernels_grid import cross_validate_kernels

    size = 2.0 ** np.arange(10, 30)
    table = pa.table({"operator": ["nccl_all_reduce"] * len(size), "dtype": ["half"] * len(size),
                      "tp": [8] * len(size), "message_bytes": size, "latency_s": 1e-9 * size**0.8})
    cv = cross_validate_kernels(table, k=4)
    assert list(cv["kernel"]) == ["nccl_all_reduce"] and list(cv["variant"]) == ["half"]
    assert 0 < cv["held_out"].iloc[0] <= len(size)
    assert cv["mape"].iloc[0] < 1e-6


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


def test_gemm_dtype_of_rows_and_checkpoints(shared):
    from mist.profiles.model import load_model_config
    from mist.replay.silicon_rows import gemm_dtype

    block = load_model_config(shared.models / "Qwen--Qwen3-32B-FP8_config.json")
    dense = load_model_config(shared.models / "Qwen--Qwen3-32B_config.json")
    assert block.quantization == "fp8_block"  # quantization_config has weight_block_size
    assert gemm_dtype(pd.Series({"gemm_quant_mode": "fp8"}), block) == "fp8_block"
    assert gemm_dtype(pd.Series({"gemm_quant_mode": "fp8"}), dense) == "fp8"
    assert gemm_dtype(pd.Series({"gemm_quant_mode": float("nan"), "precision": float("nan")}), dense) == "bfloat16"


def test_rows_of_a_four_bit_requantised_fp8_checkpoint(shared):
    # MiniMax-M2.5 ships block-scaled fp8; its Blackwell "nvfp4" rows ran an NVFP4
    # re-quantisation, so both its GEMMs and its experts are 4-bit there
    from mist.profiles.model import load_model_config
    from mist.replay.silicon_rows import gemm_dtype, moe_dtype

    model = load_model_config(shared.models / "MiniMaxAI--MiniMax-M2.5_config.json")
    assert model.quantization == "fp8_block"
    fp4 = pd.Series({"gemm_quant_mode": "nvfp4", "moe_quant_mode": "nvfp4"})
    fp8 = pd.Series({"gemm_quant_mode": "fp8", "moe_quant_mode": "fp8"})
    assert (gemm_dtype(fp4, model), moe_dtype(fp4, model)) == ("nvfp4", "nvfp4")
    assert (gemm_dtype(fp8, model), moe_dtype(fp8, model)) == ("fp8_block", "fp8_block")
    odd = pd.Series({"gemm_quant_mode": "w4a8_mystery", "moe_quant_mode": "w4a8_mystery"})
    assert gemm_dtype(odd, model) == "fp8_block"  # unknown names are not read as 4-bit


def test_ingest_reads_a_kernel_database_folder(shared, tmp_path):
    from mist.traces.formats import detect_format, read_profile

    d = shared.h100_kernels
    assert detect_format(d) == "aiconfigurator-dir"
    res = read_profile(d)
    ops = res.rows_per_operator()
    assert ops["gemm"] == len(pd.read_parquet(d / "gemm/vllm/0.19.0/gemm_perf.parquet"))  # newest table
    assert set(res.table.column("hardware").to_pylist()) == {"h100_sxm"}


def test_kernel_db_prefers_the_serving_engine_and_its_nearest_version(tmp_path):
    from mist.traces.readers.aiconfigurator import read_kernel_db

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
    # a nightly build is newer than every release; a "v" prefix is only a prefix
    assert lat(version="nightly-5b8c30d62b754b57", framework="vllm") == [2e-3]
    assert lat(version="v0.13.0", framework="vllm") == [1e-3]

    # each silicon row reads the tables nearest its own engine version
    from mist.replay.silicon_kernels import KernelVersions

    sheet = Datasheet(name="toy", mem_bw_bytes_s=1e12, peak_flops={"bfloat16": 1e15})
    kv = KernelVersions(root, sheet, framework="vllm", default="0.12.0")
    old, new = kv.for_version("0.12.0"), kv.for_version("0.18.0")
    assert old.gemm([8.0], 64, 64)[0] == pytest.approx(1e-3) and new.gemm([8.0], 64, 64)[0] == pytest.approx(2e-3)
    assert kv.for_version(None) is old and kv.for_version("0.11.2") is old  # same tables, one set
    assert (kv.gemm_table("0.18.0"), kv.gemm_table(None)) == ("vllm 0.19.0", "vllm 0.14.0")
    assert kv.tally()["gemm"]["measured"] == 2


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


def test_four_bit_float_gemms_run_at_the_fp4_peak():
    # a Blackwell datasheet's fp4_tc_flops is the peak of nvfp4/mxfp4 GEMMs no table measured
    from mist.calibrate.kernels import base_dtype

    assert [base_dtype(d) for d in ("nvfp4", "mxfp4", "fp8_block", "bf16", "int4_wo")] == \
        ["fp4", "fp4", "fp8", "bfloat16", "int4_wo"]
    sheet = Datasheet(name="toy", mem_bw_bytes_s=1e12, peak_flops={"bfloat16": 1e15, "fp4": 4e15})
    prof = pa.table({"operator": ["gemm"], "dtype": ["bfloat16"], "m": [8192], "n": [8192], "k": [8192],
                     "latency_s": [2 * 8192.0**3 / 0.5e15]})
    ks = KernelSet(prof, sheet)
    t = ks.gemm([16384.0], 16384, 16384, "nvfp4")[0]
    assert t == pytest.approx(2 * 16384.0**3 / (4e15 * 0.5))
    assert ks.tally()["gemm"] == {"roofline": 1}


def test_attention_without_measurements_falls_back_to_roofline_and_says_so():
    sheet = Datasheet(name="toy", mem_bw_bytes_s=1e12, peak_flops={"bfloat16": 1e15}, mem_efficiency=1.0,
                      mem_latency_s=0.0)
    ks = KernelSet(pa.table({"operator": ["gemm"], "dtype": ["bfloat16"], "m": [1], "n": [1], "k": [1],
                             "latency_s": [1e-6]}), sheet)
    t = ks.generation_attention([4.0], [1000.0], 8, 2, 128)[0]
    assert t == pytest.approx(4 * 1000 * 2 * 128 * 2 * 2 / 1e12)  # K and V, bf16
    assert ks.tally()["generation_attention"] == {"roofline": 1}


# -- MoE layers from kernels: hand-worked roofline cases ---------------------------------

def _moe_toy():
    from mist.profiles.model import ModelConfig

    # memory 1 TB/s exactly, no latency; one fp16 GEMM measured at half its peak, so the
    # bf16 router and fp8 experts (unmeasured) are roofline GEMMs at 0.5 efficiency
    sheet = Datasheet(name="toy", mem_bw_bytes_s=1e12, peak_flops={"bfloat16": 1e15, "fp8": 2e15},
                      mem_efficiency=1.0, mem_latency_s=0.0)
    s = 8192.0
    prof = pa.table({"operator": ["gemm"], "dtype": ["float16"], "m": [8192], "n": [8192], "k": [8192],
                     "latency_s": [2 * s**3 / 0.5e15]})
    model = ModelConfig(name="toy-moe", architecture="X", num_layers=2, hidden_size=4096, num_heads=32,
                        num_kv_heads=8, head_dim=128, intermediate_size=0, vocab_size=1000, num_experts=64,
                        num_experts_per_tok=4, moe_intermediate_size=2048, tie_word_embeddings=False,
                        torch_dtype="bfloat16", max_position_embeddings=4096)
    return KernelSet(prof, sheet), model


def _moe_by_hand(tokens, hit, ep, tp, fp8_eff=0.5):
    H, E, k, width = 4096, 64, 4, 2048 // (1 if ep > 1 else tp)
    step, pairs = tokens * ep, tokens * k
    def gemm(m, n, kk, w, peak):
        return max(2 * m * n * kk / (peak * fp8_eff), (w * (m * kk + kk * n) + 2 * m * n) / 1e12)
    t = gemm(step, E, H, 2.0, 1e15) + step * E * 8 / 1e12  # router (bf16) + top-k
    for n, kk in ((2 * width, H), (H, width)):
        t += max(gemm(pairs, n, kk, 1.0, 2e15), (hit * n * kk + pairs * (n + kk) * 2) / 1e12)
    return t + (pairs * 3 * width * 2 + pairs * H * 2 + step * H * 2) / 1e12


@pytest.mark.parametrize("tokens,hit,ep,tp", [(1, 4, 1, 1), (8, 20, 1, 2), (4096, 64, 1, 1), (512, 16, 4, 4)])
def test_moe_layer_is_the_larger_of_weight_streaming_and_pair_compute(tokens, hit, ep, tp):
    from mist.calibrate.kernel_profile import moe_layer

    ks, model = _moe_toy()
    got = moe_layer(ks, model, tp, ep, "fp8", np.array([float(tokens)]), np.array([float(hit)]))[0]
    assert got == pytest.approx(_moe_by_hand(tokens, hit, ep, tp), rel=1e-9)


def test_moe_decode_streams_the_hit_experts_and_prefill_is_compute_bound():
    from mist.calibrate.kernel_profile import moe_layer

    ks, model = _moe_toy()
    one, all_hit = moe_layer(ks, model, 1, 1, "fp8", np.array([1.0, 1.0]), np.array([4.0, 64.0]))
    # one token hitting 4 experts reads 4 experts' weights (3 x 4096 x 2048 fp8 bytes each)
    assert one == pytest.approx(4 * 3 * 4096 * 2048 / 1e12, rel=0.05)
    assert all_hit > 10 * one
    n = 65536  # 4096 token-expert pairs per expert: past the fp8 ridge (1000 FLOP/byte)
    big = moe_layer(ks, model, 1, 1, "fp8", np.array([float(n)]), np.array([64.0]))[0]
    flops = 2 * n * 4 * 3 * 4096 * 2048 / 1e15  # the experts' FLOPs at 1e15 effective
    side = (2 * (n * 4096 + 4096 * 64 + n * 64) / 1e12 + n * 64 * 8 / 1e12  # router (reads x), top-k
            + (n * 4 * (3 * 2048 + 4096) + n * 4096) * 2 / 1e12)  # activation, top-k sum
    assert big == pytest.approx(flops + side, rel=1e-6)


def test_moe_experts_in_an_unmeasured_4bit_format_run_weight_only():
    # MXFP4 experts with no fp4 GEMM table (gpt-oss on Hopper): weights streamed at half
    # a byte, multiplications at the bf16 roofline (the toy's bf16 peak at 0.5 efficiency)
    from mist.calibrate.kernel_profile import moe_layer

    ks, model = _moe_toy()
    one = moe_layer(ks, model, 1, 1, "mxfp4", np.array([1.0]), np.array([4.0]))[0]
    assert one == pytest.approx(4 * 3 * 4096 * 2048 * 0.5 / 1e12, rel=0.05)
    n = 65536
    big = moe_layer(ks, model, 1, 1, "mxfp4", np.array([float(n)]), np.array([64.0]))[0]
    fp8 = moe_layer(ks, model, 1, 1, "fp8", np.array([float(n)]), np.array([64.0]))[0]
    experts_bf16 = 2 * n * 4 * 3 * 4096 * 2048 / 0.5e15
    assert big - fp8 == pytest.approx(experts_bf16 / 2, rel=1e-6)  # bf16 compute: twice fp8's


def test_gpt_oss_rows_are_composed_with_bf16_attention_and_mxfp4_experts(shared):
    from mist.profiles.model import load_model_config
    from mist.replay.silicon_predict import kv_blocks_for
    from mist.replay.silicon_rows import (
        find_model,
        gemm_dtype,
        model_index,
        moe_dtype,
        skip_reason,
    )
    from mist.traces.readers.aiconfigurator import read_kernel_db, read_system_yaml

    index = model_index(shared.models)
    model = load_model_config(find_model(index, "openai/gpt-oss-120b"))
    assert (model.quantization, model.sliding_window, model.num_sliding_layers) == ("mxfp4", 128, 18)
    rows = read_silicon(shared.silicon_csv)
    oss = rows[(rows.system == "h100_sxm") & (rows.backend == "vllm") & (rows.model_path == "openai/gpt-oss-120b")]
    row = oss.iloc[0]
    assert (gemm_dtype(row, model), moe_dtype(row, model)) == ("bfloat16", "mxfp4")
    sheet = Datasheet.from_aiconfigurator("h100_sxm", read_system_yaml(shared.h100_kernels))
    kernels = KernelSet(read_kernel_db(shared.h100_kernels, hardware="h100_sxm", framework="vllm"), sheet)
    assert {skip_reason(r, index, kernels) for _, r in oss.iterrows()} == {None}
    # 4-bit experts leave more room for KV than bf16 ones would; only the 18 full-attention
    # layers' KV grows with the sequence
    assert kv_blocks_for(model, sheet, 2, "bfloat16", "mxfp4") > 1.5 * kv_blocks_for(model, sheet, 2, "bfloat16")


def test_kernel_profile_tables_moe_layers_and_silicon_reads_their_sharding(shared):
    from mist.calibrate.calibration import fit_operators
    from mist.calibrate.kernel_profile import kernel_operator_profile
    from mist.replay.silicon_rows import expert_parallel_of, model_index, skip_reason
    from mist.traces.readers.aiconfigurator import read_kernel_db

    ks, model = _moe_toy()
    table = kernel_operator_profile(ks, model, 2, "fp8", budget=256, max_seqs=8, max_len=512, expert_parallel=2)
    ops = set(table.column("operator").to_pylist())
    assert "moe" in ops and not ops & {"gate_up_proj", "down_proj", "act_fn"}  # every layer is MoE
    fitted = fit_operators(table, 2)["moe"]
    # a rank holds 32 experts: the table spans 1..32 of them and tokens up to budget / ep
    feats = table.filter(pa.compute.equal(table["operator"], "moe")).select(["tokens", "activated_experts"])
    assert max(feats["activated_experts"].to_pylist()) == 32 and max(feats["tokens"].to_pylist()) == 128
    assert fitted.predict(np.array([[64.0, 16.0]]))[0] == pytest.approx(
        _moe_by_hand(64, 16, 2, 2), rel=1e-6)
    with pytest.raises(ValueError, match="expert_parallel"):
        kernel_operator_profile(ks, model, 4, "fp8", expert_parallel=2)

    row = pd.Series({"tp_size": 4.0, "moe_tp_size": 1.0, "moe_ep_size": 4.0})
    assert expert_parallel_of(row, 4) == 4
    assert expert_parallel_of(pd.Series({"tp_size": 4.0, "moe_tp_size": 4.0, "moe_ep_size": 1.0}), 4) == 1
    assert expert_parallel_of(pd.Series({"tp_size": 4.0}), 4) == 1
    assert expert_parallel_of(pd.Series({"tp_size": 4.0, "moe_tp_size": 2.0, "moe_ep_size": 2.0}), 4) is None
    rows = read_silicon(shared.silicon_csv)
    minimax = rows[(rows.system == "h100_sxm") & (rows.model_path == "MiniMaxAI/MiniMax-M2.5")]
    kernels = KernelSet(read_kernel_db(shared.h100_kernels, hardware="h100_sxm", framework="vllm"), ks.sheet)
    reasons = {skip_reason(r, model_index(shared.models), kernels) for _, r in minimax.iterrows()}
    assert reasons == {None}  # attention-DP rows included (their experts span the TP ranks)
    dp_rows = minimax[minimax["attention_dp_size"] > 1]
    assert len(dp_rows) and all(expert_parallel_of(r, int(r["tp_size"])) == int(r["tp_size"])
                                for _, r in dp_rows.iterrows())


def test_attention_dp_rows_count_users_per_rank_and_skip_dense_models(shared):
    from mist.replay.silicon_rows import (
        attention_dp_of,
        expert_parallel_of,
        model_index,
        skip_reason,
        users_of,
    )
    from mist.traces.readers.aiconfigurator import read_kernel_db, read_system_yaml

    dp = pd.Series({"batch_size": 16.0, "tp_size": 4.0, "attention_dp_size": 4.0, "moe_tp_size": 1.0,
                    "moe_ep_size": 16.0})
    assert attention_dp_of(dp) == 4 and users_of(dp) == 64
    assert expert_parallel_of(dp, 4) == 4
    assert expert_parallel_of(pd.Series({**dp, "moe_ep_size": 4.0}), 4) == 4  # the EP = tp spelling
    assert expert_parallel_of(pd.Series({**dp, "moe_ep_size": 8.0}), 4) is None  # experts over half the GPUs
    plain = pd.Series({"batch_size": 16.0, "tp_size": 4.0, "attention_dp_size": float("nan")})
    assert attention_dp_of(plain) == 1 and users_of(plain) == 16
    index = model_index(shared.models)
    sheet = Datasheet.from_aiconfigurator("h100_sxm", read_system_yaml(shared.h100_kernels))
    kernels = KernelSet(read_kernel_db(shared.h100_kernels, hardware="h100_sxm", framework="vllm"), sheet)
    base = {"mode": "agg", "batch_size": 8.0, "pp_size": 1.0, "precision": "fp8", "gemm_quant_mode": "fp8"}
    dense = pd.Series({**base, "model_path": "meta-llama/Llama-3.1-70B", "tp_size": 4.0, "attention_dp_size": 2.0})
    assert skip_reason(dense, index, kernels) == "attention data parallel of a dense model"
    moe = pd.Series({**base, "model_path": "MiniMaxAI/MiniMax-M2.5", "tp_size": 4.0, "attention_dp_size": 3.0,
                     "moe_tp_size": 1.0, "moe_ep_size": 12.0})
    assert skip_reason(moe, index, kernels) == "attention data parallel ranks not dividing the GPUs"
    assert skip_reason(pd.Series({**moe, "attention_dp_size": 2.0, "moe_ep_size": 8.0}), index, kernels) is None
    trt = pd.Series({**moe, "attention_dp_size": 2.0, "moe_ep_size": 8.0, "backend": "trtllm"})
    assert skip_reason(trt, index, kernels) == "attention data parallel (read only for vLLM rows)"


def test_formats_without_tensor_cores_run_weight_only_gemms():
    # a device with bf16 tensor cores only (an A100): fp8 / 4-bit checkpoints run through
    # weight-only kernels — narrow weights read, bf16 multiplications
    sheet = Datasheet(name="ampere-like", mem_bw_bytes_s=1e12, peak_flops={"bfloat16": 1e14},
                      mem_efficiency=1.0, mem_latency_s=0.0)
    m = np.array([1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0, 2048.0, 4096.0])
    n = k = 4096

    def bf16(mm):  # the measured bf16 GEMM: the longer of its FLOPs and its bytes
        return np.maximum(2 * mm * n * k / 1e14, (2 * n * k + 2 * (mm * k + mm * n)) / 1e12)

    prof = pa.table({"operator": ["gemm"] * len(m), "dtype": ["bfloat16"] * len(m), "m": m,
                     "n": [n] * len(m), "k": [k] * len(m), "latency_s": bf16(m)})
    ks = KernelSet(prof, sheet)
    assert ks.weight_only("fp8") and ks.weight_only("nvfp4") and not ks.weight_only("bfloat16")
    fp8 = ks.gemm(m, n, k, "fp8")
    # small m: one byte per weight read; large m: the bf16 multiplications
    assert fp8[0] == pytest.approx((n * k + 2 * (k + n)) / 1e12, rel=1e-6)
    assert fp8[-1] == pytest.approx(bf16(m[-1]), rel=1e-6)
    assert np.all(fp8 <= bf16(m) + 1e-12) and np.all(np.diff(fp8) >= -1e-12)
    assert ks.gemm(m[:1], n, k, "nvfp4")[0] == pytest.approx((0.5 * n * k + 2 * (k + n)) / 1e12, rel=1e-6)
    assert ks.tally()["gemm"]["weight-only"] == len(m) + 1
    # with fp8 tensor cores the format is not weight-only: an unmeasured dtype stays unmeasured
    fp8_device = KernelSet(prof, Datasheet(name="hopper-like", mem_bw_bytes_s=1e12,
                                           peak_flops={"bfloat16": 1e14, "fp8": 2e14}))
    assert not fp8_device.weight_only("fp8") and fp8_device.weight_only("mxfp4")


def test_fp8_rows_on_a_device_without_fp8_are_predicted_weight_only(shared):
    from mist.replay.silicon_rows import model_index, skip_reason
    from mist.traces.readers.aiconfigurator import read_kernel_db, read_system_yaml

    a100 = shared.aiconfigurator / "a100_sxm"
    sheet = Datasheet.from_aiconfigurator("a100_sxm", read_system_yaml(a100))
    kernels = KernelSet(read_kernel_db(a100, hardware="a100_sxm", framework="vllm"), sheet)
    assert kernels.gemm_dtypes() == ["bfloat16"] and "fp8" not in sheet.peak_flops
    rows = read_silicon(shared.silicon_csv)
    llama = rows[(rows.system == "h100_sxm") & (rows.backend == "vllm")
                 & (rows.model_path == "meta-llama/Llama-3.1-70B")]
    assert set(llama["gemm_quant_mode"]) == {"fp8"}
    index = model_index(shared.models)
    assert {skip_reason(r, index, kernels) for _, r in llama.iterrows()} == {None}
    # and predicted: decode reads one byte per weight, so it beats the same row in bf16,
    # but no more than the halved weight reads allow
    from mist.profiles.model import load_model_config
    from mist.replay.silicon_predict import predict_row
    from mist.replay.silicon_rows import find_model

    row = llama[llama.tp_size == 8].sort_values(["batch_size", "isl", "osl"]).iloc[0]
    model = load_model_config(find_model(index, row["model_path"]))
    fp8 = predict_row(row, model, kernels, requests_per_user=2)
    assert kernels.tally()["gemm"]["weight-only"] > 0
    bf16 = predict_row(pd.Series({**row, "gemm_quant_mode": "bfloat16", "precision": "bf16"}), model, kernels,
                       requests_per_user=2)
    assert 0.5 * bf16.tpot_ms < fp8.tpot_ms < bf16.tpot_ms


def test_all_gather_reads_nccl_rows_and_falls_back_to_a_ring_over_the_link():
    # NCCL all-gather measured at 2 GPUs (nccl-tests' size: the gathered tensor)
    sheet = Datasheet(name="toy", mem_bw_bytes_s=1e12, peak_flops={"bfloat16": 1e15},
                      link_bw_bytes_s=1e11, link_latency_s=5e-6)
    prof = pa.table({"operator": ["nccl_all_gather"] * 3, "dtype": ["half"] * 3, "tp": [2, 2, 2],
                     "message_bytes": [1_000, 100_000, 10_000_000], "latency_s": [6e-6, 8e-6, 60e-6]})
    ks = KernelSet(prof, sheet)
    assert ks.all_gather([100_000], 2)[0] == pytest.approx(8e-6)
    assert ks.all_gather([100_000], 1)[0] == 0.0  # one GPU: nothing to gather
    # 4 GPUs not measured: a ring in which every rank receives 3/4 of the 8 MB tensor
    assert ks.all_gather([8e6], 4)[0] == pytest.approx(5e-6 + 0.75 * 8e6 / 1e11)
    assert ks.tally()["all_gather"] == {"measured": 1, "roofline": 1}
    # an all-reduce moves twice the ring share (reduce-scatter + all-gather)
    assert ks.all_reduce([8e6], 4)[0] == pytest.approx(5e-6 + 2 * 0.75 * 8e6 / 1e11)
