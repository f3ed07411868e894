"""Mixture-of-experts and expert/data parallelism: hand-worked cases and a measured check."""

from __future__ import annotations

import json
from datetime import datetime

import numpy as np
import pytest

from mist.calibrate.estimator import LatencyModel
from mist.calibrate.lookup import GridLookup
from mist.profiles.model import ModelConfig
from mist.replay.config import EngineConfig
from mist.replay.deployment import moe_table
from mist.replay.engine import replay_requests
from mist.replay.request import Request
from mist.replay.run import ReplaySettings, replay_trace
from mist.replay.step_cost import StepCost
from mist.validate.cli import main

E, K, H = 16, 2, 64


def _model():
    return ModelConfig(name="tiny-moe", architecture="X", num_layers=2, hidden_size=H, num_heads=4,
                       num_kv_heads=2, head_dim=16, intermediate_size=0, vocab_size=100,
                       num_experts=E, num_experts_per_tok=K, moe_intermediate_size=32,
                       tie_word_embeddings=False, torch_dtype="bfloat16", max_position_embeddings=1024)


def _moe_model():
    # time (s) = 1e-4 * tokens + 1e-3 * activated experts, linear on the measured grid
    pts = [(t, a) for t in (0.5, 1, 64, 256) for a in (1, 2, 16)]
    return LatencyModel().fit(np.array(pts, float), [1e-4 * t + 1e-3 * a for t, a in pts])


def test_moe_layer_without_expert_parallelism():
    cfg = EngineConfig(max_num_batched_tokens=64)
    out = moe_table(_moe_model(), _model(), cfg)
    # 10 tokens, top-2 of 16: expected distinct experts 16 * (1 - (14/16)^10)
    hit = 16 * (1 - (14 / 16) ** 10)
    assert out[10] == pytest.approx(1e-4 * 10 + 1e-3 * hit)
    assert out[0] == 0.0
    assert len(out) == 65  # indexed by the rank's own step


def test_moe_layer_with_expert_parallelism_over_two_ranks():
    cfg = EngineConfig(max_num_batched_tokens=64, data_parallel=2, expert_parallel=True)
    out = moe_table(_moe_model(), _model(), cfg)
    # indexed by the tokens of both ranks together (up to 2 x 64): 20 tokens reach the
    # layer; a rank holds 8 experts and gets 20 / 2 = 10 tokens' worth of pairs;
    # hit = 8 * (1 - (14/16)^20)
    assert len(out) == 129
    hit = 8 * (1 - (14 / 16) ** 20)
    assert out[20] == pytest.approx(1e-4 * 10 + 1e-3 * hit)


def test_moe_layer_below_the_profiled_experts_scales_the_smallest_cell():
    """A bundle's moe.csv starts at 1 token on top-k experts. With experts spread over
    two ranks one token leaves a rank k/2 of them: the smallest cell scaled by the
    experts hit (not the grid extended linearly, which reached ~0 on a real bundle)."""
    pts = [(t, a) for t in (1, 2, 64) for a in (8, 16, 64) if a <= 8 * t]
    per_expert = 6e-6  # s per expert hit, a little more per token
    moe = LatencyModel().fit(np.array(pts, float), [per_expert * a + 1e-7 * t for t, a in pts])
    model = ModelConfig(**{**_model().__dict__, "num_experts": 128, "num_experts_per_tok": 8})
    cfg = EngineConfig(max_num_batched_tokens=64, tensor_parallel=2, expert_parallel=True)
    out = moe_table(moe, model, cfg)
    # G = 1: 0.5 tokens' pairs and 64 * (1 - (120/128)) = 4 experts on a rank
    assert out[1] == pytest.approx((per_expert * 8 + 1e-7 * 1) * 4 / 8)
    # G = 4: 2 tokens' pairs, 64 * (1 - (120/128)^4) = 14.6 experts: inside the grid, as before
    hit = 64 * (1 - (120 / 128) ** 4)
    assert out[4] == pytest.approx(moe.predict(np.array([[2.0, hit]]))[0])


