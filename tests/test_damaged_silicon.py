"""Damaged inputs of `mist silicon` (issue 25's fuzz campaign, bench/fuzz_kinds_silicon.py):
each is an error naming the file, the line or field and the reason, never a silent
fall-back or a changed result."""

from __future__ import annotations

import os
import shutil

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
import yaml

from mist.calibrate.fused_moe import read_measurements
from mist.calibrate.kernels_grid import cross_validate_kernels
from mist.calibrate.step_overhead import StepOverhead
from mist.traces.errors import TraceError
from mist.traces.readers.aiconfigurator import read_kernel_db, read_system_yaml
from mist.traces.readers.silicon import read_silicon

HEADER = ("id,system,backend,backend_version,model_path,precision,mode,isl,osl,batch_size,tp_size,"
          "silicon_ttft_ms,silicon_tpot_ms\n")
ROW = "{id},h100_sxm,vllm,0.12.0,Qwen/Qwen3-32B,,agg,1024,128,8,2,154.2,18.0\n"


def _csv(tmp_path, *rows: str):
    path = tmp_path / "silicon.csv"
    path.write_text(HEADER + "".join(rows))
    return path


def test_a_truncated_silicon_row_is_an_error_not_a_row_of_another_system(tmp_path):
    path = _csv(tmp_path, ROW.format(id="a"), "b,h100_s\n")  # the file cut inside a row
    with pytest.raises(TraceError, match=r"expected 13 fields as in the header, found 2") as err:
        read_silicon(path, system="h100_sxm", backend="vllm")
    assert err.value.path == str(path) and err.value.line == 3


def test_a_duplicated_silicon_row_is_an_error(tmp_path):
    path = _csv(tmp_path, ROW.format(id="a"), ROW.format(id="b"), ROW.format(id="a"))
    with pytest.raises(TraceError, match=r"id: 'a' is given twice") as err:
        read_silicon(path)
    assert err.value.line == 4


@pytest.mark.parametrize("column", ["system", "backend", "model_path", "mode"])
def test_an_empty_name_in_a_silicon_row_is_an_error(tmp_path, column):
    cells = dict(zip(HEADER.strip().split(","), ROW.format(id="b").strip().split(",")))
    cells[column] = ""
    path = _csv(tmp_path, ROW.format(id="a"), ",".join(cells.values()) + "\n")
    with pytest.raises(TraceError, match=rf"{column}: must be given") as err:
        read_silicon(path, system="h100_sxm", backend="vllm")
    assert err.value.line == 3


@pytest.fixture(scope="module")
def small_gemm_db(shared, tmp_path_factory):
    """The h100_sxm GEMM tables only (two versions, a cut of each), read once."""
    root = tmp_path_factory.mktemp("db") / "h100_sxm"
    for version in ("0.14.0", "0.19.0"):
        (root / "gemm/vllm" / version).mkdir(parents=True)
        df = pd.read_parquet(shared.h100_kernels / "gemm/vllm" / version / "gemm_perf.parquet",
                             filters=[("gemm_dtype", "==", "bfloat16"), ("m", "<=", 64)])
        df.to_parquet(root / "gemm/vllm" / version / "gemm_perf.parquet", index=False)
    return root


def _kernel_dir(tmp_path, shared, db=None):
    """A copy of ``db`` (or an empty system folder) beside the h100_sxm datasheet."""
    root = tmp_path / "h100_sxm"
    if db is None:
        root.mkdir()
    else:
        shutil.copytree(db, root)
    shutil.copy(shared.h100_kernels.parent / "h100_sxm.yaml", tmp_path / "h100_sxm.yaml")
    return root


@pytest.mark.parametrize("damage", ["symlink-loop", "directory"])
def test_an_unreadable_kernel_table_is_an_error_never_a_fall_back_to_another_version(tmp_path, shared, damage,
                                                                                     small_gemm_db):
    root = _kernel_dir(tmp_path, shared, small_gemm_db)
    table = root / "gemm/vllm/0.14.0/gemm_perf.parquet"
    assert read_kernel_db(root, "0.12.0").num_rows  # clean: the 0.14.0 table is read
    table.unlink()
    if damage == "symlink-loop":
        os.symlink(table.name, table)
    else:
        table.mkdir()
    with pytest.raises(TraceError, match="not a readable Parquet file") as err:
        read_kernel_db(root, "0.12.0")
    assert err.value.path == str(table)


