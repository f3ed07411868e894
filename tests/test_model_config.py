"""Model architecture from Hugging Face config.json: every shared config, known sizes."""

from __future__ import annotations

import json

import pytest

from mist.profiles.model import dtype_bytes, load_model_config
from mist.traces.errors import TraceError


def _configs(shared):
    paths = sorted(shared.models.rglob("*.json"))
    assert paths, "no model configs under shared data"
    return paths


def _find(shared, name):
    return shared.models / name


def test_every_shared_config_loads(shared):
    for path in _configs(shared):
        cfg = load_model_config(path)
        assert cfg.num_layers > 0 and cfg.hidden_size > 0 and cfg.head_dim > 0, path
        assert cfg.num_kv_heads <= cfg.num_heads, path
        assert cfg.param_count() > 0 and cfg.kv_bytes_per_token() > 0, path
        assert cfg.active_param_count() <= cfg.param_count(), path
        assert cfg.is_moe() == (cfg.num_experts > 0), path
        if cfg.is_moe():
            assert 0 < cfg.num_experts_per_tok <= cfg.num_experts, path
            assert cfg.moe_intermediate_size > 0, path


@pytest.mark.parametrize(
    ("name", "published"),
    [
        ("meta-llama--Meta-Llama-3.1-8B_config.json", 8.03e9),
        ("llmservingsim/meta-llama/Llama-3.1-8B.json", 8.03e9),
        ("meta-llama--Meta-Llama-3.1-70B_config.json", 70.6e9),
        ("Qwen--Qwen3-32B_config.json", 32.8e9),
        ("llmservingsim/Qwen/Qwen3-32B.json", 32.8e9),
        ("Qwen--Qwen3-30B-A3B_config.json", 30.5e9),
        ("llmservingsim/Qwen/Qwen3-30B-A3B-Instruct-2507.json", 30.5e9),
        ("Qwen--Qwen3-235B-A22B_config.json", 235e9),
        ("openai--gpt-oss-120b_config.json", 116.8e9),  # model card: 116.8B total
        ("MiniMaxAI--MiniMax-M2.5_config.json", 230e9),  # model card: 230B total
    ],
)
def test_param_count_matches_published_size(shared, name, published):
    cfg = load_model_config(_find(shared, name))
    assert cfg.param_count() == pytest.approx(published, rel=0.02)


@pytest.mark.parametrize(
    ("name", "active"),
    [("Qwen--Qwen3-30B-A3B_config.json", 3.3e9), ("Qwen--Qwen3-235B-A22B_config.json", 22e9)],
)
def test_active_params_of_moe(shared, name, active):
    cfg = load_model_config(_find(shared, name))
    assert cfg.active_param_count() == pytest.approx(active, rel=0.03)


def test_llama_8b_fields_and_kv_bytes(shared):
    cfg = load_model_config(_find(shared, "llmservingsim/meta-llama/Llama-3.1-8B.json"))
    assert cfg.architecture == "LlamaForCausalLM"
    assert (cfg.num_layers, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim) == (32, 32, 8, 128)
    assert not cfg.is_moe() and cfg.torch_dtype == "bfloat16"
    # 2 (K and V) * 32 layers * 8 kv heads * 128 dims * 2 bytes
    assert cfg.kv_bytes_per_token(dtype_bytes("bfloat16")) == 2 * 32 * 8 * 128 * 2 == 131072
    assert cfg.weight_bytes(2.0) == 2 * cfg.param_count()


def test_moe_field_variants(shared):
    qwen = load_model_config(_find(shared, "Qwen--Qwen3-30B-A3B_config.json"))
    assert (qwen.num_experts, qwen.num_experts_per_tok, qwen.moe_intermediate_size) == (128, 8, 768)
    assert qwen.num_dense_layers == 0
    oss = load_model_config(_find(shared, "openai--gpt-oss-120b_config.json"))
    assert (oss.num_experts, oss.num_experts_per_tok, oss.moe_intermediate_size) == (128, 4, 2880)
    assert oss.head_dim == 64 and oss.attention_bias
    kimi = load_model_config(_find(shared, "moonshotai--Kimi-K2.5_config.json"))
    # n_routed_experts, first_k_dense_replace
    assert (kimi.num_experts, kimi.num_dense_layers) == (384, 1)
    assert kimi.shared_expert_intermediate_size == 2048  # 1 shared expert x 2048
    assert kimi.hidden_size == 7168  # read from text_config
    assert kimi.param_count() == pytest.approx(1.0e12, rel=0.05)  # model card: "1T total"
    # MLA caches the 512-wide latent + 64 rope dims per layer, not full K/V heads
    assert kimi.kv_bytes_per_token(2.0) == 61 * (512 + 64) * 2


def test_name_falls_back_to_file_stem(tmp_path):
    path = tmp_path / "tiny.json"
    path.write_text(
        json.dumps(
            {
                "architectures": ["LlamaForCausalLM"],
                "num_hidden_layers": 2,
                "hidden_size": 64,
                "num_attention_heads": 4,
                "vocab_size": 100,
                "intermediate_size": 128,
            }
        )
    )
    cfg = load_model_config(path)
    assert cfg.name == "tiny" and cfg.num_kv_heads == 4 and cfg.head_dim == 16
    assert cfg.torch_dtype == "auto" and cfg.tie_word_embeddings is False


@pytest.mark.parametrize("kv, message", [(0, "must be positive"), (3, "cannot be shared by 3 key/value heads")])
def test_impossible_key_value_heads_name_the_key(tmp_path, kv, message):
    path = tmp_path / "tiny.json"
    path.write_text(json.dumps({"num_hidden_layers": 2, "hidden_size": 64, "num_attention_heads": 4,
                                "num_key_value_heads": kv, "vocab_size": 100, "intermediate_size": 128}))
    with pytest.raises(TraceError, match=message) as info:
        load_model_config(path)
    assert "num_key_value_heads" in str(info.value) and info.value.path == str(path)


def test_missing_hidden_size_names_file_and_key(tmp_path, shared):
    raw = json.loads(_find(shared, "meta-llama--Meta-Llama-3.1-8B_config.json").read_text())
    del raw["hidden_size"]
    path = tmp_path / "broken.json"
    path.write_text(json.dumps(raw))
    with pytest.raises(TraceError, match="hidden_size") as info:
        load_model_config(path)
    assert info.value.path == str(path)


def test_bad_json_names_file_and_line(tmp_path):
    path = tmp_path / "bad.json"
    path.write_text('{\n  "hidden_size": 4096,\n  oops\n}')
    with pytest.raises(TraceError, match="malformed JSON") as info:
        load_model_config(path)
    assert info.value.path == str(path) and info.value.line == 3


@pytest.mark.parametrize(
    ("name", "size"),
    [
        ("bfloat16", 2),
        ("bf16", 2),
        ("float16", 2),
        ("auto", 2),
        ("torch.bfloat16", 2),
        ("float32", 4),
        ("fp8", 1),
        ("float8_e4m3fn", 1),
        ("int8", 1),
        ("int4", 0.5),
    ],
)
def test_dtype_bytes(name, size):
    assert dtype_bytes(name) == size


def test_dtype_bytes_unknown():
    with pytest.raises(ValueError, match="unknown dtype"):
        dtype_bytes("float13")
