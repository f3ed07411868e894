"""Layer-profile bundles: real bundles, unit conversion, rejection of bad input."""

from __future__ import annotations

import pandas as pd
import pytest

from mist.calibrate.calibration import fit_operators
from mist.calibrate.features import REQUIRED
from mist.profiles.bundle import read_bundle, to_operator_profile
from mist.profiles.model import load_model_config
from mist.replay.deployment import check_profile
from mist.traces.errors import TraceError

BUNDLES = ("meta-llama/Llama-3.1-8B", "Qwen/Qwen3-32B", "Qwen/Qwen3-30B-A3B-Instruct-2507")
META = "hardware: TEST\nmodel: test/tiny\nvariant: bf16\nvllm_version: 0.19.0\n"


@pytest.mark.parametrize("name", BUNDLES)
def test_real_bundles_convert_microseconds_to_seconds(shared, name):
    root = shared.gpu_bundles / name / "bf16"
    bundle = read_bundle(root)
    assert bundle.tp_degrees == [1, 2]
    assert bundle.hardware == "RTXPRO6000"
    raw = pd.read_csv(root / "tp2" / "dense.csv")
    read = bundle.table(2, "dense")
    assert "time_us" not in read.columns
    for i in (0, len(raw) // 2, len(raw) - 1):
        assert read["latency_s"].iloc[i] == pytest.approx(raw["time_us"].iloc[i] * 1e-6, rel=1e-15)
        assert read["layer"].iloc[i] == raw["layer"].iloc[i]


def test_to_operator_profile_has_one_row_per_timed_shape(shared):
    bundle = read_bundle(shared.gpu_bundles / BUNDLES[0] / "bf16")
    profile = to_operator_profile(bundle)
    expected = sum(len(bundle.table(tp, name)) for tp in bundle.tp_degrees
                   for name in ("dense", "per_sequence", "attention"))
    assert profile.num_rows == expected
    df = profile.to_pandas()
    attn = df[(df["operator"] == "attention") & (df["tp"] == 1)]
    assert len(attn) == len(bundle.table(1, "attention"))
    assert set(df["engine_version"]) == {"0.19.0"}


def _bundle(tmp_path, dense: str | None = None, meta: str | None = META):
    """A tiny fake bundle: tp1 with dense, per-sequence and attention tables."""
    root = tmp_path / "bundle"
    (root / "tp1").mkdir(parents=True)
    if meta is not None:
        (root / "meta.yaml").write_text(meta)
    if dense is None:
        ops = [op for op in REQUIRED if op not in ("lm_head", "sampler", "attention")]
        dense = "layer,tokens,time_us\n" + "".join(
            f"{op},{t},{1.0 + i + t / 100}\n" for i, op in enumerate(ops) for t in (1, 16, 256))
    (root / "tp1" / "dense.csv").write_text(dense)
    (root / "tp1" / "per_sequence.csv").write_text(
        "layer,sequences,time_us\n" + "".join(f"{op},{s},{50 + s}\n" for op in ("lm_head", "sampler") for s in (1, 8)))
    (root / "tp1" / "attention.csv").write_text(
        "prefill_chunk,kv_prefill,n_decode,kv_decode,time_us\n"
        + "".join(f"{p},0,{n},{kv},{5 + p / 10 + n * kv / 100}\n"
                  for p in (0, 16) for n in (0, 1) for kv in (0, 16) if p or n))
    return root


def test_fake_bundle_fits_every_required_operator(tmp_path):
    profile = to_operator_profile(read_bundle(_bundle(tmp_path)))
    assert set(fit_operators(profile, 1)) == set(REQUIRED)


def test_bundle_without_meta_yaml(tmp_path):
    with pytest.raises(TraceError, match="meta.yaml"):
        read_bundle(_bundle(tmp_path, meta=None))


def test_csv_missing_a_column_names_file_and_column(tmp_path):
    root = _bundle(tmp_path, dense="layer,time_us\nqkv_proj,3.0\n")
    with pytest.raises(TraceError) as err:
        read_bundle(root)
    assert str(root / "tp1" / "dense.csv") in str(err.value)
    assert "tokens" in err.value.reason


def test_negative_time_names_file_and_line(tmp_path):
    root = _bundle(tmp_path, dense="layer,tokens,time_us\nqkv_proj,1,3.0\nqkv_proj,2,3.5\nqkv_proj,4,-1.0\n")
    with pytest.raises(TraceError) as err:
        read_bundle(root)
    assert err.value.path == str(root / "tp1" / "dense.csv")
    assert err.value.line == 4  # header is line 1
    assert "dense.csv:4" in str(err.value) and "-1.0" in str(err.value)


def test_check_profile_names_the_missing_operator(tmp_path, shared):
    ops = [op for op in REQUIRED if op not in ("lm_head", "sampler", "attention", "down_proj")]
    dense = "layer,tokens,time_us\n" + "".join(f"{op},{t},{2.0 + t / 50}\n" for op in ops for t in (1, 64))
    models = fit_operators(to_operator_profile(read_bundle(_bundle(tmp_path, dense=dense))), 1)
    assert "down_proj" not in models
    llama = load_model_config(shared.llama_config)
    with pytest.raises(TraceError, match="'down_proj'"):
        check_profile(models, llama, 1, "fake-bundle")
    models_full = fit_operators(to_operator_profile(read_bundle(_bundle(tmp_path / "full"))), 1)
    check_profile(models_full, llama, 1, "fake-bundle")  # nothing missing: no error


@pytest.mark.parametrize("version, expected", [
    ("0.11.2", False), ("0.12.0", False), ("0.13.0", False),  # --async-scheduling was opt-in
    ("0.14.0", True), ("v0.18.0", True), ("0.19.0", True), ("nightly-5b8c30d", True), ("", True),
])
def test_async_scheduling_follows_the_engine_versions_default(shared, version, expected):
    from mist.replay.deployment import engine_config

    model = load_model_config(shared.llama_config)
    meta = {"vllm_version": version, "engine_kwargs": {"num_gpu_blocks": 1000}}
    assert engine_config(meta, model).async_scheduling is expected
    meta["engine_kwargs"]["async_scheduling"] = not expected  # what the run was asked for wins
    assert engine_config(meta, model).async_scheduling is (not expected)
    meta["engine_kwargs"].update(async_scheduling=None, enable_prefix_caching=None)  # null: the default
    cfg = engine_config(meta, model)
    assert cfg.async_scheduling is expected and cfg.enable_prefix_caching is True


def test_engine_settings_a_recording_resolved_win_over_what_it_asked_for(shared):
    """Later LLMServingSim recordings (vLLM 0.28) store what the engine resolved: the
    per-rank KV tokens, a block count summed over DP ranks, the scheduler's settings and
    the device's memory. Those are used as recorded; ``engine_effective`` still wins."""
    from mist.replay.deployment import engine_config
    from mist.replay.run import device_memory

    model = load_model_config(shared.llama_config)
    kwargs = {"data_parallel_size": 2, "max_num_seqs": 128, "max_num_batched_tokens": 2048}
    meta = {"vllm_version": "0.28.0", "engine_kwargs": kwargs,
            "kv_cache": {"num_gpu_blocks": 75638, "block_size": 16, "gpu_memory_utilization": 0.92},
            "resolved_config": {"scheduler_config": {"async_scheduling": False, "max_num_seqs": 64},
                                "cache_config": {"num_gpu_blocks": 75638, "kv_cache_size_tokens": 605104}}}
    cfg = engine_config(meta, model, 1.0)  # no memory to size from: the recorded count must be used
    assert cfg.num_gpu_blocks == 605104 // 16 == 37819
    assert (cfg.async_scheduling, cfg.max_num_seqs, cfg.max_num_batched_tokens) == (False, 64, 2048)
    del meta["resolved_config"]["cache_config"]  # only the summed count: one rank holds half
    assert engine_config(meta, model, 1.0).num_gpu_blocks == 75638 // 2
    meta["resolved_config"]["cache_config"] = {"kv_cache_size_tokens": 6400}
    del meta["kv_cache"]["block_size"]
    meta["engine_kwargs"]["block_size"] = 32  # tokens over the block size the run asked for
    assert engine_config(meta, model, 1.0).num_gpu_blocks == 200
    meta["engine_effective"] = {"num_gpu_blocks": 500}  # what the live engine reported wins
    assert engine_config(meta, model, 1.0).num_gpu_blocks == 500
    cluster = {"nodes": [{"instances": [{"npu_mem": {"mem_size": 96}}]}]}
    assert device_memory(cluster, None, {"device_total_memory_bytes": 101976440832}) == 101976440832
    assert device_memory(cluster, None, {"kind": "cpu"}) == 96 * 2**30  # mist record's CPU runs say none


def test_kv_blocks_follow_the_served_dtypes(shared):
    from mist.replay.deployment import engine_config, served_dtype_bytes

    model = load_model_config(shared.llama_config)
    assert served_dtype_bytes(model) == (2.0, 2.0)
    assert served_dtype_bytes(model, "float32", "auto") == (4.0, 4.0)  # asked for: served so
    assert served_dtype_bytes(model, "auto", "fp8_e4m3") == (2.0, 1.0)
    fp32 = model.__class__(**{**model.__dict__, "torch_dtype": "float32"})
    assert served_dtype_bytes(fp32) == (2.0, 2.0)  # vLLM serves a float32 checkpoint in 16 bits on GPU

    def blocks(**kw):
        meta = {"vllm_version": "0.19.0", "engine_kwargs": {"max_num_seqs": 8, "max_num_batched_tokens": 512, **kw}}
        return engine_config(meta, model, 96e9).num_gpu_blocks

    # the same free memory holds twice as many 8-bit KV blocks (up to flooring)
    assert abs(blocks(kv_cache_dtype="fp8") - 2 * blocks()) <= 1