def _group_cost(graph_tokens: int) -> StepCost:
    attn = GridLookup.from_model(LatencyModel().fit(np.array([(0, 0, 0, 0), (1, 1, 1, 1)], float), [0.0, 0.0]))
    return StepCost(dense_s=(0.0,), per_seq_s=(0.0,), attention=attn, num_layers=1,
                    moe_s=tuple(1e-4 * g for g in range(1025)), exchange_s=1e-3,
                    exchange_s_per_token=1e-5, graph_tokens=graph_tokens)


def test_group_step_runs_the_experts_on_every_ranks_tokens():
    # rank 0 prefills 300 tokens (own layers 0.2 s), rank 1 decodes 10 (0.05 s); too big
    # for a CUDA graph, so no padding: the experts see 310 tokens and each rank receives
    # the other's (the larger share, 300 tokens, bounds the exchange)
    cost = _group_cost(graph_tokens=256)
    assert cost.group_step_s([0.2, 0.05], [300, 10]) == pytest.approx(0.2 + 1e-4 * 310 + 1e-3 + 1e-5 * 300)
    # both steps small enough for CUDA graphs: vLLM pads both ranks to 100 tokens
    assert cost.group_step_s([0.1, 0.05], [100, 10]) == pytest.approx(0.1 + 1e-4 * 200 + 1e-3 + 1e-5 * 100)
    # an idle group costs its ranks' own time and no exchange
    assert cost.group_step_s([0.0, 0.0], [0, 0]) == 0.0


def test_replay_charges_the_group_once_for_its_experts():
    """Two requests on two lockstep ranks: the step lasts the slower rank's own layers plus
    the experts over both ranks' tokens (hand-computed), not each rank's as if the other
    were as busy."""
    grid = [(c, k, d, kv) for c in (0, 512) for k in (0, 512) for d in (0, 64) for kv in (0, 512)]
    attn = GridLookup.from_model(LatencyModel().fit(np.array(grid, float), np.zeros(len(grid))))
    cost = StepCost(dense_s=tuple(1e-3 * t for t in range(513)), per_seq_s=tuple(0.0 for _ in range(65)),
                    attention=attn, num_layers=1, moe_s=tuple(1e-4 * g for g in range(1025)),
                    exchange_s=0.0, exchange_s_per_token=0.0, graph_tokens=16)
    reqs = [Request(0, "a", 0.0, 100, 2), Request(1, "b", 0.0, 10, 2)]
    cfg = EngineConfig(max_num_seqs=8, max_num_batched_tokens=512, num_gpu_blocks=64, data_parallel=2,
                       expert_parallel=True, async_scheduling=False, enable_prefix_caching=False)
    replay_requests(reqs, cfg, cost)
    first = 0.100 + 1e-4 * 110  # own layers of the 100-token prompt; experts over 100 + 10 tokens
    assert reqs[0].first_token_s == pytest.approx(first) and reqs[1].first_token_s == pytest.approx(first)
    # second step: one decode token each (graph-sized, padded to 1 each: 2 tokens)
    assert reqs[0].finished_s == pytest.approx(first + 0.001 + 1e-4 * 2)


def _cost():
    grid = [(c, k, d, kv) for c in (0, 512) for k in (0, 512) for d in (0, 64) for kv in (0, 512)]
    attn = GridLookup.from_model(LatencyModel().fit(np.array(grid, float), np.zeros(len(grid))))
    return StepCost(dense_s=tuple(1e-3 * t for t in range(513)), per_seq_s=tuple(0.0 for _ in range(65)),
                    attention=attn, num_layers=1)


def test_expert_parallel_ranks_step_in_lockstep():
    # rank 0 gets a 100-token prompt (0.1 s step), rank 1 a 10-token one (0.01 s): in
    # lockstep both first steps last 0.1 s, so both first tokens come at 0.1 s
    reqs = [Request(0, "a", 0.0, 100, 2), Request(1, "b", 0.0, 10, 2)]
    cfg = EngineConfig(max_num_seqs=8, max_num_batched_tokens=512, num_gpu_blocks=64, data_parallel=2,
                       expert_parallel=True, async_scheduling=False, enable_prefix_caching=False)
    replay_requests(reqs, cfg, _cost())
    assert {r.replica for r in reqs} == {0, 1}
    assert reqs[0].first_token_s == pytest.approx(0.1) and reqs[1].first_token_s == pytest.approx(0.1)
    # without expert parallelism the ranks are independent
    reqs = [Request(0, "a", 0.0, 100, 2), Request(1, "b", 0.0, 10, 2)]
    replay_requests(reqs, EngineConfig(**{**cfg.__dict__, "expert_parallel": False}), _cost())
    assert reqs[1].first_token_s == pytest.approx(0.01)


