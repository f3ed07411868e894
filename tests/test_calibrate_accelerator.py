"""Calibrating a new accelerator from K benchmark rows: physics terms, fits, the job, the command.

Leave-one-accelerator-out on synthetic rows (latencies the model itself generates) runs
with :data:`FEW_STARTS` optimizer starts (fixture ``few_starts``): the rows have one
exact optimum, which a handful of starts finds as surely as the command's 20, at a fifth
of the time. The real-table runs keep the full starts and are marked ``slow``; their
properties are checked fast on synthetic rows (accuracy, the evidence-chosen prior) and
on the real table without fitting (which rows are resolved, skipped and drawn).
"""

from __future__ import annotations

import functools
import json

import numpy as np
import pandas as pd
import pytest

from mist.calibrate import accelerator
from mist.calibrate import batch_model as bm
from mist.calibrate.accelerator import (
    AcceleratorSettings,
    calibrate_accelerator,
    leave_one_accelerator_out,
)
from mist.calibrate.batch_physics import (
    BELOW_BOUND,
    BEYOND_CONTEXT,
    NO_DATASHEET,
    NO_MODEL,
    TERMS,
    batch_terms,
)
from mist.calibrate.bench_rows import NoDatasheet, resolve, target_mask
from mist.calibrate.sampling import SAMPLINGS as DRAWS
from mist.calibrate.sampling import draw_points
from mist.profiles.hardware import load_catalog
from mist.traces.io import atomic_write_json
from mist.traces.readers.llm_inference_bench import read_llm_inference_bench
from mist.validate.cli import main
from mist.validate.cli.calibrate_accelerator import SAMPLINGS

LLAMA2 = "meta-llama/Llama-2-7b-hf"
THETA = bm.DEFAULT + np.array([0.0, 0.5, -0.3, 0.4, 0.2, 0.0, 0.6, -0.5, 0.3, 0.1, 0.2])


def _table(hardware="Nvidia H100 GPU", framework="vLLM", models=(LLAMA2, "meta-llama/Meta-Llama-3-8B"),
           devices=(1, 2, 4), lengths=(128, 256, 512, 1024, 2048), batches=(1, 16, 32, 64)):
    rows = [dict(hardware=hardware, num_devices=n, framework=framework, model=m, input_tokens=i,
                 output_tokens=i, batch_size=b, parallelism="", latency_s=1e6)
            for m in models for n in devices for i in lengths for b in batches]
    t = pd.DataFrame(rows)
    t.insert(0, "line", np.arange(len(t)) + 2)
    return t


def _terms(table):
    hw, mdl, _ = resolve(table)
    terms, skip = batch_terms(table, hw, mdl)
    return terms[list(TERMS)].to_numpy(float), skip


def _synthetic(table, theta=THETA, terms=None):
    """The table with latencies the model itself generates from ``theta``."""
    terms = _terms(table)[0] if terms is None else terms
    return table.assign(latency_s=bm.predict(theta, terms))


@pytest.fixture(scope="module")
def grid():
    """:func:`_table` and its physical terms (resolved once for the module)."""
    table = _table()
    return table, _terms(table)[0]


FEW_STARTS = 4  # optimizer starts of the synthetic leave-one-out runs (the command: bm.STARTS)


def _few_starts(mp: pytest.MonkeyPatch) -> None:
    mp.setattr(accelerator, "calibrate_joint", functools.partial(bm.calibrate_joint, starts=FEW_STARTS))
    mp.setattr(accelerator, "calibrate", functools.partial(bm.calibrate, starts=FEW_STARTS))


@pytest.fixture
def few_starts(monkeypatch):
    _few_starts(monkeypatch)


