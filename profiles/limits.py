"""Declared rules of the settings and sizes the simulator takes, and the one check that applies them.

Each engine setting, model-architecture field and silicon-row size has a :class:`Rule`
(kind, least, most; declared in :mod:`mist.traces.rules`, re-exported here) in a table
next to where it is read (:data:`ENGINE_RULES` here, ``MODEL_RULES`` in
:mod:`mist.profiles.model`, ``ROW_RULES`` in :mod:`mist.replay.silicon_rows`; a run's
``meta.json`` and a bundle's ``meta.yaml`` keys in their readers); :func:`checked` turns
a violation into ``TraceError(file, "<setting> must be …, got …")`` before anything is
allocated.

Kinds are strict: a boolean is a JSON boolean (``"no"`` is an error, never true), an
integer is an integer (not ``1e3``, not ``"16"``, not ``true``). Ceilings are physical,
not guesses about workloads, and far above every real input: 2^53 tokens (the largest
integer a float64 holds exactly), 2^24 KV blocks (16.7 M: ~2 GB of block bookkeeping in
a replay, 60 times the largest real cache), 4096 layers, 16384 experts, 1024 parallel
ranks, 65,536 concurrent users.
"""

from __future__ import annotations

from mist.traces.errors import TraceError
from mist.traces.rules import Rule, check_document, check_settings, checked  # noqa: F401 (the one Rule)

MAX_TOKENS = 2**53
MAX_KV_BLOCKS = 2**24
MAX_LAYERS = 4096
MAX_EXPERTS = 2**14
MAX_RANKS = 1024
MAX_USERS = 2**16
#: one request's prompt or output (tokens); the longest contexts served are ~10 M tokens
MAX_REQUEST_TOKENS = 2**24
#: the step budget: cost tables hold one entry per token of it
MAX_STEP_TOKENS = 2**22
MAX_SEQS = 2**20


def _int(least: int, most: int) -> Rule:
    return Rule("int", least, most)


#: engine settings a run's ``meta.json`` may give (vLLM names), wherever they are read from
ENGINE_RULES: dict[str, Rule] = {
    "tensor_parallel_size": _int(1, MAX_RANKS),
    "data_parallel_size": _int(1, MAX_RANKS),
    "pipeline_parallel_size": _int(1, MAX_RANKS),
    "block_size": _int(1, 2**16),
    "max_num_batched_tokens": _int(1, MAX_STEP_TOKENS),
    "max_num_seqs": _int(1, MAX_SEQS),
    "max_model_len": _int(1, MAX_TOKENS),
    "num_gpu_blocks": _int(1, MAX_KV_BLOCKS),
    "num_gpu_blocks_override": _int(1, MAX_KV_BLOCKS),
    "kv_cache_size_tokens": _int(1, MAX_TOKENS),
    "gpu_memory_utilization": Rule("number", 0, 1, above=True),
    "enable_prefix_caching": Rule("bool"),
    "enable_chunked_prefill": Rule("bool"),
    "async_scheduling": Rule("bool"),
    "enable_expert_parallel": Rule("bool"),
}


#: where a run's ``meta.json`` holds engine settings (:func:`mist.replay.deployment.engine_config`)
ENGINE_SECTIONS = (("engine_kwargs",), ("engine_effective",), ("kv_cache",),
                   ("resolved_config", "scheduler_config"), ("resolved_config", "cache_config"))


def check_engine_meta(meta: dict, path) -> None:
    """Check the engine settings in every section of a run's ``meta.json`` that holds
    them (:data:`ENGINE_SECTIONS`) against :data:`ENGINE_RULES`; a section that is not
    an object is an error too."""
    for keys in ENGINE_SECTIONS:
        section = meta
        for key in keys:
            section = section.get(key) if isinstance(section, dict) else None
        if section is None:
            continue
        if not isinstance(section, dict):
            raise TraceError(path, f"{'.'.join(keys)} must be an object of engine settings, got {section!r}")
        check_settings(section, ENGINE_RULES, path, ".".join(keys) + ".")


def check_memory(memory_bytes, path) -> float:
    """Device memory (bytes) a KV cache is sized from: a positive finite number."""
    return float(checked(memory_bytes, Rule("number", 0, 2.0**60, above=True), path, "device memory (bytes)"))


def check_sizes(blocks: int, source: str, step_table_tokens: int, path) -> None:
    """Sizes a replay allocates for, whatever they were derived from: KV blocks (from
    ``source``) within :data:`MAX_KV_BLOCKS` (a replay keeps bookkeeping for every
    block) and the step-cost tables' tokens (the step budget, times the data-parallel
    ranks whose MoE layers run together) within :data:`MAX_STEP_TOKENS`."""
    if blocks > MAX_KV_BLOCKS:
        raise TraceError(path, f"num_gpu_blocks from {source} is {blocks}, above the ceiling {MAX_KV_BLOCKS} "
                               "(a replay allocates every block)")
    if step_table_tokens > MAX_STEP_TOKENS:
        raise TraceError(path, f"max_num_batched_tokens x data_parallel_size (expert parallel) = "
                               f"{step_table_tokens} must be at most {MAX_STEP_TOKENS} (cost tables hold every token)")


#: ceilings of a model config's canonical sizes (:func:`mist.profiles.model.load_model_config`): far above any real
#: model, low enough that nothing sized from them (per-layer loops, cost tables, weight
#: bytes) can exhaust the machine
_WIDTH = 2**24
MODEL_FIELD_MAX: dict[str, int] = {
    "num_layers": MAX_LAYERS, "hidden_size": _WIDTH, "num_heads": 2**16, "num_kv_heads": 2**16,
    "intermediate_size": _WIDTH, "vocab_size": 2**26, "num_experts": MAX_EXPERTS,
    "num_experts_per_tok": MAX_EXPERTS, "moe_intermediate_size": _WIDTH, "max_position_embeddings": MAX_TOKENS,
}
#: other raw keys read when present (null = absent): integers in range, or booleans
MODEL_RAW_RULES: dict[str, Rule] = {
    **{k: Rule("int", 0, _WIDTH) for k in ("head_dim", "kv_lora_rank", "q_lora_rank", "qk_nope_head_dim",
                                           "qk_rope_head_dim", "v_head_dim", "shared_expert_intermediate_size",
                                           "shared_intermediate_size")},
    "n_shared_experts": Rule("int", 0, MAX_EXPERTS),
    "first_k_dense_replace": Rule("int", 0, MAX_LAYERS),
    "moe_layer_freq": Rule("int", 1, MAX_LAYERS),
    "decoder_sparse_step": Rule("int", 1, MAX_LAYERS),
    **{k: Rule("bool") for k in ("tie_word_embeddings", "attention_bias", "use_qk_norm", "use_sliding_window")},
}


def check_model_raw(cfg: dict, path) -> None:
    """Check the raw keys of a model config that :data:`MODEL_RAW_RULES` declares, and
    ``mlp_only_layers`` (a list of layer indices)."""
    check_settings(cfg, MODEL_RAW_RULES, path)
    layers = cfg.get("mlp_only_layers")
    if layers is not None and not (isinstance(layers, list) and all(
            Rule("int", 0, MAX_LAYERS).problem(i) is None for i in layers)):
        raise TraceError(path, f"mlp_only_layers must be a list of layer indices, got {layers!r}")
