"""Whole replays small enough to work out by hand, plus invariants of bigger ones.

Step cost used throughout (``_cost``), with L = 2 layers::

    dense(T)   = A * T          (A = 1 ms per token)
    per_seq(S) = B * S          (B = 10 ms per sequence)
    attention  = C per layer    (C = 50 ms, constant), so 2C = 0.1 s per step

so a prefill step of P tokens alone takes ``A*P + B + 2C`` and a decode step of
batch b takes ``(A + B)*b + 2C``. Prefix caching is off unless a test needs it,
so cache hits never change the token counts worked out here.
"""

from __future__ import annotations

import random

import numpy as np
import pytest

from mist.calibrate.estimator import LatencyModel
from mist.calibrate.lookup import GridLookup
from mist.replay.config import EngineConfig
from mist.replay.engine import Replay, replay_requests
from mist.replay.request import Request
from mist.replay.step_cost import StepCost

A, B, C, L = 1e-3, 1e-2, 5e-2, 2


def _cost(max_tokens=2048, max_seqs=256):
    # Constant attention through the real path: a 4-feature LatencyModel on a small grid.
    grid = [(c, k, d, kv) for c in (0, 4096) for k in (0, 8192) for d in (0, 256) for kv in (0, 8192)]
    attn = GridLookup.from_model(LatencyModel().fit(np.array(grid, dtype=float), np.full(len(grid), C)))
    return StepCost(dense_s=tuple(A * t for t in range(max_tokens + 1)),
                    per_seq_s=tuple(B * s for s in range(max_seqs + 1)), attention=attn, num_layers=L)


def prefill_s(p, seqs=1):
    return A * p + B * seqs + L * C


def decode_s(b):
    return (A + B) * b + L * C


def _cfg(**kw):
    kw.setdefault("async_scheduling", False)
    kw.setdefault("enable_prefix_caching", False)
    kw.setdefault("num_gpu_blocks", 2048)  # ample (32k tokens), and cheap to build
    return EngineConfig(**kw)


def _run(specs, cfg, cost=None):
    """specs: (arrival_s, prompt_len, output_len) per request, in arrival order."""
    reqs = [Request(i, f"r{i}", t, p, n) for i, (t, p, n) in enumerate(specs)]
    return reqs, replay_requests(reqs, cfg, cost or _cost())


def test_single_request_ttft_and_e2e():
    (r,), rep = _run([(1.5, 100, 5)], _cfg())
    # TTFT = one prefill step = 0.1 + 0.01 + 0.1 = 0.21 s.
    assert r.scheduled_s == 1.5
    assert r.first_token_s - r.arrival_s == pytest.approx(prefill_s(100)) == pytest.approx(0.21)
    # Then 4 decodes at batch 1, 0.111 s each: E2E = 0.21 + 4 * 0.111 = 0.654 s.
    assert r.finished_s - r.arrival_s == pytest.approx(prefill_s(100) + 4 * decode_s(1)) == pytest.approx(0.654)
    steps = rep.step_columns()
    assert len(steps["start_s"]) == 5
    assert steps["duration_s"][1:] == pytest.approx([decode_s(1)] * 4)


def test_single_token_output_finishes_at_first_token():
    (r,), _ = _run([(0.0, 100, 1)], _cfg())
    assert r.finished_s == r.first_token_s == pytest.approx(0.21)


def test_long_prompt_ttft_is_sum_of_chunk_steps():
    (r,), rep = _run([(0.0, 5000, 3)], _cfg(max_num_batched_tokens=2048))
    # Chunks 2048 + 2048 + 904: TTFT = 5000 A + 3 B + 3 * 2C = 5 + 0.03 + 0.3 = 5.33 s.
    ttft = prefill_s(2048) + prefill_s(2048) + prefill_s(904)
    assert r.first_token_s == pytest.approx(ttft) == pytest.approx(5.33)
    assert r.finished_s == pytest.approx(5.33 + 2 * decode_s(1))
    assert list(rep.step_columns()["prefill_tokens"][:3]) == [2048, 2048, 904]


def test_batch_decode_steps_take_decode_time_at_batch_size():
    b, p, n = 4, 100, 6
    reqs, rep = _run([(0.0, p, n)] * b, _cfg())
    steps = rep.step_columns()
    full = (steps["num_prefill_seqs"] == 0) & (steps["num_decode_seqs"] == b)
    # Every pure-decode step of all 4: 4 * 0.011 + 0.1 = 0.144 s.
    assert full.sum() >= n - 2
    assert steps["duration_s"][full] == pytest.approx([decode_s(b)] * int(full.sum()))
    assert decode_s(b) == pytest.approx(0.144)


