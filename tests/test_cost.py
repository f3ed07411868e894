"""Step cost: its parts, decode skew, all-reduce and KV-capacity closed forms."""

from __future__ import annotations

from itertools import product

import numpy as np
import pytest

from mist.calibrate.estimator import LatencyModel
from mist.calibrate.lookup import GridLookup
from mist.profiles.model import ModelConfig
from mist.replay.config import EngineConfig
from mist.replay.deployment import (
    OTHER_NON_KV_BYTES,
    allreduce_s,
    build_step_cost,
    check_profile,
    kv_blocks,
    non_kv_bytes,
)
from mist.replay.step_cost import StepCost
from mist.traces.errors import TraceError


def attn_formula(c, k, d, kv):
    """One layer's attention (s), linear in every feature, so grid interpolation is exact."""
    return 0.002 + 0.001 * c + 0.0002 * k + 0.0005 * d + 0.0001 * kv


def _attention_model():
    grid = np.array(list(product((0, 100), (0, 100), (0, 10), (0, 100))), dtype=float)
    return LatencyModel().fit(grid, [attn_formula(*row) for row in grid])


def _cost(num_layers=3, skew_alpha=0.0, overhead_s=0.0):
    return StepCost(
        dense_s=tuple(0.01 * t for t in range(5)),  # dense(T) = 0.01 T for T = 0..4
        per_seq_s=(0.0, 0.1, 0.2),  # per_seq(S) = 0.1 S for S = 0..2
        attention=GridLookup.from_model(_attention_model()),
        num_layers=num_layers, skew_alpha=skew_alpha, overhead_s=overhead_s,
    )


def _model(**kw):
    fields = dict(name="tiny", architecture="LlamaForCausalLM", num_layers=2, hidden_size=64,
                  num_heads=4, num_kv_heads=2, head_dim=16, intermediate_size=128, vocab_size=100,
                  num_experts=0, num_experts_per_tok=0, moe_intermediate_size=0,
                  tie_word_embeddings=True, torch_dtype="bfloat16", max_position_embeddings=1024)
    fields.update(kw)
    return ModelConfig(**fields)


def test_attention_lookup_reproduces_linear_grid():
    attn = GridLookup.from_model(_attention_model())
    for x in [(2, 0, 1, 50), (37.5, 12, 3, 99), (0, 0, 0, 0), (100, 100, 10, 100)]:
        assert attn(*x) == pytest.approx(attn_formula(*x))


def test_step_s_sums_its_parts():
    cost = _cost(num_layers=3, overhead_s=0.5)
    # One 2-token prefill chunk + one decode at KV 50: T = 3 tokens, S = 2 sequences.
    # dense(3) = 0.03; per_seq(2) = 0.2; attention(2, 0, 1, 50) = 0.002 + 0.002 + 0.0005
    # + 0.005 = 0.0095 per layer, x 3 layers = 0.0285; overhead 0.5.  Total 0.7585 s.
    assert cost.attention_s([(2, 0)], 1, 50, 50) == pytest.approx(0.0285)
    assert cost.step_s(3, 2, [(2, 0)], 1, 50, 50) == pytest.approx(0.03 + 0.2 + 0.0285 + 0.5)
    assert cost.step_s(3, 2, [(2, 0)], 1, 50, 50) == pytest.approx(0.7585)


def test_step_s_extrapolates_tables_linearly():
    cost = _cost(num_layers=1)
    # Beyond the tables: dense[-1] * T / 4 and per_seq[-1] * S / 2, i.e. still 0.01 T, 0.1 S.
    # 8 decodes at KV 10 each: attention(0, 0, 8, 10) = 0.002 + 0.004 + 0.001 = 0.007.
    assert cost.step_s(8, 8, [], 8, 80, 10) == pytest.approx(0.08 + 0.8 + 0.007)