def test_a_corrupt_kernel_table_is_named_on_one_line(tmp_path, shared, small_gemm_db):
    root = _kernel_dir(tmp_path, shared, small_gemm_db)
    table = root / "gemm/vllm/0.14.0/gemm_perf.parquet"
    data = table.read_bytes()
    table.write_bytes(data[: len(data) // 2] + b"\xff\xfe\xc3" + data[len(data) // 2:])
    with pytest.raises(TraceError, match="not a readable Parquet file") as err:
        read_kernel_db(root, "0.12.0")
    assert err.value.path == str(table) and "\n" not in str(err.value)


@pytest.mark.parametrize("key, value, reason", [
    ("mem_bw", float("nan"), "gpu.mem_bw must be a finite number"),
    ("mem_bw", -1, "gpu.mem_bw must be above 0"),
    ("bfloat16_tc_flops", 1e300, "gpu.bfloat16_tc_flops must be at most"),
    ("bfloat16_tc_flops", None, "gpu.bfloat16_tc_flops is missing"),
    ("sm_version", "abc", "gpu.sm_version must be an integer"),
    ("mem_bw_empirical_scaling_factor", 2**64, "gpu.mem_bw_empirical_scaling_factor must be at most 1"),
])
def test_a_bad_datasheet_figure_is_an_error_naming_the_field(tmp_path, shared, key, value, reason):
    root = _kernel_dir(tmp_path, shared)
    doc = yaml.safe_load((tmp_path / "h100_sxm.yaml").read_text())
    doc["gpu"][key] = value
    (tmp_path / "h100_sxm.yaml").write_text(yaml.safe_dump(doc))
    with pytest.raises(TraceError, match=reason) as err:
        read_system_yaml(root)
    assert err.value.path == str(tmp_path / "h100_sxm.yaml")


@pytest.mark.parametrize("key, value, reason", [
    ("per_step_ms", 1e300, "per_step_ms must be at most"),
    ("per_sequence_us", float("inf"), "per_sequence_us must be a finite number"),
    ("per_step_ms", None, "per_step_ms is missing"),
    ("fitted_on", "abc", "fitted_on must be an object"),
])
def test_a_bad_step_overhead_is_an_error_naming_the_field(tmp_path, key, value, reason):
    path = tmp_path / "overhead.yaml"
    path.write_text(yaml.safe_dump({"per_step_ms": 1.3, "per_sequence_us": 21.3, "fitted_on": {}, key: value}))
    with pytest.raises(TraceError, match=reason) as err:
        StepOverhead.load(path)
    assert err.value.path == str(path)


@pytest.mark.parametrize("key, value, reason", [
    ("time_us", 1e300, r"series\[1\].time_us: must be at most"),
    ("hidden_size", 2**64, r"series\[1\].hidden_size: must be at most"),
    ("tokens", 2**64, r"series\[1\].tokens: must be at most"),
    ("dtype", None, r"series\[1\]: label and dtype must be non-empty strings"),
])
def test_a_bad_fused_moe_measurement_is_an_error_naming_the_series(tmp_path, key, value, reason):
    from pathlib import Path

    doc = yaml.safe_load((Path(__file__).resolve().parents[1] / "profiles/fused_moe_measurements.yaml").read_text())
    series = doc["series"][1]
    if isinstance(series[key], list):
        series[key][len(series[key]) // 2] = value
    else:
        series[key] = value
    path = tmp_path / "m.yaml"
    path.write_text(yaml.safe_dump(doc))
    with pytest.raises(TraceError, match=reason) as err:
        read_measurements(path)
    assert err.value.path == str(path)


def test_kernel_cross_validation_does_not_depend_on_row_order():
    # repeated measurements of one shape (NCCL's tables hold two runs of every size)
    rng = np.random.default_rng(1)
    size = np.repeat(2.0 ** np.arange(10, 30), 2)
    latency = 1e-9 * size**0.8 * rng.uniform(0.9, 1.1, len(size))
    table = pa.table({"operator": ["nccl_all_reduce"] * len(size), "dtype": ["half"] * len(size),
                      "tp": [8] * len(size), "message_bytes": size, "latency_s": latency})
    forward = cross_validate_kernels(table, k=4)
    backward = cross_validate_kernels(table.take(np.arange(len(size))[::-1]), k=4)
    assert forward.equals(backward) and forward["mape"].iloc[0] > 0


def test_a_non_utf8_hardware_catalog_is_an_error(tmp_path):
    from mist.profiles.hardware import load_catalog

    path = tmp_path / "hw.yaml"
    path.write_bytes(b"devices:\n  X:\n    vendor: \xff\xfe\xc3\n")
    with pytest.raises(TraceError, match="cannot read hardware catalog") as err:
        load_catalog(extra=[path])
    assert err.value.path == str(path)


@pytest.mark.parametrize("damage", ["symlink-loop", "directory"])
def test_an_unreadable_system_datasheet_is_an_error_never_a_fall_back_to_the_catalog(tmp_path, shared, damage):
    root = _kernel_dir(tmp_path, shared)
    sheet = tmp_path / "h100_sxm.yaml"
    sheet.unlink()
    if damage == "symlink-loop":
        os.symlink(sheet.name, sheet)
    else:
        sheet.mkdir()
    with pytest.raises(TraceError, match="not a regular file") as err:
        read_system_yaml(root)
    assert err.value.path == str(sheet)


def test_a_null_datasheet_figure_is_not_given():
    from mist.calibrate.kernels import Datasheet

    sheet = Datasheet.from_aiconfigurator("x", {"gpu": {"mem_bw": 1e12, "bfloat16_tc_flops": 1e15,
                                                        "mem_capacity": None}, "node": None})
    assert sheet.memory_bytes == 80 * 2**30 and sheet.link_bw_bytes_s == 450e9


def test_a_truncated_benchmark_row_is_an_error(tmp_path, shared):
    from mist.traces.readers.llm_inference_bench import read_llm_inference_bench

    lines = (shared.root / "benchmarks/llm-inference-bench/All_results.csv").read_text().splitlines()[:4]
    path = tmp_path / "All_results.csv"
    path.write_text("\n".join(lines[:3]) + "\n" + lines[3].rsplit(",", 1)[0])  # cut before Throughput
    with pytest.raises(TraceError, match=r"expected 8 fields, found 7") as err:
        read_llm_inference_bench(path)
    assert err.value.path == str(path) and err.value.line == 4


def test_an_unknown_fused_moe_dtype_is_an_error_naming_the_series(tmp_path):
    from pathlib import Path

    doc = yaml.safe_load((Path(__file__).resolve().parents[1] / "profiles/fused_moe_measurements.yaml").read_text())
    doc["series"][1]["dtype"] = "abc"
    path = tmp_path / "m.yaml"
    path.write_text(yaml.safe_dump(doc))
    with pytest.raises(TraceError, match=r"series\[1\].dtype: unknown dtype 'abc'"):
        read_measurements(path)


def test_a_truncated_hardware_catalog_is_named_on_one_line(tmp_path):
    from mist.profiles.hardware import load_catalog

    path = tmp_path / "hw.yaml"
    path.write_text("devices:\n  X:\n    peak_tflops: {bf16: 1, fp8")  # cut inside a flow mapping
    with pytest.raises(TraceError, match="not valid YAML") as err:
        load_catalog(extra=[path])
    assert err.value.path == str(path) and "\n" not in str(err.value)


@pytest.mark.parametrize("version", ["-1", "inf", "1e+300", "nan"])
def test_a_backend_version_that_is_a_number_but_no_release_is_an_error(tmp_path, version):
    """A build name (nightly-dev, main) reads the newest kernel tables; a number that is no
    release (-1, inf) would pass for one and silently pick them."""
    path = _csv(tmp_path, ROW.format(id="a"), ROW.format(id="b").replace("0.12.0", version))
    with pytest.raises(TraceError, match=r"backend_version: .* is a number, not a release version") as err:
        read_silicon(path, system="h100_sxm", backend="vllm")
    assert err.value.line == 3
    ok = _csv(tmp_path, ROW.format(id="a"), ROW.format(id="b").replace("0.12.0", "nightly-dev-2026"),
              ROW.format(id="c").replace("0.12.0", "v0.19"))
    assert list(read_silicon(ok)["backend_version"]) == ["0.12.0", "nightly-dev-2026", "v0.19"]


def test_a_moe_efficiency_file_without_a_dtype_says_that_dtype_falls_back(tmp_path):
    from mist.calibrate.fused_moe import DEFAULT_EFFICIENCY, FusedMoEEfficiency
    from mist.traces.errors import InputWarning

    doc = yaml.safe_load(DEFAULT_EFFICIENCY.read_text())
    del doc["efficiency"]["bfloat16"]
    path = tmp_path / "eff.yaml"
    path.write_text(yaml.safe_dump(doc))
    with pytest.warns(InputWarning, match=r"no fused-MoE rate for bfloat16; MoE layers computed in that dtype"):
        eff = FusedMoEEfficiency.load(path)
    assert "bfloat16" not in eff.efficiency and eff.efficiency["fp8"] == doc["efficiency"]["fp8"]