def test_terms_match_hand_computed_decode_of_one_sequence():
    t = _table(models=(LLAMA2,), devices=(1,), lengths=(128,), batches=(1,))
    terms, skip = batch_terms(t, *resolve(t)[:2])
    weights = 2 * 6_738_415_616  # Llama-2-7B fp16 bytes (param_count of its config)
    ctx_sum = 127 * 128 + 128 * 127 / 2  # contexts of the 127 decode steps after the prompt
    assert skip.iloc[0] == ""
    assert terms["weights"].iloc[0] == pytest.approx(127 * weights / 3.35e12, rel=1e-9)
    assert terms["kv"].iloc[0] == pytest.approx(2 * 32 * 4096 * 2 * ctx_sum / 3.35e12, rel=1e-9)
    assert terms["steps"].iloc[0] == 128 and terms["allreduce"].iloc[0] == 0


def test_tensor_parallel_divides_work_and_llama_cpp_runs_one_sequence():
    t = _table(models=(LLAMA2,), devices=(1, 4), lengths=(512,), batches=(16,))
    t = pd.concat([t, t.assign(framework="llama.cpp")], ignore_index=True)
    terms, _ = batch_terms(t, *resolve(t)[:2])
    vllm1, vllm4, cpp1, cpp4 = (terms.iloc[i] for i in range(4))
    assert vllm4["weights"] == pytest.approx(vllm1["weights"] / 4)
    assert vllm4["allreduce"] > 0 and vllm1["allreduce"] == 0
    assert cpp1["seq_steps"] == pytest.approx(cpp1["steps"] - 512 / 16)  # one sequence decoding
    assert cpp4["weights"] == pytest.approx(cpp1["weights"]) and cpp4["hops"] > 0  # layer split


def test_unmodellable_rows_are_skipped_with_a_reason():
    t = _table(models=(LLAMA2,), devices=(1,), lengths=(128,), batches=(1,))
    t = pd.concat([t, t.assign(hardware="TPU v9"), t.assign(model="acme/unknown-7b"),
                   t.assign(model="huggyllama/llama-7b", input_tokens=2048, output_tokens=2048),
                   t.assign(latency_s=1e-3)], ignore_index=True)
    _, skip = batch_terms(t, *resolve(t)[:2])
    assert list(skip) == ["", NO_DATASHEET, NO_MODEL, BEYOND_CONTEXT, BELOW_BOUND]


def test_group_fit_recovers_the_parameters_that_generated_the_rows(grid):
    table, terms = grid
    t = _synthetic(table, terms=terms)
    theta, sd = bm.fit_group(terms, t["latency_s"].to_numpy())
    pred = bm.predict(theta, terms)
    assert np.max(np.abs(pred / t["latency_s"] - 1)) < 0.01
    for name in ("memory_ineff", "kv_ineff", "allreduce_10us"):  # what these rows pin down
        i = bm.NAMES.index(name)
        assert sd[i] < 0.2 and theta[i] == pytest.approx(THETA[i], abs=0.05)


def test_calibration_from_ten_points_predicts_the_rest_of_a_synthetic_accelerator(grid):
    table, terms = grid
    t = _synthetic(table, terms=terms)
    y = t["latency_s"].to_numpy()
    pts, _ = draw_points(t["framework"].to_numpy(), 10, seed=3)
    assert len(pts) == 10
    rest = np.setdiff1d(np.arange(len(t)), pts)
    theta = bm.calibrate(terms[pts], y[pts], bm.DEFAULT, np.full(len(bm.NAMES), 1.0), starts=5)
    ape = np.abs(bm.predict(theta, terms[rest]) / y[rest] - 1)
    assert np.median(ape) < 0.05


