"""Resource guards and damaged settings (issue 25): each setting the simulator sizes
something from is checked where it is read, before anything is allocated, and the error
names the file, the setting and the reason. Inputs are copies of real ones with one
field damaged; every case fails fast (the check comes first, nothing is allocated)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pandas as pd
import pytest

from mist.profiles.hardware import load_catalog
from mist.profiles.limits import MAX_KV_BLOCKS
from mist.profiles.model import load_model_config
from mist.replay.deployment import engine_config, recorded_engine
from mist.traces.errors import TraceError

REPO = Path(__file__).resolve().parents[1]
SAMPLE_RUN = REPO / "traces" / "samples" / "cpu-tiny-llama"
SAMPLE_PROFILES = REPO / "profiles" / "samples" / "cpu-tiny-llama" / "fp32"


def _config(tmp_path, source: Path, **changes) -> Path:
    cfg = json.loads(source.read_text())
    cfg.update(changes)
    out = tmp_path / "config.json"
    out.write_text(json.dumps(cfg))
    return out


def _meta(**sections) -> dict:
    meta = json.loads((SAMPLE_RUN / "meta.json").read_text())
    for section, changes in sections.items():
        meta.setdefault(section, {}).update(changes)
    return meta


@pytest.fixture(scope="module")
def tiny():
    return load_model_config(SAMPLE_RUN / "model_config.json")


def test_clean_sample_settings_unchanged(tiny):
    cfg = engine_config(_meta(), tiny)
    assert (cfg.block_size, cfg.num_gpu_blocks, cfg.max_num_seqs, cfg.max_num_batched_tokens) == (128, 4096, 64, 512)
    assert (cfg.enable_prefix_caching, cfg.async_scheduling, cfg.data_parallel) == (False, False, 1)


@pytest.mark.parametrize("layers", [10**30, 1e30, 5000, -1, "32"])
def test_model_layers_past_ceiling_or_not_an_integer(tmp_path, layers):
    path = _config(tmp_path, SAMPLE_RUN / "model_config.json", num_hidden_layers=layers)
    with pytest.raises(TraceError, match="num_hidden_layers") as err:
        load_model_config(path)
    assert str(path) in str(err.value)


def test_moe_layers_1e30_rejected_before_counting_layers(tmp_path, shared):
    # _dense_layers loops over the layers of an MoE stack: 10**30 would never end
    path = _config(tmp_path, shared.models / "Qwen--Qwen3-30B-A3B_config.json", num_hidden_layers=10**30)
    with pytest.raises(TraceError, match="'num_hidden_layers' must be at most 4096"):
        load_model_config(path)


def test_experts_per_token_above_experts(tmp_path, shared):
    src = shared.models / "Qwen--Qwen3-30B-A3B_config.json"
    assert load_model_config(src).num_experts_per_tok == 8  # the clean config loads
    with pytest.raises(TraceError, match=r"'num_experts_per_tok' \(200\) must be at most the experts, "
                                         r"'num_experts' \(128\)"):
        load_model_config(_config(tmp_path, src, num_experts_per_tok=200))


@pytest.mark.parametrize(("key", "value", "reason"), [
    ("tie_word_embeddings", "no", "must be true or false"),
    ("moe_layer_freq", 0, "must be at least 1"),
    ("kv_lora_rank", "abc", "must be an integer"),
    ("mlp_only_layers", "all", "list of layer indices"),
])
def test_model_raw_keys_checked(tmp_path, key, value, reason):
    with pytest.raises(TraceError, match=f"{key}.*{reason}"):
        load_model_config(_config(tmp_path, SAMPLE_RUN / "model_config.json", **{key: value}))


@pytest.mark.parametrize(("section", "key", "value", "reason"), [
    ("engine_effective", "enable_prefix_caching", "no", "must be true or false"),
    ("engine_kwargs", "enable_chunked_prefill", "yes", "must be true or false"),
    ("engine_effective", "block_size", 0, "must be at least 1"),
    ("engine_effective", "max_num_seqs", -5, "must be at least 1"),
    ("engine_effective", "max_num_batched_tokens", -1, "must be at least 1"),
    ("engine_kwargs", "num_gpu_blocks_override", 10**19, "must be at most"),
    ("engine_kwargs", "data_parallel_size", 10**6, "must be at most 1024"),
    ("engine_kwargs", "data_parallel_size", 1e6, "must be an integer"),
    ("engine_effective", "num_gpu_blocks", 16.5, "must be an integer"),
    ("engine_effective", "gpu_memory_utilization", 1.5, "must be at most 1"),
    ("kv_cache", "block_size", 0, "must be at least 1"),
])
def test_engine_setting_damaged(tiny, section, key, value, reason):
    meta = _meta(**{section: {key: value}})
    with pytest.raises(TraceError, match=f"run/meta.json: {section}.{key} {reason}"):
        engine_config(meta, tiny, path="run/meta.json")


def test_resolved_kv_tokens_past_block_ceiling(tiny):
    meta = _meta(resolved_config={"cache_config": {"kv_cache_size_tokens": 2**53, "block_size": 16}})
    del meta["engine_effective"]["num_gpu_blocks"]
    assert recorded_engine(meta)["num_gpu_blocks"] == 2**49  # read as given ...
    with pytest.raises(TraceError, match=f"num_gpu_blocks from the run's settings is {2**49}, above the "
                                         f"ceiling {MAX_KV_BLOCKS}"):
        engine_config(meta, tiny)  # ... but never allocated


def test_device_memory_sizing_past_block_ceiling(tiny):
    meta = _meta()
    del meta["engine_effective"]["num_gpu_blocks"]
    assert engine_config(meta, tiny, memory_bytes=2**30).num_gpu_blocks == 373  # 1 GiB, as before the guards
    with pytest.raises(TraceError, match="num_gpu_blocks from 1.1259e\\+15 bytes of memory"):
        engine_config(meta, tiny, memory_bytes=2.0**50)
    with pytest.raises(TraceError, match="device memory \\(bytes\\) must be a finite number"):
        engine_config(meta, tiny, memory_bytes=float("inf"))


def test_expert_parallel_step_table_ceiling(shared):
    model = load_model_config(shared.models / "Qwen--Qwen3-30B-A3B_config.json")
    meta = {"engine_kwargs": {"max_num_batched_tokens": 2**20, "data_parallel_size": 8,
                              "enable_expert_parallel": True, "num_gpu_blocks": 1000}}
    with pytest.raises(TraceError, match="max_num_batched_tokens x data_parallel_size"):
        engine_config(meta, model)
    meta["engine_kwargs"]["max_num_batched_tokens"] = 8192
    assert engine_config(meta, model).data_parallel == 8


def test_cli_validate_names_the_setting(tmp_path, capsys):
    from mist.validate.cli import main

    run = tmp_path / "run"
    shutil.copytree(SAMPLE_RUN, run)
    meta = json.loads((run / "meta.json").read_text())
    meta["engine_effective"]["enable_prefix_caching"] = "no"
    (run / "meta.json").write_text(json.dumps(meta))
    argv = ["validate", "--run", str(run), "--profiles", str(SAMPLE_PROFILES),
            "--model", str(run / "model_config.json")]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "engine_effective.enable_prefix_caching must be true or false" in err and "'no'" in err


def _silicon_row(tmp_path, shared, **changes) -> pd.DataFrame:
    from mist.traces.readers.silicon import read_silicon

    rows = pd.read_csv(shared.silicon_csv, dtype=str, keep_default_na=False)
    row = rows[rows["mode"] == "agg"].head(1)
    for col, value in changes.items():
        row[col] = value
    path = tmp_path / "rows.csv"
    row.to_csv(path, index=False)
    return read_silicon(path)


@pytest.mark.parametrize(("changes", "message"), [
    ({"batch_size": "10000000"}, "batch_size must be at most 65536"),
    ({"tp_size": "1000000"}, "tp_size must be at most 1024"),
    ({"isl": "100000000000000000000"}, "isl must be at most"),
    ({"batch_size": "4096", "attention_dp_size": "64"}, "batch_size x attention_dp_size = 262144 users must be at most 65536"),
])
def test_silicon_row_sizes(tmp_path, shared, changes, message):
    from mist.replay.silicon_rows import check_row, skip_reason

    rows = _silicon_row(tmp_path, shared, **changes)
    row = next(rows.iterrows())[1]
    with pytest.raises(TraceError, match=f"rows.csv:2: {message}"):
        check_row(row)
    with pytest.raises(TraceError, match=message):
        skip_reason(row, {}, None)  # checked before anything else is looked at


def test_silicon_clean_row_passes(tmp_path, shared):
    from mist.replay.silicon_rows import check_row

    row = next(_silicon_row(tmp_path, shared).iterrows())[1]
    check_row(row)  # no error
    assert row["batch_size"] >= 1


def test_hardware_figure_past_ceiling(tmp_path):
    from mist.profiles.hardware import DEFAULT_CATALOG

    text = DEFAULT_CATALOG.read_text()
    clean = load_catalog(DEFAULT_CATALOG)
    first = next(iter(clean.values()))
    key = "memory_gb" if "memory_gb:" in text else "memory_gib"
    bad = tmp_path / "hw.yaml"
    bad.write_text(text.replace(f"{key}:", f"{key}: 1.0e+300 #", 1))
    with pytest.raises(TraceError, match=f"hw.yaml: device .*: field '{key}' must be at most 1e\\+09"):
        load_catalog(bad)
    assert first.memory_bytes > 0


def test_engine_config_sizes_checked_however_built():
    from mist.replay.config import EngineConfig
    from mist.traces.errors import ReplayError

    assert EngineConfig(num_gpu_blocks=0).num_gpu_blocks == 0  # left to the replay's "no room" message
    for name, value in (("block_size", 0), ("data_parallel", 10**6), ("num_gpu_blocks", 10**19),
                        ("max_num_seqs", -3), ("tensor_parallel", 2.0)):
        with pytest.raises(ReplayError, match=f"engine setting {name} must be an integer"):
            EngineConfig(**{name: value})
