"""How silicon rows are predicted: the benchmark's whole-run means and the step overhead."""

from __future__ import annotations

from dataclasses import replace

import pandas as pd
import pytest

from mist.calibrate.lookup import GridLookup
from mist.calibrate.step_overhead import StepOverhead, fit_step_overhead
from mist.replay.clients import run_closed_loop
from mist.replay.config import EngineConfig
from mist.replay.silicon_predict import with_step_overhead
from mist.replay.step_cost import StepCost
from mist.traces.errors import TraceError


def _flat_cost(step_s: float) -> StepCost:
    zero = GridLookup(axes=((0.0, 1.0),) * 4, values=(0.0,) * 16, strides=(8, 4, 2, 1))
    return StepCost(dense_s=(0.0,) + (step_s,) * 4096, per_seq_s=(0.0,) * 300, attention=zero, num_layers=1)


def test_first_wave_queues_behind_its_own_prefills_closed_form():
    # C users start together; the budget admits one prompt (plus the running decodes)
    # per step of constant length d, so the k-th prompt's first token comes at k * d
    d, users, isl = 0.01, 6, 256
    cfg = EngineConfig(max_num_seqs=16, max_num_batched_tokens=isl + users, async_scheduling=False)
    _, wave = run_closed_loop(cfg, _flat_cost(d), users=users, isl=isl, osl=4, requests_per_user=1)
    assert wave.measured == users
    assert wave.ttft_s == pytest.approx((users + 1) / 2 * d)


def test_step_overhead_adds_per_step_and_per_sequence_time():
    cost = _flat_cost(0.004)
    extra = StepOverhead(per_step_s=0.0013, per_sequence_s=20e-6)
    with_it = with_step_overhead(cost, extra)
    for seqs, tokens in ((1, 1), (8, 8), (64, 1088), (250, 250)):
        base = cost.step_s(tokens, seqs, [], seqs, 0, 0)
        assert with_it.step_s(tokens, seqs, [], seqs, 0, 0) - base == pytest.approx(0.0013 + 20e-6 * seqs)


def test_step_overhead_file_round_trip_and_bad_files(tmp_path):
    path = tmp_path / "o.yaml"
    StepOverhead(0.00125, 21.5e-6, {"model": "m", "rows": 3}).save(path)
    back = StepOverhead.load(path)
    assert back.per_step_s == pytest.approx(0.00125) and back.per_sequence_s == pytest.approx(21.5e-6)
    assert back.fitted_on == {"model": "m", "rows": 3}
    for text, word in (("per_step_ms: 1\n", "per_sequence_us"),
                       ("per_step_ms: -1\nper_sequence_us: 2\n", "per_step_ms"),
                       ("per_step_ms: abc\nper_sequence_us: 2\n", "per_step_ms"),
                       ("[1, 2]\n", "mapping"),
                       ("per_step_ms: 1\nper_sequence_us: 2\nfitted_on: 3\n", "fitted_on")):
        path.write_text(text)
        with pytest.raises(TraceError) as err:
            StepOverhead.load(path)
        assert word in str(err.value)
    with pytest.raises(TraceError):
        StepOverhead.load(tmp_path / "missing.yaml")


def test_fit_recovers_an_overhead_and_never_goes_negative():
    conc = pd.Series([4, 8, 16, 32, 64, 128] * 2, dtype=float)
    pred = pd.Series([8.0, 9.0, 11.0, 14.0, 20.0, 31.0] * 2)
    df = pd.DataFrame({"concurrency": conc, "pred_tpot_ms": pred, "tpot_ms": pred + 1.2 + 0.03 * conc,
                       "model": ["a"] * 6 + ["b"] * 6})
    fit = fit_step_overhead(df, df["model"] == "a", {"model": "a"})
    assert fit.per_step_s == pytest.approx(1.2e-3, rel=1e-6)
    assert fit.per_sequence_s == pytest.approx(30e-6, rel=1e-6)
    assert fit.fitted_on["rows"] == 6 and fit.fitted_on["model"] == "a"
    assert fit.fitted_on["tpot_mape_after_estimate"] == pytest.approx(0.0, abs=1e-6)
    # a composition that is already too slow gets no negative overhead
    df["tpot_ms"] = pred * 0.9
    fit = fit_step_overhead(df, df["model"] == "a")
    assert fit.per_step_s == pytest.approx(0.0, abs=1e-12) and fit.per_sequence_s == pytest.approx(0.0, abs=1e-12)
    with pytest.raises(ValueError):
        fit_step_overhead(df, df["model"] == "none")