def test_prior_scale_is_the_one_the_k_rows_give_most_evidence_for(grid):
    # prior: every accelerator like DEFAULT, spread 0.3 in log units
    ones = np.ones(len(bm.NAMES))
    prior = bm.Prior({"vllm": bm.DEFAULT.copy()}, bm.DEFAULT.copy(), 0.3 * ones, 0.1 * ones, 0.1 * ones)
    table, terms = grid
    pts, _ = draw_points(table["framework"].to_numpy(), 10, seed=1)
    rest = np.setdiff1d(np.arange(len(table)), pts)
    group = np.zeros(len(pts), int)

    def rest_median_ape(theta, scales):
        y = bm.predict(theta, terms)
        fit, scale = bm.calibrate_joint(terms[pts], y[pts], group, prior, ["vLLM"], starts=5, scales=scales)
        return np.median(np.abs(bm.predict(fit["vLLM"], terms[rest]) / y[rest] - 1)), scale

    # a device like the training ones: its rows ask for no wider prior
    near = bm.DEFAULT + 0.1 * np.sign(THETA - bm.DEFAULT)
    assert rest_median_ape(near, bm.PRIOR_SCALES)[1] == 1.0
    # one unlike them (a 17 s run constant, all-reduces 30x slower: ~19 and ~11 prior sds
    # away): the evidence widens the prior, and the other rows are predicted far better
    far = bm.DEFAULT.copy()
    far[bm.NAMES.index("const_1dev_s")] = np.log(17.0)
    far[bm.NAMES.index("allreduce_10us")] += np.log(30.0)
    ape_narrow, _ = rest_median_ape(far, (1.0,))
    ape, scale = rest_median_ape(far, bm.PRIOR_SCALES)
    assert scale > 1.0 and ape < 0.05 < ape_narrow


def test_prior_of_identical_accelerators_is_their_parameters():
    t = _synthetic(_table(devices=(1, 2)))
    terms, _ = _terms(t)
    fit = bm.fit_group(terms, t["latency_s"].to_numpy())
    prior = bm.learn_prior({("A", "vLLM"): fit, ("B", "vLLM"): fit, ("A", "TRT"): fit})
    mean, sd = prior.mean_and_sd("vllm")
    ident = fit[1] < bm.IDENTIFIED_SD
    assert np.allclose(mean[ident], fit[0][ident], atol=1e-6)
    assert np.all(sd >= bm.PRIOR_FLOOR)
    assert np.all(prior.mean_and_sd("sambaflow")[1] >= sd)  # unseen framework: no narrower


def test_draw_is_k_rows_in_all_and_seeded():
    fws = np.array(["vLLM"] * 30 + ["llama.cpp"] * 25 + ["TRT"] * 5)
    for sampling in ("stratified", "random"):
        a, too_few = draw_points(fws, 10, seed=7, sampling=sampling)
        assert len(a) == 10 and len(set(a)) == 10 and too_few == []
        assert np.array_equal(a, draw_points(fws, 10, seed=7, sampling=sampling)[0])
        assert not np.array_equal(a, draw_points(fws, 10, seed=8, sampling=sampling)[0])
        assert np.array_equal(draw_points(fws[:8], 10, seed=7, sampling=sampling)[0], np.arange(8))
    each, too_few = draw_points(fws, 10, seed=7, sampling="per-framework")  # opt-in
    assert too_few == ["TRT"] and (fws[each] == "vLLM").sum() == 10 and (fws[each] == "llama.cpp").sum() == 10
    with pytest.raises(ValueError, match="stratified"):
        draw_points(fws, 10, seed=7, sampling="total")
    assert SAMPLINGS == DRAWS  # the command's choices are the draw's


def test_stratified_draw_gives_every_framework_two_rows_then_shares_in_proportion():
    fws = np.array(["vLLM"] * 60 + ["llama.cpp"] * 30 + ["TRT"] * 10)
    devices = np.tile([1, 4], 50)  # half of every framework on one device
    for seed in range(20):
        pts, _ = draw_points(fws, 10, seed, devices=devices)
        counts = {fw: int((fws[pts] == fw).sum()) for fw in ("vLLM", "llama.cpp", "TRT")}
        # 2 each, then the other 4 as 4 x (58, 28, 8) / 94 = 2.5, 1.2, 0.3 -> 2 or 3, 1 or 2, 0 or 1
        assert counts["vLLM"] in (4, 5) and counts["llama.cpp"] in (3, 4) and counts["TRT"] in (2, 3)
        assert sum(counts.values()) == 10
        for fw in ("vLLM", "llama.cpp", "TRT"):  # a one-device and a multi-device row each
            assert set(devices[pts[fws[pts] == fw]]) == {1, 4}
    few, _ = draw_points(fws, 2, seed=0)  # K below 2 per framework: in proportion only
    assert len(few) == 2 and set(fws[few]) <= {"vLLM", "llama.cpp"}


