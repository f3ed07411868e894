"""Assemble a replay from data: engine settings, KV capacity, step cost, requests.

Everything here comes from the run's engine settings (``meta.json``), the model
config, the hardware datasheet and the operator profile — never from the measured
request timings a replay is validated against.
"""

from __future__ import annotations

import math
from contextlib import suppress

import numpy as np
import pyarrow as pa

from mist.calibrate.estimator import LatencyModel
from mist.calibrate.features import CALLS_PER_LAYER, COMMON, MLP, OPERATORS
from mist.calibrate.lookup import GridLookup, integer_table
from mist.calibrate.skew import SkewAlpha
from mist.profiles.limits import check_engine_meta, check_memory, check_sizes
from mist.profiles.model import ModelConfig, dtype_bytes
from mist.replay.config import (
    ARRIVAL,
    BLOCK_SIZE,
    GPU_MEMORY_UTILIZATION,
    MAX_NUM_BATCHED_TOKENS,
    MAX_NUM_SEQS,
    EngineConfig,
)
from mist.replay.request import Request
from mist.replay.step_cost import StepCost
from mist.traces.errors import ReplayError, TraceError

# Memory vLLM keeps outside weights and KV (:func:`non_kv_bytes`). Host-side figures
# observed by ai-dynamo/aiconfigurator (systems/<gpu>.yaml, ``misc``, in
# ../shared/data/profiles/aiconfigurator/h100_sxm.yaml): ``other_mem`` "increase from
# 551MB to 3.5GB for safer deployment" (the observed 551 MB, before their planning margin)
# and ``nccl_mem`` per TP degree.
OTHER_NON_KV_BYTES = 551 * 2**20
NCCL_BYTES = {1: 0, 2: 358612992, 4: 411041792}  # other TP degrees: the 4-GPU figure (8 GPUs measure the same)
# Latency of one all-reduce launch (s): CUDA-graph captured NCCL / custom all-reduce
# over PCIe/NVLink is of this order; bandwidth comes from the datasheet.
ALLREDUCE_LATENCY_S = 8e-6


def non_kv_bytes(model: ModelConfig, tp: int, max_num_batched_tokens: int, max_num_seqs: int,
                 act_bytes: float = 2.0) -> float:
    """Memory (bytes per GPU) vLLM keeps from the KV cache besides the weights.

    vLLM sizes the KV cache after a profiling forward of a full token budget and a dummy
    sampler run over ``max_num_seqs`` rows; what it keeps back is that run's activation
    peak plus non-torch allocations. Here: the larger of the widest transient of one
    layer over the budget (gate/up output, activation output and the residual stream:
    ``T * (3 * w / tp + h)`` at ``act_bytes``, ``w`` the MLP width or ``top_k *
    moe_intermediate_size``) and the sampler's fp32 logits and probabilities (``2 * S *
    vocab * 4``), plus :data:`OTHER_NON_KV_BYTES` and the NCCL buffers of
    :data:`NCCL_BYTES`.
    """
    width = max(model.intermediate_size, model.num_experts_per_tok * model.moe_intermediate_size)
    layer = max_num_batched_tokens * (3 * width / tp + model.hidden_size) * act_bytes
    sampler = 2 * min(max_num_seqs, max_num_batched_tokens) * model.vocab_size * 4
    nccl = NCCL_BYTES.get(tp, NCCL_BYTES[4])
    return max(layer, sampler) + OTHER_NON_KV_BYTES + nccl