@pytest.fixture(scope="module")
def llama_rows(shared):
    from mist.calibrate.kernels import system_datasheet
    from mist.profiles.model import load_model_config
    from mist.replay.silicon_kernels import KernelVersions
    from mist.replay.silicon_rows import find_model, model_index

    rows = pd.read_csv(shared.silicon_csv)
    rows = rows[(rows.system == "h100_sxm") & (rows.backend == "vllm") & (rows.model_path == "meta-llama/Llama-3.1-70B")
                & (rows.tp_size == 8) & (rows.isl == 1024) & (rows.osl == 1024)].sort_values("batch_size")
    sheet, _ = system_datasheet(shared.h100_kernels, "h100_sxm")
    kernels = KernelVersions(shared.h100_kernels, sheet, hardware="h100_sxm", framework="vllm").for_version(None)
    model = load_model_config(find_model(model_index(shared.models), "meta-llama/Llama-3.1-70B"))
    return rows, model, kernels


def test_benchmark_mean_is_the_first_wave_blended_with_the_steady_state(llama_rows):
    from mist.replay.silicon_predict import predict_row

    rows, model, kernels = llama_rows
    row, cache = rows.iloc[-1], {}
    one = predict_row(row, model, kernels, 1, cache, "benchmark")
    ten = predict_row(row, model, kernels, 10, cache, "benchmark")
    steady = predict_row(row, model, kernels, None, cache, "staggered")
    assert one.ttft_ms > 3 * steady.ttft_ms  # 64 prompts sent at once queue behind each other
    assert ten.ttft_ms == pytest.approx((one.ttft_ms + 9 * steady.ttft_ms) / 10)
    assert ten.tpot_ms == pytest.approx((one.tpot_ms + 9 * steady.tpot_ms) / 10)


def test_lockstep_end_of_the_protocol_range(llama_rows):
    # clients kept in lock-step queue their prompts behind each other every wave, so
    # the lock-step mean is the larger; a one-wave benchmark has no range at all
    from mist.replay.silicon_predict import predict_row

    rows, model, kernels = llama_rows
    row, cache = rows.iloc[-1], {}
    ten = predict_row(row, model, kernels, 10, cache, "benchmark")
    assert ten.ttft_lockstep_ms > 1.5 * ten.ttft_ms
    one = predict_row(row, model, kernels, 1, cache, "benchmark")
    assert one.ttft_lockstep_ms == pytest.approx(one.ttft_ms)
    assert predict_row(row, model, kernels, None, cache, "staggered").ttft_lockstep_ms is None


def test_protocol_range_places_measurements_between_the_two_ends():
    from mist.replay.silicon import protocol_range

    rows = pd.DataFrame({"pred_ttft_ms": [100.0, 100.0, 100.0, 100.0],
                         "pred_ttft_lockstep_ms": [300.0, 300.0, 300.0, 300.0],
                         "ttft_ms": [100.0, 200.0, 300.0, 400.0]})
    r = protocol_range(rows)
    assert r["rows"] == 4 and r["inside_pct"] == 75.0
    assert r["position"]["median"] == pytest.approx(0.75)  # positions 0, 0.5, 1, 1.5


def test_benchmark_means_follow_measured_ttft_growth_with_concurrency(llama_rows):
    # measured TTFT of Llama-3.1-70B fp8 TP 8, 1k/1k grows 2.6x from 4 to 64 users;
    # the steady state alone cannot show that, the benchmark's whole-run mean does
    from mist.replay.silicon_predict import predict_row

    rows, model, kernels = llama_rows
    lo, hi = rows.iloc[0], rows.iloc[-1]
    measured = hi.silicon_ttft_ms / lo.silicon_ttft_ms
    cache = {}
    growth = {a: predict_row(hi, model, kernels, None, cache, a).ttft_ms
              / predict_row(lo, model, kernels, None, cache, a).ttft_ms for a in ("staggered", "benchmark")}
    assert growth["staggered"] < 0.6 * measured
    assert growth["benchmark"] == pytest.approx(measured, rel=0.2)