def _two_accelerators():
    base = _table(lengths=(128, 512, 2048), batches=(1, 16, 64))
    other = _synthetic(base.assign(hardware="Nvidia A100 GPU"), THETA - 0.2)
    target = _synthetic(base, THETA)
    return pd.concat([other, target], ignore_index=True)


@pytest.fixture(scope="module")
def h100():
    """``(table, report, rows)``: the synthetic H100 calibrated from 10 rows (seed 1) with
    an A100 as the only other accelerator."""
    table = _two_accelerators()
    with pytest.MonkeyPatch.context() as mp:
        _few_starts(mp)
        report, rows = leave_one_accelerator_out(table, "Nvidia H100 GPU", k=10, seed=1)
    return table, report, rows


def test_leave_one_out_report_and_rows(h100):
    table, report, rows = h100
    assert rows["role"].value_counts().to_dict() == {"predicted": len(rows) - 10, "point": 10}
    assert report["rows_predicted"] == len(rows) - 10 and report["median_ape"] < 5
    assert report["training"]["accelerators"] == ["Nvidia A100 GPU"]
    assert report["device"] == "H100_SXM" and report["skipped"] == {}
    # the target by its catalogue name is the same rows; an unknown one lists the table's
    device = resolve(table)[2]
    assert np.array_equal(target_mask(table, device, "h100_sxm"), target_mask(table, device, "Nvidia H100 GPU"))
    with pytest.raises(ValueError, match="Nvidia A100 GPU"):
        leave_one_accelerator_out(table, "TPU v9", k=10)


def test_default_fits_exactly_k_target_rows_of_all_frameworks_and_never_predicts_them(few_starts):
    table = _two_accelerators()
    table = pd.concat([table, table.assign(framework="TensorRT-LLM")], ignore_index=True)
    report, rows = leave_one_accelerator_out(table, "Nvidia H100 GPU", k=10, seed=4)
    points = rows[rows["role"] == "point"]
    assert report["sampling"] == "stratified" and report["points"] == report["points_used"] == len(points) == 10
    # 5 per framework (strata are frameworks; the device split is only reported)
    by_fw: dict = {}
    for key, n in report["strata"].items():
        by_fw[key.split("/")[0]] = by_fw.get(key.split("/")[0], 0) + n
    assert by_fw == {"TensorRT-LLM": 5, "vLLM": 5}
    assert report["rows_predicted"] == len(rows) - 10 == (rows["role"] == "predicted").sum()
    assert rows.loc[points.index, "predicted_s"].isna().all()
    assert set(report["frameworks"]) == {"vLLM", "TensorRT-LLM"} and report["median_ape"] < 10
    each, _ = leave_one_accelerator_out(table, "Nvidia H100 GPU", k=10, seed=4, sampling="per-framework")
    assert each["sampling"] == "per-framework" and each["points_used"] == 20 and each["points"] == 10


H100_AS_TPU = """\
devices:
  TPU_V9:
    full_name: TPU v9
    vendor: Example
    kind: asic
    peak_tflops: {bf16: 989.4, fp16: 989.4, fp8: 1978.9}
    memory_gib: 80
    memory_bw_gbps: 3350
    interconnect: {name: NVLink 4 (18 links), bw_gbps_per_direction: 450}
    source: the H100 SXM5 80GB entry's figures, copied for this test
"""