def test_skew_alpha_moves_attention_from_mean_towards_max():
    # Two decodes, KV 20 and 80: mean 50, max 80.
    # t_mean = attention(0, 0, 2, 50) = 0.002 + 0.001 + 0.005 = 0.008
    # t_max  = attention(0, 0, 2, 80) = 0.002 + 0.001 + 0.008 = 0.011
    t_mean, t_max = 0.008, 0.011
    for alpha in (0.0, 0.25, 0.5, 1.0):
        got = _cost(num_layers=2, skew_alpha=alpha).attention_s([], 2, 100, 80)
        assert got == pytest.approx(2 * (t_mean + alpha * (t_max - t_mean)))
    half = _cost(num_layers=1, skew_alpha=0.5).attention_s([], 2, 100, 80)
    assert t_mean < half < t_max


def test_skew_ignored_for_even_or_single_decodes():
    cost = _cost(num_layers=1, skew_alpha=1.0)
    assert cost.attention_s([], 2, 100, 50) == pytest.approx(0.008)  # even: max == mean
    assert cost.attention_s([], 1, 80, 80) == pytest.approx(0.002 + 0.0005 + 0.008)


def test_extra_prefill_chunks_add_prefill_only_attention():
    cost = _cost(num_layers=1)
    # The largest chunk (5, kv 10) goes with the decodes (none here): 0.002 + 0.005 +
    # 0.002 = 0.009; the other chunk alone: attention(2, 0, 0, 0) = 0.004.
    assert cost.attention_s([(2, 0), (5, 10)], 0, 0, 0) == pytest.approx(0.013)
    # Two equal chunks both count: 2 x attention(3, 0, 0, 0) = 2 x 0.005.
    assert cost.attention_s([(3, 0), (3, 0)], 0, 0, 0) == pytest.approx(0.010)


def test_allreduce_closed_form():
    nbytes, bw, lat = 1e6, 1e9, 8e-6
    assert allreduce_s(nbytes, 1, bw, lat) == 0.0
    # Ring: latency + 2 (n-1)/n * bytes / bandwidth.
    assert allreduce_s(nbytes, 2, bw, lat) == pytest.approx(8e-6 + 1.0e-3)
    assert allreduce_s(nbytes, 4, bw, lat) == pytest.approx(8e-6 + 1.5e-3)
    assert allreduce_s(nbytes, 8, bw, lat) == pytest.approx(8e-6 + 1.75e-3)
    assert allreduce_s(nbytes, 4, bw, 0.0) == pytest.approx(1.5e-3)


def test_tiny_model_sizes_by_hand():
    m = _model()
    # Attention: q 64*64 + k,v 2*64*32 + o 64*64 = 12288; + 2 norms of 64 = 12416 per layer.
    # MLP: 3 * 64 * 128 = 24576 per layer.  2 layers: 73984.  Embedding 100*64 = 6400
    # (tied), final norm 64: 80448 parameters -> 160896 bytes in bf16.
    assert m.weight_bytes(2.0) == 160896
    # KV per token: 2 (k, v) * 2 layers * 2 kv heads * 16 * 2 bytes = 256.
    assert m.kv_bytes_per_token(2.0) == 256


def test_non_kv_memory_closed_form():
    m = _model()  # hidden 64, MLP 128, vocab 100
    # layer transient over 2048 tokens: 2048 * (3 * 128 + 64) * 2 bytes = 1835008; sampler
    # over 256 rows: 2 * 256 * 100 * 4 = 204800; the larger plus 551 MiB, no NCCL at TP 1
    assert non_kv_bytes(m, 1, 2048, 256) == 1835008 + 551 * 2**20
    # TP 2 halves the MLP part and adds the 2-GPU NCCL buffers (358612992 bytes)
    assert non_kv_bytes(m, 2, 2048, 256) == 2048 * (3 * 64 + 64) * 2 + 551 * 2**20 + 358612992
    # a sampler over many rows of a large vocabulary can be the peak
    big = ModelConfig(**{**m.__dict__, "vocab_size": 100000})
    assert non_kv_bytes(big, 1, 2048, 256) == 2 * 256 * 100000 * 4 + 551 * 2**20
    assert OTHER_NON_KV_BYTES == 551 * 2**20