@pytest.fixture(scope="module")
def two_models_csv(shared, tmp_path_factory):
    """Llama-3.1-70B and Qwen3-32B rows at TP 8, 1k/1k, up to 8 users (2 rows each)."""
    rows = pd.read_csv(shared.silicon_csv)
    rows = rows[(rows.system == "h100_sxm") & (rows.backend == "vllm") & (rows.tp_size == 8) & (rows.isl == 1024)
                & (rows.osl == 1024) & (rows.batch_size <= 8)]
    rows = rows[rows.model_path.isin(["meta-llama/Llama-3.1-70B", "Qwen/Qwen3-32B"])]
    csv = tmp_path_factory.mktemp("silicon") / "rows.csv"
    rows.to_csv(csv, index=False)
    return csv


def test_predict_deployments_fits_an_overhead_and_reports_it(shared, two_models_csv, tmp_path):
    from mist.replay.silicon import SiliconSettings, predict_deployments, save_fits

    base = SiliconSettings(silicon=two_models_csv, kernels=shared.h100_kernels, models=shared.models,
                           system="h100_sxm", kernel_cv=False)
    fitted = tmp_path / "overhead.yaml"
    result = predict_deployments(replace(base, fit_step_overhead=fitted, fit_model="meta-llama/Llama-3.1-70B"))
    assert not fitted.exists()  # the library writes nothing: the command saves the fit with its other outputs
    assert save_fits(result) == [fitted]
    overhead = StepOverhead.load(fitted)
    assert overhead.fitted_on["model"] == "meta-llama/Llama-3.1-70B" and overhead.fitted_on["rows"] == 2
    assert result.step_overhead.fitted_on == overhead.fitted_on
    s = result.summary
    assert s["step_overhead"]["per_step_ms"] == pytest.approx(overhead.per_step_s * 1e3)
    assert s["step_overhead"]["source"] == f"fitted here, written to {fitted}"
    assert set(s["by_model"]) == {"meta-llama/Llama-3.1-70B", "Qwen/Qwen3-32B"}
    assert s["settings"]["requests_per_user"] == 10 and s["kernel_cv"] == {}
    # the fit brings the training rows' TPOT closer to the measurement than kernels alone
    bare = predict_deployments(replace(base, no_step_overhead=True)).summary
    assert bare["step_overhead"] is None
    before = bare["by_model"]["meta-llama/Llama-3.1-70B"]["tpot"]["mape"]
    assert s["by_model"]["meta-llama/Llama-3.1-70B"]["tpot"]["mape"] <= before


def test_silicon_command_refuses_fitting_flags_that_do_not_go_together(shared, two_models_csv, tmp_path):
    from mist.validate.cli import main

    base = ["silicon", "--silicon", str(two_models_csv), "--kernels", str(shared.h100_kernels), "--models",
            str(shared.models), "--system", "h100_sxm"]
    fitted = tmp_path / "overhead.yaml"
    # the two fitting flags go together; a model with no rows is refused
    assert main(base + ["--fit-model", "meta-llama/Llama-3.1-70B"]) == 2
    assert main(base + ["--fit-step-overhead", str(fitted), "--fit-model", "nobody/none"]) == 2
    assert main(base + ["--fit-step-overhead", str(fitted), "--fit-model", "meta-llama/Llama-3.1-70B",
                        "--no-step-overhead"]) == 2
    assert not fitted.exists()