def _bench_csv(table: pd.DataFrame, path):
    """``table`` written in the layout of LLM-Inference-Bench's ``All_results.csv``."""
    table.assign(**{"Input Output Length": table["input_tokens"]}).rename(columns={
        "hardware": "Hardware", "num_devices": "Num of Hardware", "framework": "Framework",
        "model": "Model", "batch_size": "Batch Size", "latency_s": "Latency"}).assign(
        Throughput=1.0)[["Hardware", "Num of Hardware", "Framework", "Model", "Input Output Length",
                         "Batch Size", "Latency", "Throughput"]].to_csv(path, index=False)
    return path


def test_a_target_without_datasheet_is_refused_with_its_name_until_one_is_given(h100, tmp_path, few_starts):
    table, h100_report, h100_rows = h100
    unknown = table.replace({"hardware": {"Nvidia H100 GPU": "TPU v9"}})
    with pytest.raises(NoDatasheet, match="TPU v9"):
        leave_one_accelerator_out(unknown, "TPU v9", k=10)
    # a user's catalog entry with the H100's figures makes "TPU v9" the H100: same result
    user = tmp_path / "mine.yaml"
    user.write_text(H100_AS_TPU)
    assert set(load_catalog()) < set(load_catalog(extra=[user]))
    result = calibrate_accelerator(AcceleratorSettings(bench=(_bench_csv(unknown, tmp_path / "tpu.csv"),),
                                                       target="TPU v9", points=10, seed=1, hardware=(user,)))
    report = result.report
    assert report["device"] == "TPU_V9" and report["skipped"] == {} and report["rows_predicted"] > 0
    for key in ("rows_predicted", "mape", "median_ape", "p90_ape"):
        assert report[key] == h100_report[key], key
    assert np.array_equal(result.rows["predicted_s"].to_numpy(), h100_rows["predicted_s"].to_numpy(), equal_nan=True)


def test_command_writes_the_job_report_byte_stable(h100, tmp_path, few_starts):
    table, report, _ = h100
    csv = _bench_csv(table, tmp_path / "bench.csv")
    out = tmp_path / "r.json"
    argv = ["calibrate-accelerator", "--bench", str(csv), "--target", "Nvidia H100 GPU",
            "--points", "10", "--seed", "1", "--json", str(out)]
    assert main(argv) == 0
    got = json.loads(out.read_text())
    assert {"target", "points", "rows_predicted", "mape", "median_ape", "skipped"} <= set(got)
    assert got["points"] == got["points_used"] == 10 and got["sampling"] == "stratified"
    assert got["rows_predicted"] == 44 and got["skipped"] == {}
    # same seed, same file: the library's report (from the table in memory) + the CSV path
    atomic_write_json(tmp_path / "expected.json", {**report, "bench": [str(csv)]})
    assert out.read_bytes() == (tmp_path / "expected.json").read_bytes()


def test_command_passes_its_options_to_the_job_and_refuses_bad_targets(h100, tmp_path, monkeypatch):
    table, _, _ = h100
    csv = _bench_csv(table, tmp_path / "bench.csv")
    argv = ["calibrate-accelerator", "--bench", str(csv), "--target", "nvidia h100 gpu",
            "--points", "10", "--seed", "2", "--json", str(tmp_path / "r.json")]
    # the refusals come before any fit: unknown target, target without a datasheet
    assert main([*argv[:-2], "--json", str(tmp_path / "x.json"), "--target", "TPU v9"]) == 2
    tpu = _bench_csv(table.replace({"hardware": {"Nvidia H100 GPU": "TPU v9"}}), tmp_path / "tpu.csv")
    cmd = ["calibrate-accelerator", "--bench", str(tpu), "--target", "TPU v9", "--points", "10",
           "--json", str(tmp_path / "tpu.json")]
    assert main(cmd) == 2 and not (tmp_path / "tpu.json").exists()
    assert main(["calibrate-accelerator", "--bench", str(csv), str(csv), *argv[3:]]) == 2  # a file twice
    seen = []

    def job(settings):
        seen.append(settings)
        return accelerator.AcceleratorResult({"target": settings.target, **h100[1]}, h100[2])

    monkeypatch.setattr(accelerator, "calibrate_accelerator", job)
    assert main([*argv, "--sampling", "random"]) == 0 and main([*argv, "--points-per-framework"]) == 0
    assert main([*cmd, "--hardware", str(tmp_path / "mine.yaml"), "--rows", str(tmp_path / "rows.csv")]) == 0
    assert [s.sampling for s in seen] == ["random", "per-framework", "stratified"]
    assert seen[0] == AcceleratorSettings(bench=(csv,), target="nvidia h100 gpu", points=10, seed=2,
                                          sampling="random")
    assert seen[2].hardware == (tmp_path / "mine.yaml",) and len(pd.read_csv(tmp_path / "rows.csv")) == len(h100[2])