def test_batch_arriving_together_shares_prefill_and_tpot():
    b, p, n = 4, 100, 6
    reqs, _ = _run([(0.0, p, n)] * b, _cfg())
    # One step of 4 prefill chunks of 100 tokens: dense 0.4 + per-seq 0.04, attention
    # 2C for the first chunk and 2C more for each further chunk (its prefill-only
    # cost): 0.4 + 0.04 + 4 x 0.1 = 0.84 s. Then 5 decodes at batch 4 of 0.144 s.
    for r in reqs:
        assert r.first_token_s == pytest.approx(A * b * p + B * b + b * L * C)
        assert r.first_token_s == pytest.approx(0.84)
        assert (r.finished_s - r.first_token_s) / (n - 1) == pytest.approx(decode_s(b))


def test_request_arriving_during_a_step_sync_vs_async():
    specs = [(0.0, 100, 10), (0.1, 50, 2)]
    # Sync: step 1 = a's prefill [0, 0.21]; b (arrived at 0.1) joins step 2 = a decode +
    # b prefill: 51 A + 2 B + 2C = 0.171 -> b's first token at 0.381; step 3 = decode of
    # 2 (0.122) -> b done at 0.503; a then decodes alone: 7 x 0.111 -> 1.28.
    (a, b), _ = _run(specs, _cfg(async_scheduling=False))
    assert b.scheduled_s == pytest.approx(0.21)
    assert b.first_token_s == pytest.approx(0.21 + 0.171)
    assert b.finished_s == pytest.approx(0.381 + 0.122)
    assert a.finished_s == pytest.approx(0.503 + 7 * 0.111)
    # Async: step 2 (a's decode, 0.111) was planned at t=0, before b arrived, so b is
    # admitted no earlier than step 3: planned at 0.21, run [0.321, 0.492]; its decode
    # (step 4, 0.122) is planned at 0.321 while step 3 runs -> b done at 0.614.
    (a, b), _ = _run(specs, _cfg(async_scheduling=True))
    assert a.first_token_s == pytest.approx(0.21)
    assert b.scheduled_s == pytest.approx(0.21)
    assert b.first_token_s == pytest.approx(0.21 + 0.111 + 0.171)
    assert b.finished_s == pytest.approx(0.492 + 0.122)
    # a: 4 steps to 0.614, then 6 decodes alone: 0.614 + 0.666 = 1.28 (same as sync).
    assert a.finished_s == pytest.approx(0.614 + 6 * 0.111)


def test_arrivals_aligned_to_the_nearest_step_boundary():
    # vLLM stamps a request between steps, so a stamp is a real step boundary. Aligned,
    # b stamped at 0.1 -- nearer the start (0) than the end (0.21) of a's prefill step --
    # joins the plan made at 0: step 2 = a's decode + b's prefill, [0.21, 0.381] (as in
    # sync), then a decode of 2 (0.122) -> b done at 0.503.
    reqs = [Request(0, "a", 0.0, 100, 10), Request(1, "b", 0.1, 50, 2)]
    replay_requests(reqs, _cfg(async_scheduling=True), _cost(), align_arrivals=True)
    a, b = reqs
    assert b.first_token_s == pytest.approx(0.381) and b.finished_s == pytest.approx(0.503)
    assert a.finished_s == pytest.approx(0.503 + 7 * 0.111)
    # stamped at 0.15, nearer the end: planned at 0.21 as without alignment
    late = [Request(0, "a", 0.0, 100, 10), Request(1, "b", 0.15, 50, 2)]
    replay_requests(late, _cfg(async_scheduling=True), _cost(), align_arrivals=True)
    assert late[1].first_token_s == pytest.approx(0.21 + 0.111 + 0.171)


def test_arrivals_align_only_when_every_request_carries_the_engine_stamp():
    import pyarrow as pa

    from mist.replay.run import effective_arrival

    stamped = pa.table({"queued_s": [0.0, 0.1, 0.2]})
    assert effective_arrival(stamped, "engine-aligned") == "engine-aligned"
    # a send time stands in for a missing stamp: it is no step boundary, so nothing aligns
    for queued in ([0.0, float("nan"), 0.2], [0.0, None, 0.2]):
        assert effective_arrival(pa.table({"queued_s": queued}), "engine-aligned") == "engine"
    assert effective_arrival(pa.table({"queued_s": [0.0, None]}), "client") == "client"
    assert effective_arrival(stamped, "engine") == "engine"