def test_datasheet_of_an_uncatalogued_system_comes_from_the_users_catalog(tmp_path):
    import yaml

    from mist.calibrate.kernels import system_datasheet

    kernels = tmp_path / "x1_sxm"  # a kernel folder with no x1_sxm.yaml beside it
    kernels.mkdir()
    with pytest.raises(TraceError, match="--hardware FILE"):
        system_datasheet(kernels, "x1_sxm")
    user = tmp_path / "mine.yaml"
    user.write_text(yaml.safe_dump({"devices": {"X1_SXM": {
        "kind": "gpu", "vendor": "Example", "peak_tflops": {"bf16": 500, "fp8": 1000}, "memory_gb": 96,
        "memory_bw_gbps": 4000, "interconnect": {"name": "link", "bw_gbps_per_direction": 400},
        "source": "made up for this test"}}}))
    sheet, source = system_datasheet(kernels, "x1_sxm", [user])
    assert source == "hardware catalog: X1_SXM"
    assert (sheet.mem_bw_bytes_s, sheet.peak_flops["bfloat16"], sheet.link_bw_bytes_s) == (4000e9, 500e12, 400e9)


def test_client_lengths_are_drawn_within_the_range_and_reproducibly():
    from mist.replay.clients import client_lengths

    a = client_lengths(1000, 200, 500, 0.8, seed=3)
    assert a.shape == (500, 2)
    assert a[:, 0].min() >= 800 and a[:, 0].max() <= 1000 and a[:, 1].min() >= 160 and a[:, 1].max() <= 200
    assert len(set(a[:, 0])) > 100  # they do vary
    assert (client_lengths(1000, 200, 500, 0.8, seed=3) == a).all()
    assert (client_lengths(1000, 200, 500, 0.8, seed=4) != a).any()
    fixed = client_lengths(1000, 200, 7, 1.0, seed=0)
    assert (fixed[:, 0] == 1000).all() and (fixed[:, 1] == 200).all()
    for bad in (0.0, -0.5, 1.5):
        with pytest.raises(ValueError):
            client_lengths(1000, 200, 5, bad, seed=0)


def test_a_client_of_fixed_lengths_is_the_lock_step_loop_counted_whole():
    # with identical requests the semaphore's next request goes to the user that just
    # finished, so the client is the burst-started closed loop averaged over every request
    from mist.replay.clients import client_lengths, run_benchmark_client

    cfg = EngineConfig(max_num_seqs=16, max_num_batched_tokens=600, async_scheduling=False)
    cost = _flat_cost(0.01)
    client = run_benchmark_client(cfg, cost, 6, client_lengths(256, 5, 30, 1.0, seed=0))
    _, loop = run_closed_loop(cfg, cost, users=6, isl=256, osl=5, requests_per_user=5, exclude_warmup=False)
    assert client.requests == client.measured == 30
    assert client.ttft_s == pytest.approx(loop.ttft_s)
    assert client.tpot_s == pytest.approx(loop.tpot_s)
    assert client.e2e_s == pytest.approx(loop.e2e_s)


def test_a_client_slot_freed_by_a_short_request_sends_the_next_one_hand_worked():
    # two slots, constant 10 ms steps, room for every prompt in one step: requests 0
    # and 1 start at 0 and get their first token at 10 ms; request 1 (2 tokens) ends at
    # 20 ms and its slot sends request 2 then, whose first token comes one or two steps
    # later (as the step starting at 20 ms does or does not take it); request 0 (6
    # tokens) ends at 60 ms, the end of the run. Had request 2 waited for request 0's
    # slot, the run would last 80 ms.
    import numpy as np

    from mist.replay.clients import run_benchmark_client

    cfg = EngineConfig(max_num_seqs=16, max_num_batched_tokens=600, async_scheduling=False)
    s = run_benchmark_client(cfg, _flat_cost(0.01), 2, np.array([[100, 6], [100, 2], [100, 2]]))
    assert s.requests == s.measured == 3
    assert s.throughput_tok_s == pytest.approx((6 + 2 + 2) / 0.06)
    assert s.tpot_s == pytest.approx(0.01)
    assert (0.01 + 0.01 + 0.01) / 3 - 1e-9 <= s.ttft_s <= (0.01 + 0.01 + 0.02) / 3 + 1e-9


