"""Compose a model's engine-step cost from kernel measurements.

Where a layer-profile bundle measures a model's decoder layer directly, a kernel
database measures the kernels it is made of. This module writes the same
per-layer operator tables a bundle holds (``qkv_proj`` … by tokens, ``lm_head`` by
sequences, ``attention`` on the 4-D batch grid) from kernel latencies, so the
replay's cost model (:func:`mist.replay.deployment.build_step_cost`) needs no special case:

========================  ===================================================================
operator (one TP rank)    kernel
========================  ===================================================================
qkv_proj                  GEMM m=T, n=(H + 2 KV) d / tp, k=hidden
o_proj                    GEMM m=T, n=hidden, k=H d / tp
gate_up_proj              GEMM m=T, n=2 I / tp, k=hidden
down_proj                 GEMM m=T, n=hidden, k=I / tp
layernorm (x2), act_fn,   memory-bound: bytes moved / (bandwidth x efficiency) + launch
rotary_emb, qk_norm,
embedding, final norm,
sampler
lm_head                   GEMM m=S, n=vocab / tp, k=hidden (unquantised)
attention                 prefill chunk: context attention of the chunk over its prefix;
                          decodes: generation attention (batch, mean KV length)
TP all-reduce (x2/layer)  measured custom / NCCL all-reduce of T x hidden x 2 bytes
moe (MoE layers)          router GEMM m=T, n=E, k=hidden (bf16); per GEMM of the experts
                          (gate/up n=2 I_e, k=hidden; down n=hidden, k=I_e) the fused
                          kernel's time max(one GEMM over all P token-expert pairs, the
                          weights of the h experts hit streamed at the memory roofline);
                          activation, top-k and token permutation as memory-bound kernels;
                          shared experts as plain TP-sharded GEMMs
========================  ===================================================================

``T`` tokens and ``S`` sequences in the step; ``H``/``KV`` query/KV heads of size
``d``; ``I`` the MLP width. A prefill chunk of ``c`` tokens after ``p`` cached ones
costs the full causal attention of ``p + c`` tokens times the share of its
score matrix the chunk owns, ``c (2p + c) / (p + c)^2``, and at least the
attention of the chunk alone.

MoE layers are tabled like a bundle's ``moe.csv``: by ``tokens`` (the step's tokens
over the expert-parallel degree ``ep``, so ``P = tokens x top-k`` pairs reach a
rank) and ``activated_experts`` (``h`` of the rank's ``E / ep`` experts hit);
:func:`mist.replay.deployment.moe_table` picks the expected ``h``. Without expert
parallelism every rank holds every expert at width ``I_e = I / tp``; with it
(``ep = tp``) a rank holds ``E / tp`` whole experts. The fused-MoE kernel is one
launch over all experts, so its time is bounded below both by streaming the hit
experts' weights and by one GEMM's compute over all pairs; no MoE kernel was
measured in the databases, so these rows count as GEMM and roofline queries. Experts
in a 4-bit format no GEMM table measures (gpt-oss MXFP4 on Hopper) run weight-only:
weights streamed at 4 bits, compute from the bf16 GEMM table.

Sliding-window layers (gpt-oss: every other layer, 128 tokens) attend over the
window only: decodes over ``min(kv, window)`` keys, prefill chunks in window-long
pieces after at most a window of keys; the attention table is the mean over the
model's full and windowed layers.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from mist.calibrate.kernels import KernelSet, base_dtype
from mist.profiles.model import ModelConfig, dtype_bytes
from mist.traces.schema import OPERATOR_PROFILE, from_columns

ACT_BYTES = 2  # activations are bf16/fp16 in every deployment modelled here
#: 4-bit weight formats that run weight-only (bf16 compute) where no GEMM table measures them
WEIGHT_ONLY_4BIT = ("mxfp4", "nvfp4", "int4", "int4_wo")
#: the fused-MoE rate key of experts run weight-only at 4 bits (Marlin-style W4A16 kernels)
W4A16 = "w4a16"
#: ``efficiency`` key (:func:`moe_layer`): the tokens per expert at which a grouped MoE
#: kernel multiplies at half its rate. It works in blocks of rows per expert, and an
#: expert with fewer tokens than a block leaves the rest of it idle; absent or 0: one
#: rate at every size
TOKENS_PER_EXPERT_HALF = "tokens_per_expert_half"


def weight_only(gemm_dtype: str, ks: KernelSet) -> bool:
    """Whether experts of ``gemm_dtype`` run weight-only here (bf16 multiplications of
    dequantised weights): a 4-bit format no GEMM table of ``ks`` measures, or any
    format the device has no tensor cores for (:meth:`KernelSet.weight_only`)."""
    return (gemm_dtype in WEIGHT_ONLY_4BIT and gemm_dtype not in ks.gemm_dtypes()) or ks.weight_only(gemm_dtype)


def moe_rate_key(gemm_dtype: str, ks: KernelSet, efficiency: dict | None = None) -> str:
    """Which fused-MoE rate (:func:`moe_layer`'s ``efficiency``) experts of ``gemm_dtype``
    take: :data:`W4A16` when they run weight-only (Marlin-style) — falling back on the bf16
    rate when ``efficiency`` is given and has none — else their compute dtype."""
    if weight_only(gemm_dtype, ks):
        return W4A16 if efficiency is None or W4A16 in efficiency else "bfloat16"
    return base_dtype(gemm_dtype)


def _geometric(lo: int, hi: int, factor: float = 2.0) -> list[int]:
    out, x = [], float(lo)
    while x < hi:
        out.append(int(round(x)))
        x *= factor
    out.append(int(hi))
    return sorted(set(out))


def token_grid(budget: int) -> np.ndarray:
    """Token counts at which dense operators are evaluated (exact to 64, then x1.25)."""
    return np.array(sorted(set(range(1, min(budget, 64) + 1)) | set(_geometric(64, budget, 1.25))), dtype=float)


def attention_grid(budget: int, max_seqs: int, max_len: int) -> tuple[np.ndarray, ...]:
    chunks = np.array([0] + _geometric(16, budget), dtype=float)
    kv = np.array([0] + _geometric(16, max_len), dtype=float)
    n = np.array([0] + _geometric(1, max_seqs), dtype=float)
    return chunks, kv, n, kv


def prefill_attention(ks: KernelSet, chunk, prefix, shape: tuple, kv_dtype: str) -> np.ndarray:
    """Attention (s) of prefill chunks of ``chunk`` tokens after ``prefix`` cached tokens."""
    chunk, prefix = np.broadcast_arrays(np.asarray(chunk, dtype=float), np.asarray(prefix, dtype=float))
    total = chunk + prefix
    full = ks.context_attention(np.ones(total.size), np.maximum(total, 1).ravel(), *shape, kv_dtype).reshape(total.shape)
    alone = ks.context_attention(np.ones(chunk.size), np.maximum(chunk, 1).ravel(), *shape, kv_dtype).reshape(chunk.shape)
    share = np.where(total > 0, chunk * (2 * prefix + chunk) / np.maximum(total, 1) ** 2, 0.0)
    return np.where(chunk > 0, np.maximum(alone, full * share), 0.0)


def windowed_prefill_attention(ks: KernelSet, chunk, prefix, window: int, shape: tuple,
                               kv_dtype: str) -> np.ndarray:
    """Prefill attention (s) in a layer whose tokens attend back over ``window`` tokens.

    A chunk no longer than the window attends over at most ``window`` cached tokens;
    a longer chunk is taken as ``chunk / window`` window-long pieces, each after a full
    window of keys (every token then attends to exactly ``window`` tokens).
    """
    chunk, prefix = np.broadcast_arrays(np.asarray(chunk, dtype=float), np.asarray(prefix, dtype=float))
    piece = np.minimum(chunk, window)
    before = np.where(chunk > window, float(window), np.minimum(prefix, window))
    t = prefill_attention(ks, piece, before, shape, kv_dtype)
    return t * np.where(piece > 0, chunk / np.maximum(piece, 1.0), 0.0)


def decode_attention(ks: KernelSet, n, kv, shape: tuple, kv_dtype: str) -> np.ndarray:
    """Attention (s) of ``n`` decodes with ``kv`` cached tokens each."""
    n, kv = np.broadcast_arrays(np.asarray(n, dtype=float), np.asarray(kv, dtype=float))
    t = ks.generation_attention(np.maximum(n, 1).ravel(), np.maximum(kv, 1).ravel(), *shape, kv_dtype).reshape(n.shape)
    return np.where(n > 0, t, 0.0)


def moe_layer(ks: KernelSet, model: ModelConfig, tp: int, ep: int, gemm_dtype: str,
              tokens, hit, efficiency: dict | None = None) -> np.ndarray:
    """One MoE layer's time (s) on one rank: ``tokens`` (per EP rank) and ``hit`` experts.

    ``ep`` is 1 (experts TP-sharded) or ``tp`` (experts spread whole over the TP ranks).
    ``gemm_dtype`` is the experts' weight format. A 4-bit format the database has no
    GEMM table for (gpt-oss's MXFP4 on Hopper) runs weight-only, as vLLM's Marlin and
    Triton MoE kernels do there: its weights are streamed at 4 bits and dequantised,
    the multiplications run in bf16 (the bf16 GEMM table gives the compute).

    ``efficiency``: ``{compute dtype: share of the datasheet peak}`` the device's
    fused-MoE kernel reaches (:mod:`mist.calibrate.fused_moe`); weight-only 4-bit experts take
    the :data:`W4A16` entry (a Marlin-style kernel of its own), or the bf16 one when
    there is none. Where given, the experts' multiplications take at least their FLOPs
    at that rate: a grouped kernel over many small per-expert blocks is slower than one
    dense GEMM over all token-expert pairs, which is what the GEMM table alone would
    assume. With :data:`TOKENS_PER_EXPERT_HALF` = ``m_half`` the rate is scaled by
    ``m / (m + m_half)``, ``m`` the token-expert pairs per expert hit.
    """
    tokens, hit = np.broadcast_arrays(np.asarray(tokens, dtype=float), np.asarray(hit, dtype=float))
    shape = tokens.shape
    t, h = tokens.ravel(), hit.ravel()
    hid, k_top, E = model.hidden_size, max(model.num_experts_per_tok, 1), model.num_experts
    width = model.moe_intermediate_size // (1 if ep > 1 else tp)
    step_tokens = t * ep  # every TP rank sees the whole step's tokens
    pairs = np.maximum(t * k_top, 1.0)
    w = dtype_bytes(gemm_dtype)
    compute_dtype = "bfloat16" if weight_only(gemm_dtype, ks) else gemm_dtype
    a = ACT_BYTES
    rate = None
    key = moe_rate_key(gemm_dtype, ks, efficiency)
    if efficiency and efficiency.get(key):
        peak = ks.sheet.peak_flops.get(base_dtype(compute_dtype))
        if peak:
            per_expert = pairs / np.maximum(h, 1.0)
            half = float(efficiency.get(TOKENS_PER_EXPERT_HALF) or 0.0)
            rate = efficiency[key] * peak * per_expert / (per_expert + half)
    out = ks.gemm(np.maximum(step_tokens, 1.0), E, hid, "bfloat16")  # router, unquantised
    out = out + ks.elementwise(step_tokens * E * 4 * 2)  # scores, top-k
    # weight-only experts on a device without tensor cores for their format: the GEMM
    # table's bf16 time less its 16-bit weight reads (KernelSet.gemm); else the compute dtype
    multiply_as = gemm_dtype if ks.weight_only(gemm_dtype) else compute_dtype
    for n, k in ((2 * width if model.mlp_matrices == 3 else width, hid), (hid, width)):
        compute = ks.gemm(pairs, n, k, multiply_as)
        if rate is not None:
            compute = np.maximum(compute, 2.0 * pairs * n * k / rate)
        stream = ks.elementwise(np.maximum(h, 1.0) * n * k * w + pairs * (n + k) * a)
        out = out + np.maximum(compute, stream)
    out = out + ks.elementwise(pairs * 3 * width * a)  # activation
    out = out + ks.elementwise(pairs * hid * a + step_tokens * hid * a)  # weighted sum over top-k
    shared = model.shared_expert_intermediate_size // tp
    if shared:
        m = np.maximum(step_tokens, 1.0)
        out = out + ks.gemm(m, 2 * shared, hid, gemm_dtype) + ks.gemm(m, hid, shared, gemm_dtype)
        out = out + ks.elementwise(m * 3 * shared * a)
    return np.where(t > 0, out, 0.0).reshape(shape)


#: feature columns of the composed operator rows (None where an operator does not use one)
FEATURES = ("tokens", "sequences", "prefill_chunk", "kv_prefill", "n_decode", "kv_decode", "activated_experts")


class _Rows:
    """Operator rows being composed, column by column (latencies in s)."""

    def __init__(self):
        self.columns: dict[str, list] = {"operator": [], "latency_s": [], **{key: [] for key in FEATURES}}

    def add(self, op: str, lat, **feats) -> None:
        n = int(np.size(lat))
        self.columns["operator"] += [op] * n
        self.columns["latency_s"] += [float(x) for x in np.ravel(lat)]
        for key in FEATURES:
            vals = feats.get(key)
            self.columns[key] += [None] * n if vals is None else [int(v) for v in np.ravel(vals)]


def _linear_rows(rows: _Rows, ks: KernelSet, model: ModelConfig, tp: int, gemm_dtype: str, T) -> None:
    """Attention projections and the dense MLP of one TP rank, by tokens."""
    d, hid = model.head_dim, model.hidden_size
    h_tp, kv_tp, i_tp = model.num_heads // tp, max(1, model.num_kv_heads // tp), model.intermediate_size // tp
    rows.add("qkv_proj", ks.gemm(T, (h_tp + 2 * kv_tp) * d, hid, gemm_dtype), tokens=T)
    rows.add("o_proj", ks.gemm(T, hid, h_tp * d, gemm_dtype), tokens=T)
    if model.num_layers > model.num_moe_layers:  # dense MLP layers
        rows.add("gate_up_proj", ks.gemm(T, 2 * i_tp, hid, gemm_dtype), tokens=T)
        rows.add("down_proj", ks.gemm(T, hid, i_tp, gemm_dtype), tokens=T)
        rows.add("act_fn", ks.elementwise(T * 3 * i_tp * ACT_BYTES), tokens=T)


def _moe_rows(rows: _Rows, ks: KernelSet, model: ModelConfig, tp: int, budget: int, expert_parallel: int,
              moe_dtype: str, moe_efficiency: dict | None) -> None:
    """One MoE layer by tokens per EP rank and experts hit on the rank."""
    local = model.num_experts // expert_parallel
    hits = np.array(sorted(set(range(1, min(local, 16) + 1)) | set(_geometric(16, local, 1.25))), dtype=float)
    tt, hh = np.meshgrid(token_grid(-(-budget // expert_parallel)), hits, indexing="ij")
    rows.add("moe", moe_layer(ks, model, tp, expert_parallel, moe_dtype, tt, hh, moe_efficiency),
             tokens=tt, activated_experts=hh)


def _memory_bound_rows(rows: _Rows, ks: KernelSet, model: ModelConfig, tp: int, T, max_seqs: int) -> None:
    """Norms, rotary embedding, embedding by tokens; the LM head and sampler by sequences."""
    a, d, hid = ACT_BYTES, model.head_dim, model.hidden_size
    h_tp, kv_tp = model.num_heads // tp, max(1, model.num_kv_heads // tp)
    rows.add("layernorm", ks.elementwise(T * hid * a * 2), tokens=T)
    rows.add("rotary_emb", ks.elementwise(T * (h_tp + kv_tp) * d * a * 2), tokens=T)
    if model.qk_norm:
        rows.add("qk_norm", ks.elementwise(T * (h_tp + kv_tp) * d * a * 2), tokens=T)
    rows.add("embedding", ks.elementwise(T * hid * a), tokens=T)
    rows.add("final_layernorm", ks.elementwise(T * hid * a * 2), tokens=T)
    S = np.array(_geometric(1, max_seqs, 1.25), dtype=float)
    vocab_tp = -(-model.vocab_size // tp)
    rows.add("lm_head", ks.gemm(S, vocab_tp, hid, "bfloat16"), sequences=S)
    # logits (fp32) gathered and read by softmax/sampling a few times
    rows.add("sampler", ks.elementwise(S * model.vocab_size * 4 * 3), sequences=S)


def _attention_rows(rows: _Rows, ks: KernelSet, model: ModelConfig, tp: int, kv_dtype: str, budget: int,
                    max_seqs: int, max_len: int) -> None:
    """One layer's attention on the 4-D batch grid, the mean over full and windowed layers."""
    C, K, N, V = attention_grid(budget, max_seqs, max_len)
    shape = (model.num_heads // tp, max(1, model.num_kv_heads // tp), model.head_dim)
    pre = prefill_attention(ks, C[:, None], K[None, :], shape, kv_dtype)  # (C, K)
    dec = decode_attention(ks, N[:, None], V[None, :], shape, kv_dtype)  # (N, V)
    if model.num_sliding_layers and model.sliding_window:
        share, window = model.num_sliding_layers / model.num_layers, model.sliding_window
        pre_w = windowed_prefill_attention(ks, C[:, None], K[None, :], window, shape, kv_dtype)
        dec_w = decode_attention(ks, N[:, None], np.minimum(V, window)[None, :], shape, kv_dtype)
        pre = (1 - share) * pre + share * pre_w
        dec = (1 - share) * dec + share * dec_w
    grid = pre[:, :, None, None] + dec[None, None, :, :]
    cc, kk, nn, vv = np.meshgrid(C, K, N, V, indexing="ij")
    rows.add("attention", grid.ravel(), prefill_chunk=cc, kv_prefill=kk, n_decode=nn, kv_decode=vv)


def kernel_operator_profile(ks: KernelSet, model: ModelConfig, tp: int, gemm_dtype: str = "bfloat16",
                            kv_dtype: str = "bfloat16", budget: int = 8192, max_seqs: int = 256,
                            max_len: int = 32768, expert_parallel: int = 1,
                            moe_dtype: str | None = None, moe_efficiency: dict | None = None) -> pa.Table:
    """Per-layer operator rows (``operator_profile``, degree ``tp``) composed from kernels.

    ``expert_parallel``: 1, or ``tp`` when a MoE model's experts are spread over the
    TP ranks (vLLM ``enable_expert_parallel`` without data parallelism).
    ``moe_dtype``: the experts' weight format when it differs from the other GEMMs'
    (gpt-oss: MXFP4 experts, bf16 attention).
    ``moe_efficiency``: the fused-MoE kernel's rate per compute dtype (:func:`moe_layer`).
    Sliding-window layers (``model.num_sliding_layers``) attend over the window only;
    the one attention table is the mean over the model's layers.
    """
    if expert_parallel not in (1, tp):
        raise ValueError(f"expert_parallel must be 1 or tp={tp}, not {expert_parallel}")
    if model.kv_lora_rank:
        raise ValueError(f"{model.name}: multi-head latent attention is not composed from kernels yet")
    T = token_grid(budget)
    rows = _Rows()
    _linear_rows(rows, ks, model, tp, gemm_dtype, T)
    if model.num_moe_layers:
        _moe_rows(rows, ks, model, tp, budget, expert_parallel, moe_dtype or gemm_dtype, moe_efficiency)
    _memory_bound_rows(rows, ks, model, tp, T, max_seqs)
    _attention_rows(rows, ks, model, tp, kv_dtype, budget, max_seqs, max_len)
    n = len(rows.columns["operator"])
    cols = dict(rows.columns, hardware=[ks.sheet.name] * n, tp=[tp] * n, dtype=[gemm_dtype] * n,
                model=[model.name] * n, source=["kernels"] * n)
    return from_columns(OPERATOR_PROFILE, cols)
