"""Closed-loop workloads: N users, each sending its next request when the last one ends.

This is how fixed-concurrency benchmarks measure a deployment (``vllm bench serve
--max-concurrency N``, aiperf ``--concurrency N``): every user holds one request in
flight; prompts have a fixed input length (ISL) and the engine is forced to emit a
fixed output length (OSL). All users start together, so the first wave of requests
meets an empty engine and queues behind each other's prefills; the loop then
settles into a steady state. The summary excludes that warm-up wave and the
cool-down after the first user has sent its last request (fewer than N in flight).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from mist.replay.config import EngineConfig
from mist.replay.engine import ARRIVAL, Replay
from mist.replay.request import Request
from mist.replay.step_cost import StepCost


class ClosedLoop(Replay):
    """A :class:`Replay` whose users send a new request as soon as theirs finishes."""

    def __init__(self, cfg: EngineConfig, cost: StepCost, users: int, isl: int, osl: int,
                 requests_per_user: int, think_s: float = 0.0, stagger_s: float = 0.0):
        if users < 1 or isl < 1 or osl < 1 or requests_per_user < 1:
            raise ValueError("users, isl, osl and requests_per_user must be at least 1")
        self.isl, self.osl, self.think_s = isl, osl, think_s
        self.left = {u: requests_per_user - 1 for u in range(users)}
        self.user_of: dict[int, int] = {}
        first = [self._new(u, u * stagger_s / users) for u in range(users)]
        super().__init__(first, cfg, cost)

    def _new(self, user: int, t: float) -> Request:
        index = len(self.user_of)
        self.user_of[index] = user
        return Request(index, f"u{user}-{index}", t, self.isl, self.osl)

    def _on_step_end(self, now: float, group):
        # the follow-ups are queued before the step's successor is planned, so that a
        # replay coasting through quiet steps (Replay._coast) sees them coming
        for req in [req for rep in group.members for req in rep.current.last]:
            user = self.user_of[req.index]
            if self.left[user] > 0:
                self.left[user] -= 1
                follow = self._new(user, now + self.think_s)
                self.requests.append(follow)
                self.loop.schedule(follow.arrival_s, ARRIVAL, self._on_arrival, follow)
        return super()._on_step_end(now, group)


@dataclass(frozen=True)
class LoopSummary:
    """Steady-state latencies of a closed loop (s) and what they were taken over."""

    ttft_s: float
    tpot_s: float
    e2e_s: float
    requests: int
    measured: int
    throughput_tok_s: float
    preemptions: int


def run_closed_loop(cfg: EngineConfig, cost: StepCost, users: int, isl: int, osl: int,
                    requests_per_user: int = 4, think_s: float = 0.0,
                    stagger_s: float = 0.0, exclude_warmup: bool = True) -> tuple[ClosedLoop, LoopSummary]:
    """Simulate the loop to completion and summarise its steady state.

    Requests counted: those sent after the warm-up wave (the first ``users``) and
    before the first user ran out of requests. With one request per user, when
    that window is empty, or with ``exclude_warmup=False`` (a benchmark that
    averages over its whole run), every request is counted.
    """
    loop = ClosedLoop(cfg, cost, users, isl, osl, requests_per_user, think_s, stagger_s)
    loop.run()
    reqs = sorted(loop.requests, key=lambda r: r.index)
    arrival = np.array([r.arrival_s for r in reqs])
    last_send = {}
    for r in reqs:
        last_send[loop.user_of[r.index]] = r.arrival_s
    cutoff = min(last_send.values())
    idx = np.arange(len(reqs))
    keep = (idx >= users) & (arrival <= cutoff)
    if not exclude_warmup or not keep.any():
        keep = np.ones(len(reqs), dtype=bool)
    return loop, _summary(reqs, keep)


def _summary(reqs: list[Request], keep: np.ndarray) -> LoopSummary:
    """Means over the ``keep`` requests: TTFT, TPOT (each request's decode time over its
    output tokens less one; none for single-token outputs) and end-to-end latency;
    output throughput over the whole run."""
    arrival = np.array([r.arrival_s for r in reqs])
    first = np.array([r.first_token_s for r in reqs], dtype=float)
    done = np.array([r.finished_s for r in reqs], dtype=float)
    outputs = np.array([r.output_len for r in reqs])
    ttft = first[keep] - arrival[keep]
    e2e = done[keep] - arrival[keep]
    decoding = outputs[keep] > 1
    tpot = (e2e - ttft)[decoding] / (outputs[keep][decoding] - 1)
    span = done.max() - arrival.min()
    return LoopSummary(
        ttft_s=float(ttft.mean()), tpot_s=float(tpot.mean()) if decoding.any() else 0.0, e2e_s=float(e2e.mean()),
        requests=len(reqs), measured=int(keep.sum()),
        throughput_tok_s=float(outputs.sum() / span) if span > 0 else 0.0,
        preemptions=int(sum(r.num_preemptions for r in reqs)),
    )


def client_lengths(isl: int, osl: int, count: int, ratio: float, seed: int) -> np.ndarray:
    """Prompt and output lengths of ``count`` requests, in the order a benchmark client
    sends them: each drawn uniformly from ``[floor(L * ratio), L]`` (the random dataset
    of vLLM's legacy ``benchmarks/benchmark_serving.py --random-range-ratio``, the form
    InferenceX runs with 0.8); ``ratio`` 1 gives every request the nominal lengths.
    (Today's ``vllm bench serve`` draws ``[L(1 - r), L(1 + r)]`` instead.)
    Returns an int array of shape (count, 2)."""
    if not 0.0 < ratio <= 1.0:
        raise ValueError(f"length ratio must be in (0, 1], not {ratio}")
    rng = np.random.default_rng(seed)
    prompts = rng.integers(max(int(isl * ratio), 1), isl + 1, size=count)
    outputs = rng.integers(max(int(osl * ratio), 1), osl + 1, size=count)
    return np.stack([prompts, outputs], axis=1)


class BenchmarkClient(ClosedLoop):
    """A fixed-concurrency benchmark client as ``benchmark_serving.py --max-concurrency N``
    (and ``vllm bench serve``) runs it: a list of requests (``lengths``, in send order) behind a semaphore of
    ``users`` slots; the first ``users`` are sent at once and each request that ends
    frees its slot for the next one on the list."""

    def __init__(self, cfg: EngineConfig, cost: StepCost, users: int, lengths: np.ndarray):
        if len(lengths) < 1:
            raise ValueError("a benchmark client needs at least one request")
        self.lengths = np.asarray(lengths, dtype=int)
        users = min(users, len(self.lengths))
        super().__init__(cfg, cost, users, int(self.lengths[0, 0]), int(self.lengths[0, 1]), 1)

    def _new(self, user: int, t: float) -> Request:
        index = len(self.user_of)
        self.user_of[index] = user
        isl, osl = self.lengths[index]
        return Request(index, f"u{user}-{index}", t, int(isl), int(osl))

    def _on_step_end(self, now: float, group):
        for req in [req for rep in group.members for req in rep.current.last]:  # (as ClosedLoop's)
            if len(self.user_of) < len(self.lengths):
                follow = self._new(self.user_of[req.index], now + self.think_s)
                self.requests.append(follow)
                self.loop.schedule(follow.arrival_s, ARRIVAL, self._on_arrival, follow)
        return Replay._on_step_end(self, now, group)


def run_benchmark_client(cfg: EngineConfig, cost: StepCost, users: int, lengths: np.ndarray) -> LoopSummary:
    """Run a :class:`BenchmarkClient` to completion and report what the client does:
    means over every request of TTFT, of TPOT (each request's decode time over its
    own output tokens less one) and of end-to-end latency."""
    loop = BenchmarkClient(cfg, cost, users, lengths)
    loop.run()
    return _summary(loop.requests, np.ones(len(loop.requests), dtype=bool))