def test_varied_lengths_break_the_lock_step(llama_rows):
    # identical requests started together stay in lock-step and queue their prompts
    # behind each other every wave; drawn lengths (InferenceX's 0.8) scatter the users,
    # so their mean TTFT falls well below the lock-step one
    from mist.replay.silicon_predict import predict_row

    rows, model, kernels = llama_rows
    row, cache = rows.iloc[-1], {}
    fixed = predict_row(row, model, kernels, None, cache, "client")
    varied = predict_row(row, model, kernels, None, cache, "client", length_ratio=0.8)
    assert fixed.requests == varied.requests == 10 * int(row.batch_size)
    assert varied.ttft_ms < 0.6 * fixed.ttft_ms
    assert varied.ttft_ms == pytest.approx(row.silicon_ttft_ms, rel=0.25)
    # the deployment's lone prefill: below every mean, and about 8x longer for an 8x
    # longer prompt (compute-bound GEMMs, attention growing faster)
    bench = predict_row(row, model, kernels, None, cache, "benchmark")
    assert 0 < bench.lone_ttft_ms < min(bench.ttft_ms, varied.ttft_ms)
    longer = row.copy()
    longer["isl"] = 8 * int(row.isl)
    ratio = predict_row(longer, model, kernels, 1, cache, "benchmark").lone_ttft_ms / bench.lone_ttft_ms
    assert 5 < ratio < 12


def test_engine_limits_are_vllms_defaults_unless_given():
    from mist.calibrate.kernels import Datasheet
    from mist.replay.silicon_predict import engine_limits

    h100 = Datasheet(name="h100_sxm", mem_bw_bytes_s=3.35e12, peak_flops={"bfloat16": 989e12},
                     link_bw_bytes_s=450e9, memory_bytes=80 * 2**30)
    a100 = Datasheet(name="a100_sxm", mem_bw_bytes_s=2.0e12, peak_flops={"bfloat16": 312e12},
                     link_bw_bytes_s=300e9, memory_bytes=80 * 2**30)
    assert engine_limits(h100) == (8192, 1024)
    assert engine_limits(a100) == (2048, 256)
    assert engine_limits(h100, 2532, 8) == (2532, 8)
    assert engine_limits(a100, max_num_seqs=64) == (2048, 64)


def _check_littles_law(llama_rows, users: int, caps: tuple) -> None:
    # U users, C slots, always full in the steady state: U - C users wait, and by
    # Little's law each waits (U - C) / C times a request's time in its slot (its
    # prefill, about the uncapped TTFT, plus OSL - 1 decode steps at the capped batch)
    from mist.replay.silicon_predict import predict_row

    rows, model, kernels = llama_rows
    row, cache = rows[rows.batch_size == users].iloc[0], {}
    osl = int(row.osl)
    free = predict_row(row, model, kernels, 12, cache, "staggered")
    for cap in caps:
        capped = predict_row(row, model, kernels, 12, cache, "staggered", max_num_seqs=cap)
        in_slot = free.ttft_ms + (osl - 1) * capped.tpot_ms
        assert capped.ttft_ms - free.ttft_ms == pytest.approx((users - cap) / cap * in_slot, rel=0.1)
        assert capped.tpot_ms < free.tpot_ms  # fewer sequences decode together


def test_a_given_sequence_cap_queues_the_users_beyond_it_littles_law(llama_rows):
    _check_littles_law(llama_rows, 16, (8,))


@pytest.mark.slow  # ~25 s: the test above checks the same law on 16 users
def test_a_given_sequence_cap_queues_64_users_beyond_it_littles_law(llama_rows):
    _check_littles_law(llama_rows, 64, (32, 16))


def test_a_given_token_budget_chunks_the_prompt(llama_rows):
    # a 1024-token prompt alone: one step under vLLM's 8192 budget, four under 256
    from mist.replay.silicon_predict import predict_row

    rows, model, kernels = llama_rows
    row, cache = rows.iloc[0], {}
    whole = predict_row(row, model, kernels, None, cache, "staggered")
    chunked = predict_row(row, model, kernels, None, cache, "staggered", max_num_batched_tokens=256)
    assert chunked.lone_ttft_ms > whole.lone_ttft_ms
    # every chunk re-reads the weights: more than two decode steps' worth added
    decode_step = whole.tpot_ms
    assert chunked.lone_ttft_ms - whole.lone_ttft_ms > 2 * decode_step
