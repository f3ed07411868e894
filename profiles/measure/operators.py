"""Time one decoder layer's operators on the local CPU with vLLM's own CPU kernels.

Each operator is called the way vLLM 0.32's CPU model runner calls it, on random
tensors of the model's shapes and dtype (latency does not depend on values):

* projections and ``lm_head``: ``dispatch_cpu_unquantized_gemm`` — the very
  function vLLM uses to pick oneDNN / sgl-kernel / zentorch / ``F.linear`` for a
  weight — then the ``layer.cpu_linear`` it installed;
* ``layernorm``/``final_layernorm``: ``vllm.ir`` ``fused_add_rms_norm`` native
  implementation (the CPU platform's IR priority is ``native``; inside a layer
  every norm but the very first adds the residual);
* ``act_fn``: ``SiluAndMul.forward_native`` (what ``forward_cpu`` runs on x86/Arm);
* ``rotary_emb``: ``RotaryEmbedding.forward_cpu`` (the ``_C`` rotary kernel);
* ``embedding``: ``F.embedding`` (``UnquantizedEmbeddingMethod`` at tp=1);
* ``sampler``: ``vllm.v1.sample.sampler.Sampler`` with the requested temperature;
* ``attention``: KV-cache write (``cpu_attn_reshape_and_cache``) plus
  ``cpu_attention_with_kv_cache`` over a paged cache of the engine's block size,
  decodes first and the prefill chunk last, as vLLM orders a batch. The scheduler
  metadata is built outside the timing: vLLM builds it once per step, before the
  forward pass, so it belongs to the step overhead.

Cache state matters on a CPU: an op timed in a tight loop keeps its weights in
cache and runs several times faster than inside the forward pass, where the other
layers and ``lm_head`` evicted them. GEMMs therefore cycle through enough weight
copies (2 × ``ProfileSettings.flush_mb``) that every call reads its weight from
memory; every other op gets :class:`CacheState`: a ``flush_mb`` eviction before
each sample, then its inputs re-read (the previous op just wrote them).

Outputs are freshly allocated per call, as in the engine.
"""

from __future__ import annotations

import itertools
import math
import os
import time
from collections.abc import Callable

import torch

from mist.profiles.measure.grids import grid_meta, grids_for, summarize
from mist.profiles.measure.settings import ProfileSettings

_DTYPES = {"float32": torch.float32, "fp32": torch.float32, "float": torch.float32,
           "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
           "float16": torch.float16, "fp16": torch.float16, "half": torch.float16}


def torch_dtype(name: str) -> torch.dtype:
    """torch dtype of a config's ``torch_dtype`` (``auto``/unset: bfloat16, vLLM's CPU choice)."""
    key = str(name or "auto").lower().removeprefix("torch.")
    return _DTYPES.get(key, torch.bfloat16)


def time_samples(fn: Callable[[], object], repeats: int, min_time_s: float,
                 prepare: Callable[[], object] | None = None, max_factor: int = 4) -> list[float]:
    """Wall times (s) of ``fn`` after one warm-up call; ``prepare()`` runs untimed before each.

    ``repeats`` samples, more (up to ``max_factor * repeats``) when they would
    total less than ``min_time_s``: short kernels are the noisiest.
    """
    def once() -> float:
        if prepare is not None:
            prepare()
        t0 = time.perf_counter()
        fn()
        return time.perf_counter() - t0

    fn()
    out = [once()]
    n = repeats
    if out[0] * repeats < min_time_s:
        n = min(max_factor * repeats, max(repeats, math.ceil(min_time_s / max(out[0], 1e-9))))
    out += [once() for _ in range(n - 1)]
    return out