def test_real_rows_are_resolved_skipped_and_drawn_as_the_command_does(shared):
    # what the slow real-table run below rests on, without fitting: GH200's rows are
    # found by name, 20 of them skipped (2048 + 2048 tokens on 2048-token models), and 10
    # of the rest drawn across its frameworks
    table = read_llm_inference_bench(shared.llm_bench_csv).to_pandas()
    hw, mdl, device = resolve(table)
    _, skip = batch_terms(table, hw, mdl)
    mask = target_mask(table, device, "Nvidia GH200 GPU")
    assert mask.sum() == 340 and set(device[mask]) == {"GH200"}
    assert skip[mask].value_counts().to_dict() == {"": 320, BEYOND_CONTEXT: 20}
    ok = np.flatnonzero(mask & (skip.to_numpy() == ""))
    frameworks = table["framework"].to_numpy()[ok]
    pts, too_few = draw_points(frameworks, 10, seed=0)
    assert len(pts) == 10 and too_few == [] and set(frameworks[pts]) == set(frameworks)


@pytest.mark.slow
def test_real_leave_one_out_from_k_rows_in_all_meets_the_vllm_bar(shared):
    table = read_llm_inference_bench(shared.llm_bench_csv).to_pandas()
    report, rows = leave_one_accelerator_out(table, "Nvidia GH200 GPU", k=10, seed=0)
    vllm = report["frameworks"]["vLLM"]
    assert report["points"] == report["points_used"] == (rows["role"] == "point").sum() == 10
    assert vllm["rows_predicted"] > 170 and vllm["median_ape"] <= 15
    assert report["prior_scale"] == 1.0  # a device like the training ones keeps their spread
    assert report["rows_predicted"] == len(rows) - 10 - 20
    assert report["skipped"] == {BEYOND_CONTEXT: 20}  # 2048 + 2048 tokens on 2048-token models
    points = rows.loc[rows["role"] == "point", "line"]
    assert not set(points) & set(rows.loc[rows["role"] == "predicted", "line"])


@pytest.mark.slow
def test_real_unlike_accelerator_gets_a_wider_prior_and_better_predictions(shared, tmp_path, monkeypatch):
    # Intel PVC's vLLM stack (a ~17 s run constant on one device) measured with vLLM only:
    # its 10 rows ask for a wider prior, which predicts its other rows better than the
    # training accelerators' spread does (fast, synthetic: test_prior_scale_is_the_one_...)
    raw = pd.read_csv(shared.llm_bench_csv)
    raw = raw[~((raw["Hardware"] == "Intel PVC GPU") & (raw["Framework"] != "vLLM"))]
    raw.to_csv(tmp_path / "pvc.csv", index=False)
    table = read_llm_inference_bench(tmp_path / "pvc.csv").to_pandas()
    wide, _ = leave_one_accelerator_out(table, "Intel PVC GPU", k=10, seed=0)
    monkeypatch.setattr(accelerator, "calibrate_joint", functools.partial(bm.calibrate_joint, scales=(1.0,)))
    narrow, _ = leave_one_accelerator_out(table, "Intel PVC GPU", k=10, seed=0)
    assert wide["prior_scale"] > 1.0 and narrow["prior_scale"] == 1.0
    assert wide["median_ape"] < 0.6 * narrow["median_ape"]
