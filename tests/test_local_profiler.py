"""The local profiler: grids, summaries, the all-or-nothing bundle writer, the job with its
heavy parts faked, and (slow) a real run."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import types
from pathlib import Path

import pytest
import yaml

import mist.profiles.measure as measure
import mist.profiles.measure.probe as probe
import mist.profiles.measure.recorder as recorder
from mist.calibrate.calibration import fit_operators
from mist.profiles.bundle import read_bundle, to_operator_profile
from mist.profiles.measure.bundle_writer import render_csv, write_bundle
from mist.profiles.measure.cpus import parse_cpus
from mist.profiles.measure.grids import (
    attention_points,
    geometric_grid,
    grid_meta,
    grids_for,
    summarize,
    token_grid,
)
from mist.profiles.measure.profiler import profile_machine, write_profile
from mist.profiles.measure.settings import ProfileSettings
from mist.validate.cli.profile import forward_check

REPO = Path(__file__).resolve().parents[1]
TINY_CONFIG = REPO / "profiles" / "samples" / "tiny-llama.json"
SAMPLE_BUNDLE = REPO / "profiles" / "samples" / "cpu-tiny-llama" / "fp32"
DENSE_OPS = ("qkv_proj", "o_proj", "gate_up_proj", "down_proj", "act_fn", "rotary_emb",
             "layernorm", "embedding", "final_layernorm")


def test_token_grid_dense_then_geometric():
    assert token_grid(40) == list(range(1, 17)) + [20, 25, 31, 39, 40]
    assert token_grid(5) == [1, 2, 3, 4, 5]
    assert token_grid(1) == [1]
    assert token_grid(64, dense_until=4, factor=2.0) == [1, 2, 3, 4, 8, 16, 32, 64]
    with pytest.raises(ValueError):
        token_grid(0)


def test_geometric_grid_includes_zero_and_maximum():
    assert geometric_grid(16, 100) == [0, 16, 32, 64, 100]
    assert geometric_grid(1, 64, zero=False) == [1, 2, 4, 8, 16, 32, 64]
    assert geometric_grid(16, 2048, 4) == [0, 16, 64, 256, 1024, 2048]


def test_attention_points_are_schedulable_batches():
    points = attention_points(max_tokens=64, max_seqs=8, max_kv=256)
    assert (0, 0, 1, 16) in points and (16, 0, 0, 0) in points and (64, 64, 0, 0) in points and (64, 256, 0, 0) not in points
    assert (0, 0, 0, 0) not in points
    for c, kp, n, kd in points:
        assert c + n <= 64 and n + (c > 0) <= 8 and kp + c <= 256 and kd <= 256
        assert c or kp == 0
        assert (n == 0) == (kd == 0)
    assert len(set(points)) == len(points)


def test_summarize_reports_median_spread_count_in_us():
    med, spread, n = summarize([1e-6, 2e-6, 3e-6, 4e-6, 100e-6])
    assert med == pytest.approx(3.0)
    assert spread == pytest.approx(61.6 - 1.4)  # p90 - p10, linear interpolation
    assert n == 5
    with pytest.raises(ValueError):
        summarize([])


def test_parse_cpus_and_settings_validation():
    assert parse_cpus("0-2,5") == [0, 1, 2, 5]
    assert parse_cpus("0") == [0]
    with pytest.raises(ValueError):
        parse_cpus("")
    with pytest.raises(ValueError):
        ProfileSettings(model_config="x.json", max_num_seqs=0)
    with pytest.raises(ValueError):
        ProfileSettings(model_config="x.json", temperature=-1)


def test_engine_scenarios_fit_the_limits():
    from mist.profiles.measure.engine_steps import scenarios

    full = scenarios(ProfileSettings(model_config="x.json", max_num_seqs=64, max_kv=2048))
    assert [n for n, p, _ in full if p == 512] == [1, 2, 4, 8, 16, 32, 64]
    assert {p for _, p, _ in full} == {16, 128, 512}
    quick = scenarios(ProfileSettings(model_config="x.json", max_num_seqs=48, max_kv=64, quick=True))
    assert quick == [(1, 48, 6), (4, 48, 6), (16, 48, 6), (48, 48, 6)]


def test_engine_records_aggregate_per_cell():
    from mist.profiles.measure.engine_steps import aggregate, decode_steps

    ms = 1e-3
    records = [(2, 2, 10 * ms, 9 * ms, 100.0, 5 * ms, 3.5 * ms, 0.5 * ms),
               (2, 2, 12 * ms, 9 * ms, 102.0, 5 * ms, 3.5 * ms, 0.5 * ms),
               (2, 2, 11 * ms, 9 * ms, 104.0, 5 * ms, 3.5 * ms, 0.5 * ms),
               (1, 64, 30 * ms, 28 * ms, -1.0, 24 * ms, 3.5 * ms, 0.5 * ms)]
    rows = aggregate(records)
    assert [(r["sequences"], r["tokens"], r["samples"]) for r in rows] == [(1, 64, 1), (2, 2, 3)]
    assert rows[1]["time_us"] == pytest.approx(2000.0) and rows[1]["step_us"] == pytest.approx(11000.0)
    (dec,) = decode_steps(records)  # the prefill step has no decode KV
    assert dec == {"sequences": 2, "kv_decode": 102.0, "model_us": 9000.0, "forward_us": 5000.0,
                   "logits_us": 3500.0, "sampler_us": 500.0, "steps": 3}


def _synthetic_tables() -> dict[str, list[dict]]:
    def row(**kw):
        return {**kw, "spread_us": 0.5, "samples": 5}

    dense = [row(layer=op, tokens=t, time_us=10.0 + i + 0.1 * t)
             for i, op in enumerate(DENSE_OPS) for t in token_grid(64, 4, 2.0)]
    per_seq = [row(layer=op, sequences=s, time_us=100.0 + 5 * s)
               for op in ("lm_head", "sampler") for s in token_grid(8, 2, 2.0)]
    attn = [row(prefill_chunk=c, kv_prefill=kp, n_decode=n, kv_decode=kd,
                time_us=5.0 + 0.01 * (c * (c + kp)) + 0.02 * n * kd)
            for c, kp, n, kd in attention_points(64, 8, 256, 4, 4, 4)]
    overhead = [{"sequences": s, "tokens": t, "time_us": 1000.0 + s, "spread_us": 10.0, "samples": 3,
                 "step_us": 5000.0, "model_us": 4000.0 - s} for s, t in ((1, 1), (4, 4), (4, 64))]
    return {"dense": dense, "per_sequence": per_seq, "attention": attn, "step_overhead": overhead}


def test_render_csv_orders_columns_and_rows():
    text = render_csv("step_overhead", list(reversed(_synthetic_tables()["step_overhead"])))
    lines = text.splitlines()
    assert lines[0] == "sequences,tokens,time_us,spread_us,samples,step_us,model_us"
    assert lines[1] == "1,1,1001.000,10.000,3,5000.000,3999.000"
    assert [ln.split(",")[:2] for ln in lines[1:]] == [["1", "1"], ["4", "4"], ["4", "64"]]
    with pytest.raises(ValueError):
        render_csv("dense", [{"layer": "x", "tokens": 1}])


def test_written_bundle_reads_and_fits(tmp_path):
    meta = {"hardware": "CPU", "device": "test CPU", "model": "tiny", "variant": "float32",
            "vllm_version": "0.32.0", "tp_degrees": [1], "grids": {"tokens": (1, 2)}}
    out = write_bundle(tmp_path / "bundle", meta, _synthetic_tables())
    assert sorted(p.name for p in (out / "tp1").iterdir()) == [
        "attention.csv", "dense.csv", "per_sequence.csv", "step_overhead.csv"]
    assert yaml.safe_load((out / "meta.yaml").read_text())["grids"] == {"tokens": [1, 2]}
    bundle = read_bundle(out)
    assert bundle.hardware == "CPU" and bundle.tp_degrees == [1]
    models = fit_operators(to_operator_profile(bundle), tp=1)
    assert set(DENSE_OPS) | {"lm_head", "sampler", "attention"} <= set(models)
    assert models["qkv_proj"].predict([[32]])[0] == pytest.approx(13.2e-6)
    assert models["attention"].predict([[0, 0, 4, 64]])[0] == pytest.approx((5.0 + 0.02 * 4 * 64) * 1e-6)


def test_write_bundle_is_all_or_nothing(tmp_path):
    out = tmp_path / "bundle"
    bad = _synthetic_tables()
    bad["dense"] = bad["dense"] + [{"layer": "qkv_proj", "tokens": 1}]  # no time_us: render fails
    with pytest.raises(ValueError):
        write_bundle(out, {"hardware": "CPU"}, bad)
    assert list(tmp_path.iterdir()) == []  # neither the bundle nor a temporary folder remains

    write_bundle(out, {"hardware": "CPU", "model": "first"}, _synthetic_tables())
    with pytest.raises(FileExistsError):
        write_bundle(out, {"hardware": "CPU", "model": "second"}, _synthetic_tables())
    assert read_bundle(out).meta["model"] == "first"
    write_bundle(out, {"hardware": "CPU", "model": "second"}, _synthetic_tables(), force=True)
    assert read_bundle(out).meta["model"] == "second"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bundle"]
    empty = tmp_path / "empty"
    empty.mkdir()
    write_bundle(empty, {"hardware": "CPU"}, _synthetic_tables())  # an empty folder is fine
    assert (empty / "tp1" / "dense.csv").is_file()


def test_forward_check_composes_decode_steps():
    tables = _synthetic_tables()
    meta = {"model_shape": {"num_layers": 2},
            "engine_decode_steps": [{"sequences": 4, "kv_decode": 64.0, "model_us": 1000.0, "steps": 9}]}
    (check,) = forward_check(meta, tables)
    per_layer = sum(10.0 + i + 0.4 for i, op in enumerate(DENSE_OPS)
                    if op not in ("embedding", "final_layernorm"))
    per_layer += 10.0 + DENSE_OPS.index("layernorm") + 0.4  # two norms per layer
    once = (10.0 + DENSE_OPS.index("embedding") + 0.4) + (10.0 + DENSE_OPS.index("final_layernorm") + 0.4)
    expected = 2 * per_layer + once + 2 * (5.0 + 0.02 * 4 * 64) + 2 * (100.0 + 20)
    assert check["ops_model_us"] == pytest.approx(expected, abs=0.1)
    assert check["ratio"] == pytest.approx(1000.0 / expected, abs=1e-3)


def test_cli_help_does_not_import_torch():
    code = ("import sys; from mist.validate.cli import build_parser; build_parser(); "
            "bad = [m for m in ('torch', 'vllm') if m in sys.modules]; print(bad); sys.exit(bool(bad))")
    res = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True)
    assert res.returncode == 0, res.stdout + res.stderr


PROBE = {"version": 1, "matmul_s": 0.01, "python_s": 0.04, "score_s": 0.02}  # a fixed speed probe


@pytest.fixture
def fake_heavy(monkeypatch):
    """The torch/vLLM stages of the profiler replaced by synthetic tables (no torch needed)."""
    tables = _synthetic_tables()
    step = {"step": 0, "sequences": 2, "tokens": 2, "n_decode": 2, "kv_decode_sum": 130,
            "kv_decode_max": 66, "kv_decode_min": 64, "prefills": "", "time_us": 4000.0}
    fakes = {name: types.ModuleType(name) for name in ("operators", "engine_steps", "serving_steps")}
    fakes["operators"].profile_operators = lambda model, raw, settings, cpus, progress: {
        **{k: tables[k] for k in ("dense", "per_sequence", "attention")},
        "kernels": {"qkv_proj": "fake"}, "grids": grid_meta(grids_for(settings)), "repeats": 3,
        "dtype": "float32", "versions": {"vllm": "test", "torch": "test"}}
    fakes["engine_steps"].profile_step_overhead = lambda model, raw, settings, progress: {
        "rows": tables["step_overhead"], "engine_effective": {"block_size": 128}, "steps": [step],
        "decode_steps": [{"sequences": 4, "kv_decode": 64.0, "model_us": 1000.0, "forward_us": 600.0,
                          "logits_us": 300.0, "sampler_us": 100.0, "steps": 9}],
        "description": {"method": "fake", "steps": 1}}
    fakes["serving_steps"].profile_serving_steps = lambda raw, settings: [dict(step)]
    for name, module in fakes.items():
        monkeypatch.setitem(sys.modules, f"mist.profiles.measure.{name}", module)
        monkeypatch.setattr(measure, name, module, raising=False)
    monkeypatch.setattr(probe, "run_probe", lambda cpus=None: dict(PROBE))
    monkeypatch.setattr(recorder, "engine_versions", lambda: {"vllm_version": "test"})
    for name in ("VLLM_ENABLE_V1_MULTIPROCESSING", "VLLM_CPU_OMP_THREADS_BIND", "VLLM_LOGGING_LEVEL"):
        monkeypatch.setenv(name, "restored after the test")  # the job sets them for vLLM


def _bundle_layout(bundle: Path) -> dict:
    """File names, the keys of meta.yaml in order (and of its settings), the CSV headers."""
    meta = yaml.safe_load((bundle / "meta.yaml").read_text())
    return {"files": sorted(p.name for p in (bundle / "tp1").iterdir()), "meta": list(meta),
            "settings": list(meta["settings"]), "forward_check": sorted(meta["forward_check"][0]),
            **{p.name: p.read_text().splitlines()[0] for p in (bundle / "tp1").iterdir()}}


def test_profile_machine_is_a_library_job(fake_heavy, tmp_path):
    settings = ProfileSettings(model_config=str(TINY_CONFIG), max_num_seqs=8, quick=True)
    result = profile_machine(settings, forward_check=forward_check)
    assert result.meta["speed_probe"] == result.meta["speed_probe_end"] == PROBE
    assert result.meta["settings"]["max_num_seqs"] == 8 and result.meta["model"] == "mist/tiny-llama"
    assert result.meta["forward_check"] == forward_check(result.meta, result.tables)
    assert sorted(result.tables) == ["attention", "dense", "engine_steps", "per_sequence", "step_overhead"]
    out = write_profile(result, tmp_path / "bundle")
    assert read_bundle(out).meta == yaml.safe_load((out / "meta.yaml").read_text())
    assert _bundle_layout(out) == _bundle_layout(SAMPLE_BUNDLE)  # the shipped sample's layout
    assert "forward_check" not in profile_machine(settings).meta  # no check asked for
    served = profile_machine(ProfileSettings(model_config=str(TINY_CONFIG), serving_steps=True))
    assert served.tables["serving_steps"] and served.meta["serving_steps"]["steps"] == 1


def test_cli_profile_writes_the_bundle(fake_heavy, tmp_path, capsys):
    from mist.validate.cli import main

    out = tmp_path / "bundle"
    assert main(["profile", "--model", str(TINY_CONFIG), "--out", str(out), "--quick"]) == 0
    printed = capsys.readouterr().out.splitlines()
    assert printed[0].startswith("profiled mist/tiny-llama (float32) on ")
    assert printed[1].startswith("  decode S=  4: engine model    1.00 ms") and printed[-1] == f"bundle: {out}"
    assert read_bundle(out).meta["settings"]["quick"] is True


def test_cli_refuses_non_empty_out(tmp_path):
    from mist.validate.cli import main

    (tmp_path / "something").write_text("x")
    assert main(["profile", "--model", str(TINY_CONFIG), "--out", str(tmp_path)]) == 2


# The profiler needs torch and vllm, which may live in another environment than the
# tests (vLLM pins its own torch): MIST_PROFILE_PYTHON names that interpreter (one where
# mist is installed too, e.g. the venv of the README's [record] install).
PROFILE_PYTHON = os.environ.get("MIST_PROFILE_PYTHON", sys.executable)


def _can_profile() -> bool:
    if sys.executable == PROFILE_PYTHON:
        return all(importlib.util.find_spec(m) is not None for m in ("torch", "vllm"))
    res = subprocess.run([PROFILE_PYTHON, "-c", "import torch, vllm"], capture_output=True)
    return res.returncode == 0


@pytest.mark.slow
def test_quick_profile_end_to_end(tmp_path, shared):
    if not _can_profile():
        pytest.skip("needs torch (CPU) and vllm (the [record] extra); or set MIST_PROFILE_PYTHON")
    out = tmp_path / "bundle"
    config = shared.vllm_bench_cpu / "tiny-llama-rate1.5-run2" / "config.json"
    res = subprocess.run([PROFILE_PYTHON, "-m", "mist", "profile", "--model", str(config),
                          "--out", str(out), "--quick"], cwd=REPO, capture_output=True,
                         text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    bundle = read_bundle(out)
    assert bundle.meta["variant"] == "float32" and bundle.meta["engine_effective"]["block_size"] == 128
    models = fit_operators(to_operator_profile(bundle), tp=1)
    assert set(DENSE_OPS) | {"lm_head", "sampler", "attention"} <= set(models)
    overhead = (out / "tp1" / "step_overhead.csv").read_text().splitlines()
    assert overhead[0].startswith("sequences,tokens,time_us") and len(overhead) > 3
    assert bundle.meta["forward_check"], "no pure-decode steps were recorded"