def test_async_single_request_matches_sync():
    # Alone, a request's steps are the same in both modes: only admission timing differs.
    (s,), _ = _run([(0.0, 300, 4)], _cfg(async_scheduling=False))
    (a,), _ = _run([(0.0, 300, 4)], _cfg(async_scheduling=True))
    assert (a.first_token_s, a.finished_s) == (s.first_token_s, s.finished_s)
    assert a.finished_s == pytest.approx(prefill_s(300) + 3 * decode_s(1))


def test_step_overhead_adds_to_every_step():
    cost = _cost()
    cost = StepCost(cost.dense_s, cost.per_seq_s, cost.attention, cost.num_layers, overhead_s=0.5)
    (r,), _ = _run([(0.0, 100, 3)], _cfg(), cost)
    assert r.finished_s == pytest.approx(0.21 + 2 * 0.111 + 3 * 0.5)


def _workload(seed, n=40):
    rng = random.Random(seed)
    t, specs = 0.0, []
    for _ in range(n):
        t += rng.expovariate(20.0)
        specs.append((t, rng.randint(1, 300), rng.randint(1, 20)))
    return specs


def _times(reqs):
    return [(r.replica, r.scheduled_s, r.first_token_s, r.finished_s, r.num_preemptions) for r in reqs]


@pytest.mark.parametrize("async_scheduling", [False, True])
def test_two_replays_are_identical(async_scheduling):
    cfg = _cfg(async_scheduling=async_scheduling, max_num_batched_tokens=256,
               enable_prefix_caching=True, data_parallel=2)
    r1, rep1 = _run(_workload(1), cfg)
    r2, rep2 = _run(_workload(1), cfg)
    assert _times(r1) == _times(r2)
    s1, s2 = rep1.step_columns(), rep2.step_columns()
    assert all(np.array_equal(s1[k], s2[k]) for k in s1)


def _check_invariants(reqs, rep):
    for r in reqs:
        assert r.finished_s is not None, r.request_id
        assert r.arrival_s <= r.scheduled_s <= r.first_token_s <= r.finished_s
    steps = rep.step_columns()
    for replica in set(steps["replica"].tolist()):
        mine = steps["replica"] == replica
        start, dur = steps["start_s"][mine], steps["duration_s"][mine]
        assert np.all(dur > 0)
        assert np.all(start[1:] >= start[:-1] + dur[:-1])  # ordered, no overlap
    return steps


@pytest.mark.parametrize("async_scheduling", [False, True])
def test_invariants_random_workload(async_scheduling):
    cfg = _cfg(async_scheduling=async_scheduling, max_num_batched_tokens=256, max_num_seqs=8)
    reqs, rep = _run(_workload(2), cfg)
    _check_invariants(reqs, rep)


def test_invariants_under_kv_pressure_sync():
    # 40 blocks of 16 tokens = 640 tokens of KV for up to 40 x 320 tokens: preemptions.
    cfg = _cfg(max_num_batched_tokens=256, num_gpu_blocks=40)
    reqs, rep = _run(_workload(3), cfg)
    steps = _check_invariants(reqs, rep)
    assert steps["num_preempted"].sum() > 0
    assert sum(r.num_preemptions for r in reqs) == steps["num_preempted"].sum()


def test_async_preemption_of_request_finishing_in_flight():
    # 3 blocks of 4 tokens. a (7 prompt, 6 out) and b (3 prompt, 2 out) at t=0: step 1
    # prefills both (a holds 2 blocks, b 1: none left) and step 2, planned while step 1
    # runs, decodes both (b's last token). Step 3 is planned while step 2 runs: a's 9th
    # token needs a 3rd block. vLLM's FCFS scheduler pops the last running request
    # whatever its state, so b, whose last token is in flight, is the victim (not a): its
    # block goes to a and it still ends when step 2 does.
    cfg = _cfg(async_scheduling=True, block_size=4, num_gpu_blocks=3)
    reqs, rep = _run([(0.0, 7, 6), (0.0, 3, 2)], cfg)
    _check_invariants(reqs, rep)
    a, b = reqs
    assert (a.num_preemptions, b.num_preemptions) == (0, 1)
    step1 = A * 10 + B * 2 + 2 * L * C  # two prefill chunks, each with its attention
    assert b.first_token_s == pytest.approx(step1)
    assert b.finished_s == pytest.approx(step1 + decode_s(2))  # the end of step 2
    assert not rep.replicas[0].waiting and not rep.replicas[0].running