class CacheState:
    """Put the caches in the state an op meets inside a forward pass.

    In the engine every op runs after the rest of the model (other layers'
    weights, the 4-byte-per-element ``lm_head``) went through the caches, so its
    weights come from memory, while its input activations were just written by
    the previous op. ``prepare(inputs)`` writes a ``flush_mb`` buffer (evicting
    weights) and then reads the inputs back (hot). ``flush_mb = 0``: warm timing.
    """

    def __init__(self, flush_mb: int):
        self.buffer = torch.ones(flush_mb * 2**20 // 4) if flush_mb > 0 else None
        # every sample pays for an eviction: fewer extra samples for short ops
        self.max_factor = 2 if flush_mb > 0 else 4

    def prepare(self, inputs: list) -> Callable[[], None] | None:
        if self.buffer is None:
            return None

        def run():
            self.buffer.sum()  # reading evicts as well as writing, and is cheaper
            for t in inputs:
                t.sum()
        return run


class _Weight(torch.nn.Module):
    """Stand-in for a vLLM linear layer: just ``weight`` (out, in) and no bias."""

    def __init__(self, out_features: int, in_features: int, dtype: torch.dtype):
        super().__init__()
        w = torch.randn(out_features, in_features, dtype=torch.float32) * 0.02
        self.weight = torch.nn.Parameter(w.to(dtype), requires_grad=False)
        self.bias = None


def _gemm(out_features: int, in_features: int, dtype: torch.dtype,
          rotate_bytes: int = 0) -> tuple[Callable, str]:
    """vLLM's CPU GEMM for a weight of this shape, and the kernel it picked.

    With ``rotate_bytes``, successive calls cycle through enough weight copies to
    fill that many bytes, so each call streams its weight from memory as in a
    forward pass (cheaper and closer to the engine than flushing the cache).
    """
    from vllm.model_executor.layers.utils import dispatch_cpu_unquantized_gemm

    size = out_features * in_features * torch.empty(0, dtype=dtype).element_size()
    copies = min(256, max(1, math.ceil(rotate_bytes / size))) if rotate_bytes > 0 else 1
    layers = [_Weight(out_features, in_features, dtype) for _ in range(copies)]
    for layer in layers:
        dispatch_cpu_unquantized_gemm(layer, remove_weight=False)
    names = layers[0].cpu_linear.__code__.co_names
    kernel = next((n for n in ("onednn_mm", "weight_packed_linear_cpu", "zentorch_linear_unary")
                   if n in names), "torch.nn.functional.linear")
    calls = itertools.cycle([(layer.cpu_linear, layer.weight) for layer in layers])

    def run(x):
        linear, weight = next(calls)
        return linear(x, weight, None)
    return run, kernel


#: what times each non-GEMM op of a layer (``meta.yaml`` ``kernels``)
_DENSE_KERNELS = {
    "act_fn": "vllm SiluAndMul.forward_native (torch silu * mul; vLLM's x86/Arm CPU path)",
    "layernorm": "vllm.ir fused_add_rms_norm, native impl (residual add + RMSNorm)",
    "final_layernorm": "vllm.ir fused_add_rms_norm, native impl (residual add + RMSNorm)",
    "rotary_emb": "vllm RotaryEmbedding.forward_cpu (_C rotary_embedding kernel, neox)",
    "embedding": "torch.nn.functional.embedding (vLLM UnquantizedEmbeddingMethod, tp=1)",
}


def _rope(model, raw: dict, dtype: torch.dtype):
    """vLLM's rotary embedding for the config's rope settings."""
    from vllm.config import VllmConfig, set_current_vllm_config
    from vllm.model_executor.layers.rotary_embedding import get_rope

    rope_params = dict(raw.get("rope_parameters") or raw.get("rope_scaling") or {})
    rope_params.setdefault("rope_type", "default")
    rope_params.setdefault("rope_theta", float(raw.get("rope_theta", 10000.0)))
    with set_current_vllm_config(VllmConfig()):
        return get_rope(model.head_dim, model.max_position_embeddings, True, rope_params, dtype)


def dense_ops(model, raw: dict, dtype: torch.dtype, rotate_bytes: int = 0) -> tuple[dict, dict]:
    """``{op: build(T)}`` giving ``(closure, inputs)`` for T tokens, and ``{op: kernel}``.

    ``inputs`` are the tensors to re-read before a sample (None for GEMMs, whose
    weights rotate instead, see :func:`_gemm`).
    """
    from vllm.ir.ops import fused_add_rms_norm
    from vllm.model_executor.layers.activation import SiluAndMul

    h, nh, nkv, hd = model.hidden_size, model.num_heads, model.num_kv_heads, model.head_dim
    inter = model.intermediate_size
    eps = float(raw.get("rms_norm_eps", 1e-6))
    rope = _rope(model, raw, dtype)
    norm = fused_add_rms_norm.impls["native"].impl_fn
    norm_w = torch.ones(h, dtype=dtype)
    emb_w = (torch.randn(model.vocab_size, h) * 0.02).to(dtype)
    shapes = {"qkv_proj": ((nh + 2 * nkv) * hd, h), "o_proj": (h, nh * hd),
              "gate_up_proj": (2 * inter, h), "down_proj": (h, inter)}
    gemms = {op: _gemm(n, k, dtype, rotate_bytes) for op, (n, k) in shapes.items()}
    in_dim = {"qkv_proj": h, "o_proj": nh * hd, "gate_up_proj": h, "down_proj": inter}

    def rand(*shape):
        return torch.randn(*shape).to(dtype)

    def linear(op):
        fn = gemms[op][0]

        def build(T):
            x = rand(T, in_dim[op])
            return (lambda: fn(x)), None
        return build

    def layernorm(T):
        x, r = rand(T, h), rand(T, h)
        return (lambda: norm(x, r, norm_w, eps)), [x, r]

    def act(T):
        g = rand(T, 2 * inter)
        return (lambda: SiluAndMul.forward_native(g)), [g]

    def rotary(T):
        q, k, pos = rand(T, nh * hd), rand(T, nkv * hd), torch.arange(T) % model.max_position_embeddings
        return (lambda: rope.forward_cpu(pos, q, k)), [q, k, pos]

    def embedding(T):
        ids = torch.randint(0, model.vocab_size, (T,))
        return (lambda: torch.nn.functional.embedding(ids, emb_w)), [ids]

    builders = {op: linear(op) for op in gemms}
    builders.update(act_fn=act, layernorm=layernorm, rotary_emb=rotary,
                    embedding=embedding, final_layernorm=layernorm)
    kernels = {op: f"vllm dispatch_cpu_unquantized_gemm -> {k}" for op, (_, k) in gemms.items()}
    return builders, {**kernels, **_DENSE_KERNELS}


def per_sequence_ops(model, dtype: torch.dtype, temperature: float,
                     rotate_bytes: int = 0) -> tuple[dict, dict]:
    """``{op: build(S)}`` for ``lm_head`` and ``sampler`` (as :func:`dense_ops`), ``{op: kernel}``."""
    from vllm.config import VllmConfig, set_current_vllm_config
    from vllm.v1.sample.logits_processor import LogitsProcessors
    from vllm.v1.sample.metadata import SamplingMetadata
    from vllm.v1.sample.sampler import Sampler

    head, kernel = _gemm(model.vocab_size, model.hidden_size, dtype, rotate_bytes)
    with set_current_vllm_config(VllmConfig()):
        sampler = Sampler()
    greedy = temperature == 0

    def lm_head(S):
        x = torch.randn(S, model.hidden_size).to(dtype)
        return (lambda: head(x)), None

    def sample(S):
        logits = torch.randn(S, model.vocab_size).to(dtype)
        md = SamplingMetadata(
            temperature=None if greedy else torch.full((S,), float(temperature)),
            all_greedy=greedy, all_random=not greedy, top_p=None, top_k=None, generators={},
            max_num_logprobs=None, no_penalties=True, prompt_token_ids=None,
            frequency_penalties=torch.zeros(S), presence_penalties=torch.zeros(S),
            repetition_penalties=torch.ones(S), output_token_ids=[[] for _ in range(S)],
            allowed_token_ids_mask=None, bad_words_token_ids={}, logitsprocs=LogitsProcessors())
        return (lambda: sampler(logits, md)), [logits]

    mode = "greedy argmax" if greedy else f"temperature {temperature:g}, Gumbel-max random sampling"
    kernels = {"lm_head": f"vllm dispatch_cpu_unquantized_gemm -> {kernel}",
               "sampler": f"vllm.v1 Sampler ({mode}; no logprobs, penalties, top-k/p; "
                          f"{type(sampler.topk_topp_sampler).__name__})"}
    return {"lm_head": lm_head, "sampler": sample}, kernels


class _PagedAttention:
    """One layer's CPU attention over a paged KV cache, for a grid of batches."""

    def __init__(self, model, dtype: torch.dtype, block_size: int, num_blocks: int):
        from vllm import _custom_ops as ops
        from vllm.v1.attention.backends.cpu_attn import _get_attn_isa

        self.ops, self.m, self.dtype, self.bs = ops, model, dtype, block_size
        self.isa = _get_attn_isa(dtype, block_size, model.head_dim, "auto")
        cache = torch.zeros(num_blocks, model.num_kv_heads, block_size, 2 * model.head_dim, dtype=dtype)
        view = cache.view(num_blocks, model.num_kv_heads, 2 * block_size, model.head_dim)
        self.key_cache, self.value_cache = view.chunk(2, dim=2)

    def case(self, chunk: int, kv_prefill: int, n_decode: int, kv_decode: int) -> Callable:
        """``(closure, inputs)``: cache write + attention for ``n_decode`` decodes and one chunk."""
        m, bs = self.m, self.bs
        q_lens = [1] * n_decode + ([chunk] if chunk else [])
        kv_lens = [max(kv_decode, 1)] * n_decode + ([kv_prefill + chunk] if chunk else [])
        blocks = [-(-k // bs) for k in kv_lens]
        table = torch.zeros(len(q_lens), max(blocks), dtype=torch.int32)
        slots, first = [], 0
        for i, (nb, q, k) in enumerate(zip(blocks, q_lens, kv_lens)):
            table[i, :nb] = torch.arange(first, first + nb, dtype=torch.int32)
            slots.extend((first + p // bs) * bs + p % bs for p in range(k - q, k))
            first += nb
        T = sum(q_lens)
        qsl = torch.tensor([0, *torch.tensor(q_lens).cumsum(0).tolist()], dtype=torch.int32)
        seq_lens = torch.tensor(kv_lens, dtype=torch.int32)
        slot = torch.tensor(slots, dtype=torch.int64)
        q = torch.randn(T, m.num_heads, m.head_dim).to(self.dtype)
        k = torch.randn(T, m.num_kv_heads, m.head_dim).to(self.dtype)
        v = torch.randn(T, m.num_kv_heads, m.head_dim).to(self.dtype)
        ops = self.ops
        meta = ops.cpu_attn_get_scheduler_metadata(
            num_reqs=len(q_lens), num_heads=m.num_heads, num_kv_heads=m.num_kv_heads,
            head_dim=m.head_dim, seq_lens=seq_lens, dtype=self.dtype, query_start_loc=qsl,
            causal=True, sliding_window_size=-1, isa=self.isa,
            enable_kv_split=os.environ.get("VLLM_CPU_ATTN_SPLIT_KV", "1") != "0")
        scale = m.head_dim ** -0.5

        def run():
            out = torch.empty(T, m.num_heads, m.head_dim, dtype=self.dtype)
            ops.cpu_attn_reshape_and_cache(k, v, self.key_cache, self.value_cache, slot, self.isa)
            ops.cpu_attention_with_kv_cache(
                query=q, key_cache=self.key_cache, value_cache=self.value_cache, output=out,
                query_start_loc=qsl, seq_lens=seq_lens, scale=scale, causal=True,
                alibi_slopes=None, sliding_window=-1, block_table=table, softcap=0,
                scheduler_metadata=meta, s_aux=None)
        return run, [q, k, v]


def profile_operators(model, raw: dict, settings: ProfileSettings, cpus: list[int],
                      progress) -> dict:
    """Time every operator over its grid; rows for the dense, per-sequence, attention tables."""
    import vllm

    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, cpus)
    torch.set_num_threads(len(cpus))
    torch.manual_seed(0)
    dtype = torch_dtype(model.torch_dtype)
    repeats = min(settings.repeats, 3) if settings.quick else settings.repeats
    g = grids_for(settings)
    rotate = 2 * settings.flush_mb * 2**20
    dense, k_dense = dense_ops(model, raw, dtype, rotate)
    per_seq, k_seq = per_sequence_ops(model, dtype, settings.temperature, rotate)
    points = g["attention"]
    need = max(sum(-(-max(x, 1) // settings.block_size) for x in [kd] * n + [kp + c])
               for c, kp, n, kd in points)
    attn = _PagedAttention(model, dtype, settings.block_size, need)
    tick = progress(len(dense) * len(g["tokens"]) + len(per_seq) * len(g["sequences"]) + len(points),
                    "operators")
    tables: dict[str, list[dict]] = {"dense": [], "per_sequence": [], "attention": []}
    cache = CacheState(settings.flush_mb)

    def measure(built):
        fn, inputs = built
        prepare = None if inputs is None else cache.prepare(inputs)
        samples = time_samples(fn, repeats, settings.min_time_s, prepare, cache.max_factor)
        med, spread, n = summarize(samples)
        tick(1)
        return {"time_us": med, "spread_us": spread, "samples": n}

    with torch.inference_mode():
        for op, build in dense.items():
            tables["dense"] += [{"layer": op, "tokens": T, **measure(build(T))} for T in g["tokens"]]
        for op, build in per_seq.items():
            tables["per_sequence"] += [{"layer": op, "sequences": S, **measure(build(S))}
                                       for S in g["sequences"]]
        for c, kp, n, kd in points:
            tables["attention"].append({"prefill_chunk": c, "kv_prefill": kp, "n_decode": n,
                                        "kv_decode": kd, **measure(attn.case(c, kp, n, kd))})
    kernels = {**k_dense, **k_seq,
               "attention": f"vllm _C cpu_attn_reshape_and_cache + cpu_attention_with_kv_cache "
                            f"(isa {attn.isa}, block size {settings.block_size}, paged KV)"}
    return {**tables, "kernels": kernels, "grids": grid_meta(g), "repeats": repeats,
            "dtype": str(dtype).removeprefix("torch."),
            "versions": {"vllm": vllm.__version__, "torch": torch.__version__}}

