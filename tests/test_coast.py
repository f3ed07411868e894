"""Coasting through quiet decode steps (``Replay._coast``) is exact: a replay that
coasts is the same, step for step and bit for bit, as one that plans every step."""

from __future__ import annotations

import random

import numpy as np
import pytest

from mist.calibrate.estimator import LatencyModel
from mist.calibrate.lookup import GridLookup
from mist.replay.clients import ClosedLoop
from mist.replay.config import EngineConfig
from mist.replay.engine import Replay
from mist.replay.request import Request
from mist.replay.step_cost import StepCost


def _cost() -> StepCost:
    # attention grows with every feature, so a wrong KV sum, maximum or count shows
    grid = [(c, k, d, kv) for c in (0, 512) for k in (0, 4096) for d in (0, 64) for kv in (0, 4096)]
    time = [1e-5 * c + 2e-6 * k + 3e-4 * d + 5e-6 * kv + 1e-3 for c, k, d, kv in grid]
    attn = GridLookup.from_model(LatencyModel().fit(np.array(grid, dtype=float), np.array(time)))
    return StepCost(dense_s=tuple(1e-3 + 2e-5 * t for t in range(513)),
                    per_seq_s=tuple(1e-4 * s for s in range(65)), attention=attn, num_layers=2, skew_alpha=0.3)


def _requests(seed: int) -> list[Request]:
    """Poisson arrivals; prompts drawn from a few shared prefixes (prefix-cache hits)."""
    rng = random.Random(seed)
    prefixes = [[rng.randrange(1000) for _ in range(rng.randrange(16, 200))] for _ in range(4)]
    out, t = [], 0.0
    for i in range(80):
        t += rng.expovariate(8.0)
        ids = rng.choice(prefixes) + [rng.randrange(1000) for _ in range(rng.randrange(1, 300))]
        out.append(Request(i, f"r{i}", t, len(ids), rng.randrange(2, 400), ids))
    return out


def _replay(reqs: list[Request], cfg: EngineConfig, coast: bool) -> Replay:
    rep = Replay(reqs, cfg, _cost())
    rep.coast = rep.coast and coast
    rep.run()
    return rep


def _outcome(rep: Replay):
    return rep.steps, [(r.first_token_s, r.finished_s, r.num_preemptions, r.cached_tokens, r.scheduled_s)
                       for r in sorted(rep.requests, key=lambda r: r.index)]


@pytest.mark.parametrize("async_scheduling", [True, False])
@pytest.mark.parametrize("prefix_caching", [True, False])
@pytest.mark.parametrize("blocks", [4096, 600])  # ample, and tight enough to preempt
def test_coasting_replays_exactly(async_scheduling, prefix_caching, blocks):
    cfg = EngineConfig(max_num_seqs=32, max_num_batched_tokens=512, num_gpu_blocks=blocks,
                       async_scheduling=async_scheduling, enable_prefix_caching=prefix_caching)
    planned = _replay(_requests(1), cfg, coast=False)
    coasted = _replay(_requests(1), cfg, coast=True)
    assert planned.coasted == 0 and coasted.coasted > len(coasted.steps) // 4  # it did coast
    assert _outcome(coasted) == _outcome(planned)
    if blocks == 600:
        assert sum(r.num_preemptions for r in planned.requests) > 0  # the tight case does preempt


@pytest.mark.parametrize("async_scheduling", [True, False])
def test_coasting_a_closed_loop_sees_each_follow_up_request(async_scheduling):
    """A closed loop's next request is created at a step end; coasting must stop for it."""
    cfg = EngineConfig(max_num_seqs=16, max_num_batched_tokens=512, num_gpu_blocks=4096,
                       async_scheduling=async_scheduling)

    def run(coast):
        client = ClosedLoop(users=6, isl=300, osl=120, requests_per_user=4, stagger_s=0.7)
        loop = Replay(client.start(), cfg, _cost(), client=client)
        loop.coast = coast
        loop.run()
        return loop

    planned, coasted = run(False), run(True)
    assert coasted.coasted > 0
    assert _outcome(coasted) == _outcome(planned)


def _short_requests(seed: int, with_ids: bool) -> list[Request]:
    """Bursts of requests with short outputs (1 to 6 tokens, often finishing together
    inside coasted runs) among long ones, prompts up to twice the token budget
    (chunked), with or without token ids."""
    rng = random.Random(seed)
    out, t = [], 0.0
    for i in range(120):
        t += rng.expovariate(3.0) if i % 10 == 0 else rng.expovariate(200.0)
        prompt = rng.randrange(1, 1024)
        ids = [rng.randrange(50) for _ in range(prompt)] if with_ids else None
        out.append(Request(i, f"r{i}", t, prompt, rng.choice([1, 2, 3, 6, rng.randrange(7, 300)]), ids))
    return out


@pytest.mark.parametrize("seed", [2, 3, 4])
@pytest.mark.parametrize("async_scheduling", [True, False])
@pytest.mark.parametrize(("blocks", "budget"), [(4096, 512), (300, 512), (4096, 40)])
def test_coasting_through_finishes_and_prefills_replays_exactly(seed, async_scheduling, blocks, budget):
    """Coasts that start right after a prefill, and (async) coast through plans in which
    requests finish, replay exactly too: finishes, freed blocks and first tokens land
    where the event loop puts them (a small token budget cuts prompts one token short)."""
    cfg = EngineConfig(max_num_seqs=24, max_num_batched_tokens=budget, num_gpu_blocks=blocks,
                       async_scheduling=async_scheduling)
    for with_ids in (True, False):
        planned = _replay(_short_requests(seed, with_ids), cfg, coast=False)
        coasted = _replay(_short_requests(seed, with_ids), cfg, coast=True)
        assert coasted.coasted > 0 or budget < 64  # (a small budget leaves few quiet runs)
        assert _outcome(coasted) == _outcome(planned)


@pytest.mark.parametrize("async_scheduling", [True, False])
def test_a_prompt_cut_one_token_short_is_not_coasted_as_a_decode(async_scheduling):
    """One decode and a 64-token prompt in a 64-token budget: the prompt gets 63 tokens;
    its last one samples its first token, which a coast must not skip."""
    cfg = EngineConfig(max_num_seqs=8, max_num_batched_tokens=64, num_gpu_blocks=4096,
                       async_scheduling=async_scheduling)

    def reqs():
        return [Request(0, "a", 0.0, 10, 200), Request(1, "b", 0.01, 64, 30)]

    planned, coasted = _replay(reqs(), cfg, coast=False), _replay(reqs(), cfg, coast=True)
    assert all(r.first_token_s is not None for r in coasted.requests)
    assert _outcome(coasted) == _outcome(planned)