def test_data_parallel_round_robin():
    specs = [(0.1 * i, 100, 3) for i in range(6)]
    reqs, rep = _run(specs, _cfg(data_parallel=2))
    assert [r.replica for r in reqs] == [0, 1, 0, 1, 0, 1]
    steps = _check_invariants(reqs, rep)
    assert set(steps["replica"].tolist()) == {0, 1}


def test_data_parallel_replicas_run_in_parallel():
    # Two requests at t=0 on two replicas: each is alone, so each has the single-request
    # times (0.21 s TTFT, 0.21 + 2 x 0.111 E2E); one replica would have queued the second.
    reqs, _ = _run([(0.0, 100, 3), (0.0, 100, 3)], _cfg(data_parallel=2))
    for r in reqs:
        assert r.first_token_s == pytest.approx(0.21)
        assert r.finished_s == pytest.approx(0.21 + 2 * 0.111)


class _FollowUp:
    """A client that answers request 0's end with one request of 50 prompt and 2 output
    tokens, sent ``think_s`` later."""

    def __init__(self, think_s):
        self.think_s = think_s

    def on_finish(self, request, now):
        return [Request(1, "follow", now + self.think_s, 50, 2)] if request.index == 0 else []


def test_a_client_feeds_the_replay_what_it_sends_when_a_request_ends():
    # request 0 ends at 0.21 + 0.111 (prefill, one decode); the follow-up arrives 0.5 s
    # later, to an idle engine: a 50-token prefill then one decode
    first = Request(0, "r0", 0.0, 100, 2)
    rep = Replay([first], _cfg(), _cost(), client=_FollowUp(0.5))
    rep.run()
    assert [r.index for r in rep.requests] == [0, 1]
    follow = rep.requests[1]
    assert follow.arrival_s == pytest.approx(prefill_s(100) + decode_s(1) + 0.5)
    assert follow.first_token_s - follow.arrival_s == pytest.approx(prefill_s(50))
    assert follow.finished_s - follow.first_token_s == pytest.approx(decode_s(1))


def test_replay_trace_job_on_the_shipped_sample(tmp_path):
    """``mist replay``'s job from paths: the shipped CPU run's requests, replayed at
    their send times through its own engine settings, all finish; a file other than
    meta.json as the engine is refused."""
    from pathlib import Path

    from mist.replay.run import ReplaySettings, replay_trace
    from mist.traces.errors import TraceError

    repo = Path(__file__).resolve().parents[1]
    run = repo / "traces/samples/cpu-tiny-llama"
    settings = ReplaySettings(trace=run, profiles=repo / "profiles/samples/cpu-tiny-llama/fp32",
                              model=run / "model_config.json", engine=run / "meta.json")
    result = replay_trace(settings)
    summary = result.summary()
    assert result.requests.num_rows == summary["requests"] == 200 and not result.warnings
    assert result.requests.schema.metadata[b"mist.arrival"] == b"client"
    assert summary["simulated_s"] == round(result.simulated_s, 3) > 0
    assert set(summary["latency_s"]) == {"ttft", "tpot", "e2e"}
    assert "| ttft |" in result.summary_markdown()
    with pytest.raises(TraceError, match="meta.json"):
        replay_trace(ReplaySettings(**{**settings.__dict__, "engine": run / "requests.jsonl"}))


@pytest.mark.slow  # (the report's plots; the job itself: test_replay_trace_job_on_the_shipped_sample)
def test_mist_replay_writes_the_jobs_tables_summary_and_report(tmp_path):
    import json
    from pathlib import Path

    import pyarrow.parquet as pq

    from mist.validate.cli import main

    repo = Path(__file__).resolve().parents[1]
    run = repo / "traces/samples/cpu-tiny-llama"
    assert main(["replay", "--trace", str(run), "--profiles", str(repo / "profiles/samples/cpu-tiny-llama/fp32"),
                 "--model", str(run / "model_config.json"), "--engine", str(run / "meta.json"),
                 "--out", str(tmp_path)]) == 0
    assert {"simulated.requests.parquet", "simulated.steps.parquet", "summary.json", "report.md", "latency.png",
            "queue.png"} <= {p.name for p in tmp_path.iterdir()}
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["requests"] == pq.read_metadata(tmp_path / "simulated.requests.parquet").num_rows == 200
