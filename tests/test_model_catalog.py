"""Catalogue of public model architectures: parameter counts, lookup, agreement with configs."""

from __future__ import annotations

import pytest
import yaml

from mist.profiles.model import load_model_config
from mist.profiles.model_catalog import DEFAULT_MODEL_CATALOG, load_model_catalog, resolve_model
from mist.traces.errors import TraceError

CATALOG = load_model_catalog()
CARD = {k: v.get("params_billion") for k, v in yaml.safe_load(DEFAULT_MODEL_CATALOG.read_text())["models"].items()}


@pytest.mark.parametrize("name", sorted(k for k, v in CARD.items() if v))
def test_parameter_count_matches_the_model_card(name):
    # DeciLM is served with uniform GQA at its widest layer: ~1 % more than the card
    assert CATALOG[name].param_count() / 1e9 == pytest.approx(CARD[name], rel=0.015)


def test_moe_and_plain_mlp_figures():
    mixtral = CATALOG["mistralai/Mixtral-8x7B-v0.1"]
    assert mixtral.active_param_count() / 1e9 == pytest.approx(12.9, rel=0.01)
    assert CATALOG["bigscience/bloom-7b1"].mlp_matrices == 2
    assert CATALOG["mistralai/Mistral-7B-v0.1"].sliding_window == 4096
    assert CATALOG["meta-llama/Llama-2-7b-hf"].kv_bytes_per_token() == 2 * 32 * 4096 * 2


def test_lookup_ignores_case_and_org_and_reports_unknown():
    assert resolve_model("META-LLAMA/llama-2-7b-HF", CATALOG).name == "meta-llama/Llama-2-7b-hf"
    assert resolve_model("Qwen2-72B", CATALOG).name == "Qwen/Qwen2-72B"
    assert resolve_model("acme/unknown-7b", CATALOG) is None


@pytest.mark.parametrize(("ours", "published"), [("meta-llama/Meta-Llama-3-8B", "Meta-Llama-3.1-8B"),
                                              ("meta-llama/Meta-Llama-3-70B", "Meta-Llama-3.1-70B")])
def test_llama3_agrees_with_the_shared_llama31_config(shared, ours, published):
    real = load_model_config(shared.models / f"meta-llama--{published}_config.json")
    mine = CATALOG[ours]
    for field in ("num_layers", "hidden_size", "num_heads", "num_kv_heads", "intermediate_size",
                  "vocab_size", "head_dim"):
        assert getattr(mine, field) == getattr(real, field), field
    assert mine.param_count() == real.param_count()


def test_configs_folder_is_a_fallback(shared):
    m = resolve_model("Qwen/Qwen3-32B", CATALOG, shared.models)
    assert m is not None and m.num_layers == 64


def test_malformed_entry_names_model_and_field(tmp_path):
    doc = yaml.safe_load(DEFAULT_MODEL_CATALOG.read_text())
    doc["models"]["Qwen/Qwen2-7B"]["num_layers"] = -1
    path = tmp_path / "m.yaml"
    path.write_text(yaml.safe_dump(doc))
    with pytest.raises(TraceError, match="Qwen2-7B.*num_layers"):
        load_model_catalog(path)
