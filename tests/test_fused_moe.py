"""The fused-MoE rate: a floor on the experts' multiplications, fitted on published kernel times."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
import yaml

from mist.calibrate import fused_moe
from mist.calibrate.kernel_profile import moe_layer
from mist.calibrate.kernels import Datasheet, KernelSet
from mist.traces.errors import TraceError

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def toy():
    # no GEMM measured: GEMMs are the datasheet roofline at the default efficiency
    sheet = Datasheet(name="toy", mem_bw_bytes_s=1e12, peak_flops={"bfloat16": 1e15, "fp8": 2e15})
    prof = pa.table({"operator": ["gemm"], "dtype": ["bfloat16"], "m": [64], "n": [64], "k": [64],
                     "latency_s": [1e-6]})
    return KernelSet(prof, sheet)


SERIES = fused_moe.Series(label="toy fp8", dtype="fp8", tp=1, hidden_size=1024, moe_intermediate_size=2048,
                          num_experts=8, top_k=2, tokens=(1, 4, 64, 512, 2048, 8192),
                          time_us=(1.0,) * 6)


def test_the_rate_slows_prefill_only_and_is_bounded_by_its_flops(toy):
    model = SERIES.model()
    flops_per_pair = 2 * (2 * 2048 * 1024 + 1024 * 2048)  # gate/up then down

    def layer(tokens, eff):
        return moe_layer(toy, model, 1, 1, "fp8", np.array([float(tokens)]), np.array([8.0]), eff)[0]

    # one token: streaming the experts' weights dominates; the rate changes nothing
    assert layer(1, {"fp8": 0.1}) == layer(1, None)
    # 8192 tokens: at least the pairs' FLOPs at 10 % of the fp8 peak, and no more than that on top
    floor = 8192 * 2 * flops_per_pair / (0.1 * 2e15)
    slow, fast = layer(8192, {"fp8": 0.1}), layer(8192, None)
    assert floor <= slow <= fast + floor
    assert slow > 1.5 * fast
    assert layer(8192, {"fp8": 0.05}) > slow  # a slower kernel, a longer layer
    assert layer(8192, {"bfloat16": 0.1}) == fast  # a rate for another dtype does not apply


def test_fit_recovers_a_planted_efficiency(toy):
    planted = {"fp8": 0.05}
    truth = replace(SERIES, time_us=tuple(SERIES.composed_us(toy, planted).tolist()))
    fit = fused_moe.fit_efficiency(toy, "toy", "made up here", [truth])
    assert fit.efficiency == planted
    assert fit.fitted_on["by_dtype"]["fp8"]["mape_after"] == pytest.approx(0.0, abs=1e-9)
    assert fit.fitted_on["by_dtype"]["fp8"]["mape_before"] > 5


def test_efficiency_file_round_trip_and_system_match(tmp_path):
    eff = fused_moe.FusedMoEEfficiency("h100_sxm", {"fp8": 0.09, "bfloat16": 0.52}, {"source": "x"})
    path = tmp_path / "eff.yaml"
    eff.save(path)
    assert fused_moe.FusedMoEEfficiency.load(path) == eff
    assert fused_moe.for_system(path, "h100_sxm") == eff
    assert fused_moe.for_system(path, "b200_sxm") is None  # one device's kernel says nothing of another's
    path.write_text(yaml.safe_dump({"system": "h100_sxm", "efficiency": {"fp8": 1.5}}))
    with pytest.raises(TraceError, match="efficiency of 'fp8' must be in"):
        fused_moe.FusedMoEEfficiency.load(path)


@pytest.mark.parametrize("change, reason", [
    (lambda d: d.pop("system"), "system must be a non-empty string"),
    (lambda d: d["series"][0].pop("top_k"), r"series\[0\]: needs"),
    (lambda d: d["series"][0]["time_us"].pop(), "same, non-zero length"),
    (lambda d: d["series"][0]["time_us"].__setitem__(0, -3.0), r"series\[0\].time_us: must be above 0"),
    (lambda d: d["series"][0].__setitem__("tp", 5), "not divisible by tp"),
    (lambda d: d["series"][0].__setitem__("colour", "red"), "unknown keys colour"),
    (lambda d: d["series"][-1].__setitem__("source", ""), r"source must be a non-empty string"),
])
def test_measurement_reader_rejects_bad_input(tmp_path, change, reason):
    doc = yaml.safe_load((REPO / "profiles" / "fused_moe_measurements.yaml").read_text())
    change(doc)
    path = tmp_path / "m.yaml"
    path.write_text(yaml.safe_dump(doc))
    with pytest.raises(TraceError, match=reason) as err:
        fused_moe.read_measurements(path)
    assert str(path) in str(err.value)


def test_shipped_efficiency_is_the_fit_of_the_shipped_measurements(shared):
    # profiles/fused_moe_efficiency.yaml was written by `mist silicon --fit-moe-efficiency`
    # (README); refitting on the same published times and H100 tables gives the same rates
    from mist.calibrate.kernels import system_datasheet
    from mist.replay.silicon_kernels import KernelVersions

    sheet, _ = system_datasheet(shared.h100_kernels, "h100_sxm")
    ks = KernelVersions(shared.h100_kernels, sheet, hardware="h100_sxm", framework="vllm").for_version(None)
    system, source, series = fused_moe.read_measurements(REPO / "profiles" / "fused_moe_measurements.yaml")
    fit = fused_moe.fit_efficiency(ks, system, source, series)
    shipped = fused_moe.FusedMoEEfficiency.load(fused_moe.DEFAULT_EFFICIENCY)
    assert shipped.system == system == "h100_sxm"
    assert shipped.rates() == fit.rates() and shipped.tokens_per_expert_half > 0
    # the published kernel times are matched better with the rate than without, per dtype
    for dtype, part in fit.fitted_on["by_dtype"].items():
        assert part["mape_after"] < part["mape_before"], dtype
    # and the published fp8 kernel at 4096 tokens is over 2.5x the dense-GEMM composition
    qwen = next(s for s in series if s.dtype == "fp8")
    assert qwen.time_us[-1] / qwen.composed_us(ks, None)[-1] > 2.5


def test_rate_carries_to_devices_of_the_same_compute_capability(tmp_path):
    # vLLM picks its MoE kernels by compute capability: an H200 runs the H100's
    eff = fused_moe.FusedMoEEfficiency("h100_sxm", {"fp8": 0.09}, {}, sm_version=90)
    path = tmp_path / "eff.yaml"
    eff.save(path)
    assert fused_moe.for_system(path, "h200_sxm", 90) == eff
    assert fused_moe.for_system(path, "b200_sxm", 100) is None
    assert fused_moe.for_system(path, "b200_sxm", None) is None
    assert fused_moe.for_system(path, "h100_sxm", None) == eff
    unknown = fused_moe.FusedMoEEfficiency("h100_sxm", {"fp8": 0.09})  # no capability recorded
    unknown.save(path)
    assert fused_moe.for_system(path, "h200_sxm", 90) is None


def test_datasheet_reads_the_compute_capability():
    sheet = Datasheet.from_aiconfigurator("x", {"gpu": {"mem_bw": 1e12, "bfloat16_tc_flops": 1e15,
                                                        "sm_version": 90}})
    assert sheet.sm_version == 90
    assert Datasheet.from_aiconfigurator("x", {"gpu": {"mem_bw": 1e12}}).sm_version is None


def test_weight_only_4bit_experts_take_their_own_rate(toy):
    # the toy database measures no 4-bit GEMM: MXFP4 experts run weight-only (bf16
    # multiplications), priced by the w4a16 rate when there is one, else the bf16 rate
    from mist.calibrate.kernel_profile import W4A16, moe_rate_key

    assert moe_rate_key("mxfp4", toy) == W4A16 and moe_rate_key("int4", toy) == W4A16
    assert moe_rate_key("mxfp4", toy, {"bfloat16": 0.5}) == "bfloat16"  # a file fitted before w4a16
    assert moe_rate_key("fp8", toy) == "fp8" and moe_rate_key("bf16", toy) == "bfloat16"
    model = SERIES.model()
    flops = 8192 * 2 * 2 * (2 * 2048 * 1024 + 1024 * 2048)

    def layer(eff):
        return moe_layer(toy, model, 1, 1, "mxfp4", np.array([8192.0]), np.array([8.0]), eff)[0]

    fast, slow = layer(None), layer({W4A16: 0.1, "bfloat16": 0.9})
    assert flops / (0.1 * 1e15) <= slow <= fast + flops / (0.1 * 1e15)  # the bf16 peak, the w4a16 share
    assert layer({"bfloat16": 0.1}) == pytest.approx(slow)  # the fallback prices it the same
    assert layer({"fp8": 0.1}) == fast


def test_fit_keys_weight_only_series_by_their_kernel(toy):
    planted = {"w4a16": 0.2}
    series = replace(SERIES, label="toy int4", dtype="int4")
    truth = replace(series, time_us=tuple(series.composed_us(toy, planted).tolist()), source="https://x/1 (toy)")
    fit = fused_moe.fit_efficiency(toy, "toy", "made up here", [truth])
    assert fit.efficiency == planted
    assert fit.fitted_on["by_dtype"]["w4a16"]["sources"] == ["https://x/1"]


def test_few_tokens_per_expert_slow_the_rate_by_m_over_m_plus_half(toy):
    from mist.calibrate.kernel_profile import TOKENS_PER_EXPERT_HALF

    model = SERIES.model()
    flops = 8192 * 2 * 2 * (2 * 2048 * 1024 + 1024 * 2048)
    per_expert = 8192 * 2 / 8  # every one of the 8 experts hit

    def layer(eff):
        return moe_layer(toy, model, 1, 1, "fp8", np.array([8192.0]), np.array([8.0]), eff)[0]

    fast = layer(None)
    halved = layer({"fp8": 0.1, TOKENS_PER_EXPERT_HALF: per_expert})  # rate x m / (m + m) = half
    assert flops / (0.05 * 2e15) <= halved <= fast + flops / (0.05 * 2e15)
    assert halved == pytest.approx(layer({"fp8": 0.05}))
    assert layer({"fp8": 0.1, TOKENS_PER_EXPERT_HALF: 0}) == layer({"fp8": 0.1})


def test_fit_recovers_a_planted_half_point_and_files_without_one_still_load(toy, tmp_path):
    from mist.calibrate.kernel_profile import TOKENS_PER_EXPERT_HALF

    planted = {"fp8": 0.05, TOKENS_PER_EXPERT_HALF: 16.0}
    truth = replace(SERIES, time_us=tuple(SERIES.composed_us(toy, planted).tolist()))
    fit = fused_moe.fit_efficiency(toy, "toy", "made up here", [truth])
    assert fit.rates() == planted
    path = tmp_path / "eff.yaml"
    fit.save(path)
    assert fused_moe.FusedMoEEfficiency.load(path) == fit
    doc = yaml.safe_load(path.read_text())
    del doc[TOKENS_PER_EXPERT_HALF]  # a file fitted before the half point: one rate at every size
    path.write_text(yaml.safe_dump(doc))
    assert fused_moe.FusedMoEEfficiency.load(path).rates() == {"fp8": 0.05}
    doc[TOKENS_PER_EXPERT_HALF] = -1
    path.write_text(yaml.safe_dump(doc))
    with pytest.raises(TraceError, match="must be a non-negative number"):
        fused_moe.FusedMoEEfficiency.load(path)