def test_kv_blocks_closed_form():
    m = _model()
    mem = 4 * 2**30
    reserve = non_kv_bytes(m, 1, 2048, 256)
    # tp=1: free = 4 GiB - 160896 weight bytes - reserve; a block = 256 * 16 = 4096 bytes
    assert kv_blocks(m, mem, 1.0, tp=1, block_size=16) == (mem - 160896 - reserve) // 4096
    # tp=2: weights and KV both split, the reserve is TP 2's
    reserve2 = non_kv_bytes(m, 2, 2048, 256)
    assert kv_blocks(m, mem, 1.0, tp=2, block_size=16) == int((mem - 80448 - reserve2) // 2048)
    # utilization 0.5 of 8 GiB is the same 4 GiB
    assert kv_blocks(m, 8 * 2**30, 0.5, tp=1, block_size=16) == kv_blocks(m, mem, 1.0, tp=1, block_size=16)
    # the engine's budget and sequence cap size the reserve
    assert kv_blocks(m, mem, 1.0, tp=1, block_size=16, max_num_batched_tokens=8192) == int(
        (mem - 160896 - non_kv_bytes(m, 1, 8192, 256)) // 4096)
    # Not even the reserve fits: 0 blocks, never negative.
    assert kv_blocks(m, 2**29, 0.9, tp=1, block_size=16) == 0


def _linear(slope, xs=(1.0, 64.0)):
    return LatencyModel().fit(np.array(xs)[:, None], [slope * x for x in xs])


def test_build_step_cost_dense_and_per_seq_tables():
    layer_ops = ("qkv_proj", "o_proj", "gate_up_proj", "down_proj", "act_fn", "layernorm")
    models = {op: _linear(1e-6) for op in layer_ops}
    models |= {"embedding": _linear(1e-6), "final_layernorm": _linear(1e-6),
               "lm_head": _linear(1e-4), "sampler": _linear(1e-5), "attention": _attention_model()}
    m = _model()  # 2 layers, hidden 64, bf16
    cfg = EngineConfig(max_num_batched_tokens=64, max_num_seqs=8, tensor_parallel=2, step_overhead_s=0.25)
    # Activation of T tokens: 64 * 2 = 128 T bytes; at 1.28e8 B/s with tp=2 one all-reduce
    # takes 8e-6 + 1 * 128 T / 1.28e8 = 8e-6 + 1e-6 T.
    cost = build_step_cost(models, m, cfg, link_bw_bytes_s=1.28e8, skew_alpha=0.3)
    # Per layer: 5 ops + 2 layernorms = 7e-6 T, plus 2 all-reduces; once: 2e-6 T and the
    # vocabulary-parallel embedding's all-reduce.
    # dense(T) = 2e-6 T + (8e-6 + 1e-6 T) + 2 * (7e-6 T + 2 * (8e-6 + 1e-6 T)) = 21e-6 T + 40e-6.
    assert len(cost.dense_s) == 65
    assert cost.dense_s[0] == 0.0
    for t in (1, 10, 64):
        assert cost.dense_s[t] == pytest.approx(21e-6 * t + 40e-6)
    # per_seq(S) = (1e-4 + 1e-5) S plus the all-gather of S x 100 bf16 logits, half of them
    # from the other rank: 8e-6 + 0.5 * 200 S / 1.28e8 (at least up to max_num_seqs).
    assert cost.per_seq_s[0] == 0.0
    assert len(cost.per_seq_s) >= 9
    assert cost.per_seq_s[8] == pytest.approx(8 * 1.1e-4 + 8e-6 + 0.5 * 200 * 8 / 1.28e8)
    assert (cost.num_layers, cost.skew_alpha, cost.overhead_s) == (2, 0.3, 0.25)
    assert cost.attention(2, 0, 1, 50) == pytest.approx(attn_formula(2, 0, 1, 50))


def test_build_step_cost_tp1_has_no_communication():
    layer_ops = ("qkv_proj", "o_proj", "gate_up_proj", "down_proj", "act_fn", "layernorm")
    models = {op: _linear(1e-6) for op in layer_ops}
    models |= {"embedding": _linear(1e-6), "final_layernorm": _linear(1e-6),
               "lm_head": _linear(1e-4), "sampler": _linear(1e-5), "attention": _attention_model()}
    cost = build_step_cost(models, _model(), EngineConfig(max_num_batched_tokens=16), link_bw_bytes_s=1.0)
    # dense(T) = 2e-6 T + 2 layers * 7e-6 T = 16e-6 T; no logits to gather either.
    assert cost.dense_s[16] == pytest.approx(16 * 16e-6)
    assert cost.per_seq_s[8] == pytest.approx(8 * 1.1e-4)


def test_check_profile_names_missing_operator():
    models = {op: None for op in ("qkv_proj", "o_proj", "gate_up_proj", "down_proj", "act_fn",
                                  "layernorm", "embedding", "final_layernorm", "lm_head", "sampler",
                                  "attention")}
    check_profile(models, _model(), 1, "p.parquet")
    with pytest.raises(TraceError, match="qk_norm"):
        check_profile(models, _model(qk_norm=True), 1, "p.parquet")
    del models["sampler"]
    with pytest.raises(TraceError, match="sampler"):
        check_profile(models, _model(), 1, "p.parquet")


def test_kv_blocks_with_experts_spread_over_data_parallel_ranks():
    """A GPU of a DP x EP deployment keeps all the dense weights of its replica but only
    its share of the routed experts (hand-computed)."""
    from mist.profiles.model import ModelConfig

    moe = ModelConfig(name="tiny-moe", architecture="X", num_layers=2, hidden_size=64, num_heads=4,
                      num_kv_heads=2, head_dim=16, intermediate_size=0, vocab_size=100, num_experts=16,
                      num_experts_per_tok=2, moe_intermediate_size=32, tie_word_embeddings=False,
                      torch_dtype="bfloat16", max_position_embeddings=1024)
    experts = 2 * 16 * 3 * 64 * 32 * 2  # layers x experts x (gate, up, down) x h x i x bytes
    assert moe.routed_expert_param_count() * 2 == experts
    dense = moe.weight_bytes(2.0) - experts
    mem = 4 * 2**30
    block = moe.kv_bytes_per_token(2.0) * 16
    spread = kv_blocks(moe, mem, 1.0, tp=1, block_size=16, expert_ranks=2)
    reserve = non_kv_bytes(moe, 1, 2048, 256)
    assert spread == int((mem - dense - experts / 2 - reserve) // block)
    # without expert parallelism every rank holds every expert, as before
    assert kv_blocks(moe, mem, 1.0, tp=1, block_size=16) == int((mem - dense - experts - reserve) // block)
    assert spread > kv_blocks(moe, mem, 1.0, tp=1, block_size=16)
    # experts stored in 4 bits (gpt-oss's MXFP4) take a quarter of their bf16 bytes
    assert kv_blocks(moe, mem, 1.0, tp=1, block_size=16, expert_dtype_bytes=0.5) == int(
        (mem - dense - experts / 4 - reserve) // block)


def test_kv_blocks_count_only_full_attention_layers_of_a_hybrid_model():
    """With one of two layers sliding-window, a token's KV grows in one layer only: a
    block costs half as much (vLLM's hybrid KV-cache manager); an all-sliding model
    counts every layer."""
    from dataclasses import replace

    m = _model(num_layers=2)
    mem = 4 * 2**30
    free = mem - m.weight_bytes(2.0) - non_kv_bytes(m, 1, 2048, 256)
    full_block = m.kv_bytes_per_token(2.0) * 16
    hybrid = replace(m, sliding_window=128, num_sliding_layers=1)
    assert kv_blocks(hybrid, mem, 1.0, tp=1, block_size=16) == int(free // (full_block / 2))
    assert kv_blocks(replace(m, sliding_window=128, num_sliding_layers=2), mem, 1.0, tp=1, block_size=16) == int(
        free // full_block)


def test_device_memory_is_binary():
    """``cluster.json`` and the catalog give GPU memory as vendors label it: a "24 GB" RTX
    4090 holds 24 GiB."""
    from mist.profiles.hardware import get_hardware
    from mist.replay.run import device_memory

    cluster = {"nodes": [{"instances": [{"npu_mem": {"mem_size": 24}}]}]}
    assert device_memory(cluster, None) == 24 * 2**30
    assert device_memory(None, get_hardware("RTX4090")) == 24 * 2**30
