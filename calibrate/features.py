"""Which feature columns drive each operator's latency, and how often it runs.

Vary data, not classes: every operator is fitted by the same
:class:`mist.calibrate.estimator.LatencyModel`; this table says which columns of the
``operator_profile`` table are its inputs and how the step cost model counts it.

``scope``: ``"layer"`` ops run once per decoder layer; ``"model"`` ops once per step.
"""

from __future__ import annotations

DENSE = ("tokens",)
PER_SEQUENCE = ("sequences",)
ATTENTION = ("prefill_chunk", "kv_prefill", "n_decode", "kv_decode")

# operator -> (feature columns, scope)
OPERATORS: dict[str, tuple[tuple[str, ...], str]] = {
    "qkv_proj": (DENSE, "layer"),
    "o_proj": (DENSE, "layer"),
    "gate_up_proj": (DENSE, "layer"),
    "down_proj": (DENSE, "layer"),
    "act_fn": (DENSE, "layer"),
    "rotary_emb": (DENSE, "layer"),
    "qk_norm": (DENSE, "layer"),
    # two RMSNorms per decoder layer (input and post-attention); profiled once
    "layernorm": (DENSE, "layer"),
    "embedding": (DENSE, "model"),
    "final_layernorm": (DENSE, "model"),
    "lm_head": (PER_SEQUENCE, "model"),
    "sampler": (PER_SEQUENCE, "model"),
    "attention": (ATTENTION, "layer"),
    # a mixture-of-experts MLP layer (replaces gate_up/act/down in MoE layers)
    "moe": (("tokens", "activated_experts"), "layer"),
    # engine host time per step outside the forward pass (scheduling, input
    # preparation, output processing); measured by ``mist profile`` on CPUs
    "step_overhead": (("sequences", "tokens"), "model"),
}

# How many times a per-layer operator runs in one decoder layer.
CALLS_PER_LAYER = {"layernorm": 2}

# The dense MLP of a decoder layer; MoE layers run ``moe`` instead.
MLP = ("gate_up_proj", "down_proj", "act_fn")
# Operators every decoder needs besides its MLPs; ``qk_norm`` only where the model
# has it (Qwen3).
COMMON = ("qkv_proj", "o_proj", "layernorm", "embedding", "final_layernorm", "lm_head",
          "sampler", "attention")
REQUIRED = COMMON + MLP  # a dense decoder


def features_of(operator: str) -> tuple[str, ...]:
    """Feature columns of ``operator``; KeyError names the known operators."""
    try:
        return OPERATORS[operator][0]
    except KeyError:
        raise KeyError(f"unknown operator {operator!r}; known: {sorted(OPERATORS)}") from None