RUNS = {  # run -> (bundle, model config, workload)
    "Llama-3.1-8B": ("meta-llama/Llama-3.1-8B", "meta-llama/Llama-3.1-8B", "llama-3.1-8b"),
    "Qwen3-32B": ("Qwen/Qwen3-32B", "Qwen/Qwen3-32B", "qwen3-32b"),
    "Qwen3-30B-A3B-Instruct-2507": ("Qwen/Qwen3-30B-A3B-Instruct-2507", "Qwen/Qwen3-30B-A3B-Instruct-2507",
                                    "qwen3-30b-a3b"),
}
MOE_RUN = "Qwen3-30B-A3B-Instruct-2507"


def _settings(shared, run: str) -> ReplaySettings:
    bundle, model, workload = RUNS[run]
    return ReplaySettings(trace=shared / f"workloads/sharegpt-{workload}-300-sps10.jsonl",
                          profiles=shared.gpu_bundles / bundle / "bf16",
                          model=shared.models / "llmservingsim" / f"{model}.json",
                          engine=shared.runs / run / "meta.json")


@pytest.fixture(scope="module")
def moe_replay(shared):
    """The shared MoE run's workload replayed (DP 2 with expert parallelism)."""
    return replay_trace(_settings(shared, MOE_RUN))


def _check_makespan(shared, run: str, result) -> None:
    """The run ships no per-request timings (the MoE one), but its meta.json says how long
    the 300-request benchmark took; the replay of its workload must take about as long."""
    meta = json.loads((shared.runs / run / "meta.json").read_text())
    t = {k: datetime.fromisoformat(meta[k].replace("Z", "+00:00")).timestamp() for k in ("started_at", "finished_at")}
    measured = t["finished_at"] - t["started_at"]
    assert abs(result.simulated_s - measured) / measured < 0.10


def test_replayed_moe_makespan_matches_the_measured_run_duration(shared, moe_replay):
    _check_makespan(shared, MOE_RUN, moe_replay)


@pytest.mark.parametrize("run", ["Llama-3.1-8B", "Qwen3-32B"])
def test_replayed_makespan_matches_the_measured_run_duration(shared, run):
    _check_makespan(shared, run, replay_trace(_settings(shared, run)))


def test_validate_reproduces_its_own_replay_of_the_moe_run(shared, moe_replay, tmp_path):
    """The shared MoE run (DP 2 with expert parallelism) ships no per-request timings.
    Written out as a vLLM run, the replay's own output must come back from `mist
    validate` with zero error: the run reader, the request matching, the engine settings
    of meta.json and the DP/EP replay agree end to end."""
    settings = _settings(shared, MOE_RUN)
    sim = moe_replay.requests.to_pandas()
    run = tmp_path / "run"
    run.mkdir()
    for name in ("meta.json", "cluster.json"):
        (run / name).write_text((settings.engine.parent / name).read_text())
    epoch, mono = 1.777e9, 4.0e5  # the two clocks a vLLM run records
    with open(run / "requests.jsonl", "w") as f:
        for r in sim.itertuples():
            f.write(json.dumps({"request_id": f"bench-{r.request_id}", "input_toks": int(r.input_tokens),
                                "output_toks": int(r.output_tokens), "arrival_time": epoch + r.arrival_s,
                                "queued_ts": mono + r.queued_s, "scheduled_ts": mono + r.scheduled_s,
                                "first_token_ts": mono + r.first_token_s, "last_token_ts": mono + r.finished_s})
                    + "\n")
    out = tmp_path / "v.json"
    assert main(["validate", "--run", str(run), "--profiles", str(settings.profiles), "--model", str(settings.model),
                 "--workload", str(settings.trace), "--json", str(out)]) == 0
    summary = json.loads(out.read_text())
    for metric in ("ttft", "tpot", "e2e"):
        assert summary["metrics"][metric]["mape"] == pytest.approx(0.0, abs=1e-6), metric