def kv_blocks(model: ModelConfig, memory_bytes: float, utilization: float, tp: int,
              block_size: int, kv_dtype_bytes: float = 2.0, weight_dtype_bytes: float | None = None,
              expert_ranks: int | None = None, max_num_batched_tokens: int = MAX_NUM_BATCHED_TOKENS,
              max_num_seqs: int = MAX_NUM_SEQS, expert_dtype_bytes: float | None = None) -> int:
    """KV-cache blocks per replica, as vLLM sizes them.

    ``memory * utilization - weights on one GPU - non-KV memory`` (:func:`non_kv_bytes`
    for the engine's token budget and sequence cap), divided by the per-rank KV bytes
    of one block. Weights at ``weight_dtype_bytes`` per parameter (default: the config's
    ``torch_dtype``), the routed experts at ``expert_dtype_bytes`` when given (gpt-oss
    keeps them in MXFP4); a GPU holds ``1/tp`` of the dense weights and
    ``1/expert_ranks`` of the routed experts (default ``tp``: experts sharded like the
    rest; with expert parallelism over TP x DP ranks each data-parallel replica keeps its
    own dense weights but only its share of the experts). A model that mixes
    sliding-window and full-attention layers grows per token only in its full-attention
    layers (a sliding layer keeps its window: vLLM's hybrid KV-cache manager), so only
    those count per block.
    """
    if weight_dtype_bytes is None:
        weight_dtype_bytes = dtype_bytes(model.torch_dtype)
    if expert_dtype_bytes is None:
        expert_dtype_bytes = weight_dtype_bytes
    experts = model.routed_expert_param_count() * expert_dtype_bytes
    dense = model.weight_bytes(weight_dtype_bytes, expert_dtype_bytes) - experts
    free = memory_bytes * utilization - dense / tp - experts / max(expert_ranks or tp, tp)
    free -= non_kv_bytes(model, tp, max_num_batched_tokens, max_num_seqs)
    growing = 1.0
    if 0 < model.num_sliding_layers < model.num_layers:
        growing = (model.num_layers - model.num_sliding_layers) / model.num_layers
    per_block = model.kv_bytes_per_token(kv_dtype_bytes) * growing / tp * block_size
    return max(0, int(free // per_block))


def check_profile(models: dict[str, LatencyModel], model: ModelConfig, tp: int, where: str) -> None:
    """Raise TraceError naming the first operator the model needs that the profile lacks."""
    needed = list(COMMON) + (["qk_norm"] if model.qk_norm else [])
    if model.num_moe_layers:
        needed.append("moe")
    if model.num_layers - model.num_moe_layers:
        needed.extend(MLP)
    for op in needed:
        if op not in models:
            raise TraceError(where, f"profile has no operator {op!r} at tp={tp}, needed by {model.name}")


def allreduce_s(num_bytes: float, tp: int, link_bw_bytes_s: float,
                latency_s: float = ALLREDUCE_LATENCY_S) -> float:
    """Ring all-reduce time (s) of ``num_bytes`` across ``tp`` ranks."""
    if tp <= 1:
        return 0.0
    return latency_s + 2.0 * (tp - 1) / tp * num_bytes / link_bw_bytes_s


def allgather_s(num_bytes, tp: int, link_bw_bytes_s: float, latency_s: float = ALLREDUCE_LATENCY_S):
    """Ring all-gather time (s) of a tensor of ``num_bytes`` in all (a number or an
    array), ``1/tp`` of it on each of ``tp`` ranks: every rank receives the other ranks'
    ``(tp - 1) / tp`` share."""
    if tp <= 1:
        return 0.0
    return latency_s + (tp - 1) / tp * num_bytes / link_bw_bytes_s


def expert_parallel(cfg: EngineConfig) -> int:
    """Ranks the experts are spread over: TP x DP with expert parallelism, else 1."""
    return cfg.tensor_parallel * cfg.data_parallel if cfg.expert_parallel else 1


def dp_group(cfg: EngineConfig) -> int:
    """Data-parallel ranks that run their MoE layers together: all of them with expert
    parallelism (the experts are spread over every rank), else 1 (independent replicas)."""
    return cfg.data_parallel if cfg.expert_parallel else 1


def cuda_graph_limit(cfg: EngineConfig) -> int:
    """Largest step (tokens) vLLM runs as a captured CUDA graph by default:
    ``min(2 * max_num_seqs, 512, max_num_batched_tokens)`` (vLLM's default
    ``max_cudagraph_capture_size`` without speculative decoding)."""
    return min(2 * cfg.max_num_seqs, 512, cfg.max_num_batched_tokens)


def moe_table(moe: LatencyModel, model: ModelConfig, cfg: EngineConfig) -> np.ndarray:
    """One MoE layer's expert time (s) on one rank when ``G`` tokens reach the layer,
    ``G = 0 .. ranks x budget`` (``ranks`` = :func:`dp_group`).

    Tokens route to ``k`` of ``E`` experts. With expert parallelism over ``e = TP x DP``
    ranks, vLLM's default exchange (all-gather of the DP ranks' hidden states, then
    reduce-scatter of the outputs) hands every rank the ``G`` tokens of all DP ranks
    together: a rank gets ``G * k / e`` token-expert pairs for its ``E / e`` experts, of
    which ``(E / e) * (1 - (1 - k/E) ** G)`` are hit, and the profile's
    ``moe(tokens, activated_experts)`` is looked up at the same pairs per expert
    (``tokens = G / e``). Within one DP rank the TP ranks already hold every token, so
    expert parallelism over TP alone needs no exchange (the layer's TP all-reduce
    combines the experts' outputs) and ``G`` is the rank's own step. The exchange itself
    is :meth:`mist.replay.step_cost.StepCost.group_step_s`'s, since it depends on how the tokens are
    spread over the ranks.
    """
    E, k = model.num_experts, max(model.num_experts_per_tok, 1)
    e = expert_parallel(cfg)
    G = np.arange(cfg.max_num_batched_tokens * dp_group(cfg) + 1, dtype=float)
    hit = (E / e) * (1.0 - (1.0 - k / E) ** G)
    # Below the profile's fewest tokens and experts (a bundle's moe.csv starts at 1 token
    # on top-k experts; G < e tokens leave a rank fewer) the grid is not extended
    # linearly, which can reach zero: the smallest measured cell is scaled by the
    # experts hit, as a layer this small streams the hit experts' weights and little else.
    lo_tokens, lo_experts = (float(a[0]) for a in moe.axes_)
    hit = np.maximum(hit, 1.0)
    out = moe.predict(np.column_stack([np.maximum(G / e, lo_tokens), np.maximum(hit, lo_experts)]))
    out *= np.minimum(hit / lo_experts, 1.0)
    out[0] = 0.0
    return out


def _token_tables(models: dict[str, LatencyModel], max_tokens: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The operators looked up by tokens, for ``T = 0 .. max_tokens``: those run once a
    step, those of every layer, and those of a dense MLP (seconds, each operator times its
    calls per layer)."""
    layer = np.zeros(max_tokens + 1)
    mlp = np.zeros(max_tokens + 1)
    once = np.zeros(max_tokens + 1)
    for op, (feats, scope) in OPERATORS.items():
        if feats != ("tokens",) or op not in models:
            continue
        table = integer_table(models[op], max_tokens) * CALLS_PER_LAYER.get(op, 1)
        if op in MLP:
            mlp += table
        elif scope == "layer":
            layer += table
        else:
            once += table
    return once, layer, mlp


def _allreduce_table(act_bytes: np.ndarray, tp: int, link_bw_bytes_s: float, link_latency_s: float,
                     all_reduce=None) -> np.ndarray:
    """Two TP all-reduces of one layer's activations (s) by tokens (``act_bytes`` per
    token count): measured kernels when given, else a ring over the link."""
    if all_reduce is not None and tp > 1:
        comm = 2 * np.asarray(all_reduce(np.maximum(act_bytes, 1)), dtype=float)
        comm[0] = 0.0
        return comm
    return np.array([2 * allreduce_s(b, tp, link_bw_bytes_s, link_latency_s) if b else 0.0 for b in act_bytes])


def _per_seq_table(models: dict[str, LatencyModel], model: ModelConfig, cfg: EngineConfig,
                   link_bw_bytes_s: float, link_latency_s: float, all_gather=None) -> np.ndarray:
    """lm_head + sampler (s) by sequences ``S = 0 .. max_num_seqs + 1``, with the
    all-gather of the logits' vocabulary shards under tensor parallelism."""
    max_seqs = cfg.max_num_seqs + 1
    per_seq = integer_table(models["lm_head"], max_seqs) + integer_table(models["sampler"], max_seqs)
    if cfg.tensor_parallel > 1:  # each rank computes its vocabulary shard's logits; vLLM all-gathers them
        logit_bytes = np.arange(max_seqs + 1) * model.vocab_size * dtype_bytes(model.torch_dtype)
        gather = np.asarray(all_gather(np.maximum(logit_bytes, 1)) if all_gather is not None else
                            allgather_s(logit_bytes, cfg.tensor_parallel, link_bw_bytes_s, link_latency_s), dtype=float)
        gather[0] = 0.0
        per_seq = per_seq + gather
    return per_seq


def build_step_cost(models: dict[str, LatencyModel], model: ModelConfig, cfg: EngineConfig,
                    link_bw_bytes_s: float, skew_alpha: float = 0.0,
                    link_latency_s: float = ALLREDUCE_LATENCY_S, skew: SkewAlpha | None = None,
                    all_reduce=None, all_gather=None) -> StepCost:
    """Compile the per-step cost tables for one replica.

    ``all_reduce``: optional ``f(bytes array) -> seconds array`` for one TP all-reduce
    (measured kernels); by default a ring over the link's bandwidth and latency.
    ``all_gather`` likewise for the logits' all-gather.
    """
    once, layer, mlp = _token_tables(models, cfg.max_num_batched_tokens)
    act_bytes = np.arange(cfg.max_num_batched_tokens + 1) * model.hidden_size * dtype_bytes(model.torch_dtype)
    comm = _allreduce_table(act_bytes, cfg.tensor_parallel, link_bw_bytes_s, link_latency_s, all_reduce)
    n_moe = model.num_moe_layers
    # the vocabulary-parallel embedding sums its ranks' lookups: one more all-reduce a step
    dense = once + comm / 2 + model.num_layers * (layer + comm) + (model.num_layers - n_moe) * mlp
    group = {}
    if n_moe:
        experts = n_moe * moe_table(models["moe"], model, cfg)
        if dp_group(cfg) == 1:
            dense = dense + experts
        else:  # the DP ranks' MoE layers see all their tokens: costed per step of the group
            hidden_bytes = model.hidden_size * dtype_bytes(model.torch_dtype)
            group = dict(moe_s=tuple(experts.tolist()),
                         exchange_s=n_moe * 2 * link_latency_s,
                         exchange_s_per_token=n_moe * 2 * hidden_bytes / link_bw_bytes_s,
                         graph_tokens=cuda_graph_limit(cfg))
    per_seq = _per_seq_table(models, model, cfg, link_bw_bytes_s, link_latency_s, all_gather)
    return StepCost(
        dense_s=tuple(dense.tolist()), per_seq_s=tuple(per_seq.tolist()),
        attention=GridLookup.from_model(models["attention"]), num_layers=model.num_layers,
        skew_alpha=skew.default if skew is not None else skew_alpha, skew=skew,
        overhead_s=cfg.step_overhead_s,
        host=GridLookup.from_model(models["step_overhead"]) if "step_overhead" in models else None,
        **group,
    )


def requests_from_table(table: pa.Table, arrival: str = ARRIVAL) -> list[Request]:
    """Replay requests from a ``requests`` table, in arrival order.

    ``arrival="engine"`` feeds each request to the simulated engine when the real
    engine received it (``queued_s``, when recorded), so the front end's measured
    delay is replayed rather than modelled; ``"client"`` uses ``arrival_s``.
    """
    cols = table.select(["request_id", "arrival_s", "queued_s", "input_tokens", "output_tokens",
                         "prompt_token_ids"]).to_pydict()
    out = []
    for i, rid in enumerate(cols["request_id"]):
        t = cols["arrival_s"][i]
        if arrival == "engine" and cols["queued_s"][i] is not None and not math.isnan(cols["queued_s"][i]):
            t = cols["queued_s"][i]
        out.append(Request(i, rid, t, int(cols["input_tokens"][i]), int(cols["output_tokens"][i]),
                           cols["prompt_token_ids"][i]))
    out.sort(key=lambda r: (r.arrival_s, r.index))
    return out


def _version_at_least(version: str, major: int, minor: int) -> bool:
    try:
        parts = [int(p) for p in str(version).split(".")[:2]]
    except ValueError:
        return True
    return tuple(parts) >= (major, minor)


#: first vLLM release that schedules asynchronously unless told not to (vllm-project/vllm
#: pull request 27614, "[Core] Enable async scheduling by default", landed after 0.13.0
#: was cut; until then ``--async-scheduling`` was opt-in)
ASYNC_DEFAULT_SINCE = (0, 14)


def async_by_default(version) -> bool:
    """Whether vLLM ``version`` schedules asynchronously by default (True for a version
    that names no release, e.g. a nightly build)."""
    return _version_at_least(str(version or "").strip().removeprefix("v"), *ASYNC_DEFAULT_SINCE)


def served_dtype_bytes(model: ModelConfig, dtype=None, kv_cache_dtype=None) -> tuple[float, float]:
    """Bytes per weight and per KV-cache element as vLLM serves ``model``: ``dtype`` as
    given, else (``auto``) the config's ``torch_dtype`` with float32 served as 16-bit;
    the KV cache in that dtype unless ``kv_cache_dtype`` names an 8-bit one (``fp8``,
    ``fp8_e4m3``, ``fp8_e5m2``)."""
    weights = 2.0  # (an unknown dtype name keeps what is known so far)
    with suppress(ValueError):
        weights = min(dtype_bytes(model.torch_dtype), 2.0)
    if dtype not in (None, "auto"):
        with suppress(ValueError):
            weights = dtype_bytes(dtype)
    kv = 1.0 if str(kv_cache_dtype or "auto").lower().startswith("fp8") else weights
    return weights, kv


def recorded_engine(meta: dict, path="meta.json") -> dict:
    """Settings the engine itself resolved, as later LLMServingSim recordings store them
    beside ``engine_kwargs`` (vLLM 0.28 runs: ``resolved_config`` and ``kv_cache``).

    KV blocks are per engine (one DP rank): ``resolved_config.cache_config.kv_cache_size_tokens``
    over the block size where given; else ``kv_cache.num_gpu_blocks``, which such a
    recording sums over its data-parallel ranks (a DP 2 run stores 75,638 blocks beside
    605,104 tokens of 16-token blocks per rank), so it is divided by ``data_parallel_size``.
    Every section's settings are checked first (:func:`mist.profiles.limits.check_engine_meta`).
    """
    check_engine_meta(meta, path)
    out: dict = {}
    cache = meta.get("kv_cache") if isinstance(meta.get("kv_cache"), dict) else {}
    resolved = meta.get("resolved_config") if isinstance(meta.get("resolved_config"), dict) else {}
    sched = resolved.get("scheduler_config") if isinstance(resolved.get("scheduler_config"), dict) else {}
    rcache = resolved.get("cache_config") if isinstance(resolved.get("cache_config"), dict) else {}
    for key in ("async_scheduling", "max_num_batched_tokens", "max_num_seqs"):
        if sched.get(key) is not None:
            out[key] = sched[key]
    for key in ("block_size", "gpu_memory_utilization", "enable_prefix_caching"):
        if cache.get(key) is not None:
            out[key] = cache[key]
    kwargs = meta.get("engine_kwargs") or {}
    block = int(out.get("block_size") or rcache.get("block_size") or kwargs.get("block_size") or BLOCK_SIZE)
    tokens = rcache.get("kv_cache_size_tokens")
    if tokens:
        out["num_gpu_blocks"] = int(tokens) // block
    elif cache.get("num_gpu_blocks"):
        dp = int(kwargs.get("data_parallel_size") or 1)
        out["num_gpu_blocks"] = int(cache["num_gpu_blocks"]) // dp
    return out


def engine_config(meta: dict, model: ModelConfig, memory_bytes=None, bundle_meta: dict | None = None,
                  path="meta.json", **overrides) -> EngineConfig:
    """Engine settings of a run, most trusted source first.

    1. ``meta["engine_effective"]``: what the live engine reported (``mist record``
       writes it: block size, real KV block count, async scheduling …);
    2. what the engine resolved, where a recording stores it (:func:`recorded_engine`);
    3. ``meta["engine_kwargs"]``: what the engine was asked for;
    4. vLLM defaults: block size from the profile's engine or 16 (GPU), prefix caching
       and chunked prefill on (v1), async scheduling on from vLLM 0.14, KV blocks
       sized from memory (``memory_bytes``: a number or a zero-argument callable,
       only evaluated when the run does not say).
    Each setting is checked (:data:`mist.profiles.limits.ENGINE_RULES`; ``path`` names
    the run's file) before any table or cache is sized from it.
    """
    # a setting given as null is vLLM's default (e.g. async_scheduling: None = "decide"), not off
    kw = {k: v for k, v in (meta.get("engine_kwargs") or {}).items() if v is not None}
    kw.update({k: v for k, v in recorded_engine(meta, path).items() if v is not None})
    kw.update({k: v for k, v in (meta.get("engine_effective") or {}).items() if v is not None})
    eff = dict((bundle_meta or {}).get("engine_effective") or {})
    check_engine_meta({"engine_effective": eff}, "the profile bundle's meta")
    tp = int(kw.get("tensor_parallel_size") or 1)
    block = int(kw.get("block_size") or eff.get("block_size") or BLOCK_SIZE)
    budget = int(kw.get("max_num_batched_tokens") or MAX_NUM_BATCHED_TOKENS)
    seqs = int(kw.get("max_num_seqs") or MAX_NUM_SEQS)
    dp = int(kw.get("data_parallel_size") or 1)
    version = str(meta.get("vllm_version", ""))
    blocks, source = kw.get("num_gpu_blocks") or kw.get("num_gpu_blocks_override"), "the run's settings"
    if not blocks:
        util = float(kw.get("gpu_memory_utilization") or eff.get("gpu_memory_utilization")
                     or GPU_MEMORY_UTILIZATION)
        memory = memory_bytes() if callable(memory_bytes) else memory_bytes
        if memory is None:
            raise ReplayError("KV capacity unknown: the run gives no num_gpu_blocks and no device memory")
        weights, kv_bytes = served_dtype_bytes(model, kw.get("dtype"), kw.get("kv_cache_dtype"))
        blocks, source = kv_blocks(model, check_memory(memory, path), util, tp, block, kv_bytes, weights,
                                   expert_ranks=tp * dp if kw.get("enable_expert_parallel") else tp,
                                   max_num_batched_tokens=budget, max_num_seqs=seqs), f"{memory:g} bytes of memory"
    check_sizes(blocks, source, budget * (dp if kw.get("enable_expert_parallel") and model.is_moe() else 1), path)
    settings = dict(
        max_num_seqs=seqs, max_num_batched_tokens=budget, block_size=block, tensor_parallel=tp, data_parallel=dp,
        expert_parallel=bool(kw.get("enable_expert_parallel", False)),
        enable_prefix_caching=bool(kw.get("enable_prefix_caching", True)),
        enable_chunked_prefill=bool(kw.get("enable_chunked_prefill", True)),
        async_scheduling=bool(kw.get("async_scheduling", async_by_default(version))),
        num_gpu_blocks=int(blocks),
    )
    settings.update(overrides)
    return EngineConfig(**settings)
