"""Architectures of public models by name, for tables that name a model but ship no config.

``model_catalog.yaml`` holds transcribed Hugging Face ``config.json`` figures (each with
its source); :func:`resolve_model` looks a benchmark's model name up there first and then,
optionally, in a folder of real ``config.json`` files (``<org>--<name>_config.json`` as in
``../shared/data/models``).  Unknown names are reported, never guessed.
"""

from __future__ import annotations

from pathlib import Path

import yaml

from mist.profiles.limits import MODEL_FIELD_MAX
from mist.profiles.model import ModelConfig, load_model_config
from mist.traces.errors import TraceError

DEFAULT_MODEL_CATALOG = Path(__file__).with_name("model_catalog.yaml")

_INT_FIELDS = ("num_layers", "hidden_size", "num_heads", "num_kv_heads", "intermediate_size",
               "vocab_size", "max_position_embeddings")
_OPTIONAL_INT = {"num_experts": 0, "num_experts_per_tok": 0, "mlp_matrices": 3, "sliding_window": 0}
_KNOWN = set(_INT_FIELDS) | set(_OPTIONAL_INT) | {
    "architecture", "torch_dtype", "tie_word_embeddings", "attention_bias", "params_billion",
    "source"}


def _key(name: str) -> str:
    """Lookup key: case-folded, ``org/`` prefix kept, ``--`` treated as ``/``."""
    return str(name).strip().casefold().replace("--", "/")


def _entry(name: str, e, path) -> ModelConfig:
    if not isinstance(e, dict):
        raise TraceError(path, f"model {name!r}: entry must be a mapping")
    unknown = sorted(set(e) - _KNOWN)
    if unknown:
        raise TraceError(path, f"model {name!r}: unknown field(s) {unknown}")
    if not isinstance(e.get("source"), str) or len(e["source"].strip()) < 20:
        raise TraceError(path, f"model {name!r}: field 'source' must say where the figures come from")
    ints = {}
    for f in (*_INT_FIELDS, *_OPTIONAL_INT):
        v = e.get(f, _OPTIONAL_INT.get(f))
        if isinstance(v, bool) or not isinstance(v, int) or v < 0 or (f in _INT_FIELDS and v == 0):
            raise TraceError(path, f"model {name!r}: field {f!r} must be a positive integer, got {v!r}")
        if v > MODEL_FIELD_MAX.get(f, MODEL_FIELD_MAX["hidden_size"]):
            raise TraceError(path, f"model {name!r}: field {f!r} must be at most "
                                   f"{MODEL_FIELD_MAX.get(f, MODEL_FIELD_MAX['hidden_size'])}, got {v!r}")
        ints[f] = v
    experts = ints["num_experts"]
    if experts and ints["num_experts_per_tok"] > experts:
        raise TraceError(path, f"model {name!r}: num_experts_per_tok ({ints['num_experts_per_tok']}) must be "
                               f"at most num_experts ({experts})")
    return ModelConfig(
        name=name, architecture=str(e.get("architecture", "")),
        num_layers=ints["num_layers"], hidden_size=ints["hidden_size"],
        num_heads=ints["num_heads"], num_kv_heads=ints["num_kv_heads"],
        head_dim=ints["hidden_size"] // ints["num_heads"],
        intermediate_size=ints["intermediate_size"], vocab_size=ints["vocab_size"],
        num_experts=experts, num_experts_per_tok=ints["num_experts_per_tok"] if experts else 0,
        moe_intermediate_size=ints["intermediate_size"] if experts else 0,
        tie_word_embeddings=bool(e.get("tie_word_embeddings", False)),
        torch_dtype=str(e.get("torch_dtype", "auto")),
        max_position_embeddings=ints["max_position_embeddings"],
        num_dense_layers=0 if experts else ints["num_layers"],
        attention_bias=bool(e.get("attention_bias", False)),
        mlp_matrices=ints["mlp_matrices"],
        sliding_window=ints["sliding_window"],
        num_sliding_layers=ints["num_layers"] if ints["sliding_window"] else 0,
    )


def load_model_catalog(path=None) -> dict[str, ModelConfig]:
    """Read ``model_catalog.yaml`` (or ``path``) into ``{repo id: ModelConfig}``.

    Raises
    ------
    TraceError
        Unreadable file, no ``models:`` mapping, or an entry with a missing/non-positive
        size, an unknown field or no ``source``.
    """
    path = Path(path) if path is not None else DEFAULT_MODEL_CATALOG
    try:
        doc = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise TraceError(path, f"cannot read model catalog: {exc}") from exc
    models = doc.get("models") if isinstance(doc, dict) else None
    if not isinstance(models, dict) or not models:
        raise TraceError(path, "expected a top-level 'models:' mapping of repo id -> entry")
    return {str(k): _entry(str(k), v, path) for k, v in models.items()}


def resolve_model(name: str, catalog: dict[str, ModelConfig], configs_dir=None) -> ModelConfig | None:
    """The architecture of model ``name`` (``"meta-llama/Llama-2-7b-hf"``), or None.

    Matching ignores case; a bare name without ``org/`` matches when unambiguous.  When
    the catalog has no entry and ``configs_dir`` is given, ``<org>--<name>_config.json``
    or ``<name>.json`` there is read with :func:`mist.profiles.model.load_model_config`.
    """
    key = _key(name)
    by_key = {_key(k): m for k, m in catalog.items()}
    if key in by_key:
        return by_key[key]
    tails = [m for k, m in by_key.items() if k.split("/")[-1] == key.split("/")[-1]]
    if "/" not in key and len(tails) == 1:
        return tails[0]
    if configs_dir is not None:
        d = Path(configs_dir)
        for cand in (d / f"{name.replace('/', '--')}_config.json", d / f"{name}.json"):
            if cand.is_file():
                return load_model_config(cand)
    return None
