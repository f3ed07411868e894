"""Clients that drive a replay by feeding it arrivals (:class:`mist.replay.engine.Client`).

An open loop (a recorded or generated request stream) needs no client: its requests
are handed to :class:`mist.replay.engine.Replay` up front. A closed loop answers each
finished request with the next one: N users, each sending its next request when the
last one ends (:class:`ClosedLoop`), or a benchmark client's list of requests behind
N slots (:class:`BenchmarkClient`); :func:`drive` runs either.

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
from mist.replay.engine import Client, Replay
from mist.replay.request import Request
from mist.replay.step_cost import StepCost


class ClosedLoop:
    """``users`` users, each sending ``requests_per_user`` requests of ``isl`` prompt and
    ``osl`` output tokens, the next one ``think_s`` seconds after its last one finished;
    the users' first requests are spread evenly over ``stagger_s`` seconds (0: all at
    once). A :class:`mist.replay.engine.Client`: :func:`drive` runs it.

    After a run, ``requests`` holds every request sent (in send order) and ``user_of``
    each request's user by request index.
    """

    def __init__(self, users: int, isl: int, osl: int, requests_per_user: int, think_s: float = 0.0,
                 stagger_s: float = 0.0):
        if users < 1 or isl < 1 or osl < 1 or requests_per_user < 1:
            raise ValueError("users, isl, osl and requests_per_user must be at least 1")
        self.users, self.isl, self.osl = users, isl, osl
        self.requests_per_user, self.think_s, self.stagger_s = requests_per_user, think_s, stagger_s
        self.requests: list[Request] = []
        self.user_of: dict[int, int] = {}
        self.left: dict[int, int] = {}

    def start(self) -> list[Request]:
        """The users' first requests (state of an earlier run is dropped)."""
        self.requests, self.user_of = [], {}
        self.left = {u: self.requests_per_user - 1 for u in range(self.users)}
        return [self._new(u, u * self.stagger_s / self.users) for u in range(self.users)]

    def _new(self, user: int, t: float) -> Request:
        index = len(self.user_of)
        self.user_of[index] = user
        req = Request(index, f"u{user}-{index}", t, self.isl, self.osl)
        self.requests.append(req)
        return req

    def on_finish(self, request: Request, now: float) -> list[Request]:
        """The user's next request, if it has one left."""
        user = self.user_of[request.index]
        if self.left[user] <= 0:
            return []
        self.left[user] -= 1
        return [self._new(user, now + self.think_s)]


class BenchmarkClient:
    """A fixed-concurrency benchmark client as ``benchmark_serving.py --max-concurrency N``
    (and ``vllm bench serve``) runs it: a list of requests (``lengths``: rows of prompt
    and output tokens, in send order) behind a semaphore of ``users`` slots; the first
    ``users`` are sent at once and each request that ends frees its slot for the next
    one on the list. A :class:`mist.replay.engine.Client`: :func:`drive` runs it.

    After a run, ``requests`` holds every request sent (in send order) and ``user_of``
    each request's slot by request index.
    """

    def __init__(self, users: int, lengths):
        if len(lengths) < 1:
            raise ValueError("a benchmark client needs at least one request")
        self.users, self.lengths = users, lengths
        self.requests: list[Request] = []
        self.user_of: dict[int, int] = {}

    def start(self) -> list[Request]:
        """The first wave: one request per slot (state of an earlier run is dropped)."""
        self.requests, self.user_of = [], {}
        return [self._new(u, 0.0) for u in range(min(self.users, len(self.lengths)))]

    def _new(self, user: int, t: float) -> Request:
        index = len(self.user_of)
        self.user_of[index] = user
        isl, osl = self.lengths[index]
        req = Request(index, f"u{user}-{index}", t, int(isl), int(osl))
        self.requests.append(req)
        return req

    def on_finish(self, request: Request, now: float) -> list[Request]:
        """The next request on the list, in the slot ``request`` frees."""
        if len(self.user_of) >= len(self.lengths):
            return []
        return [self._new(self.user_of[request.index], now)]


def drive(client: ClosedLoop | BenchmarkClient | Client, cfg: EngineConfig, cost: StepCost) -> Replay:
    """Run a client's requests through a replay to completion; return the replay
    (the client holds the requests it sent)."""
    replay = Replay(client.start(), cfg, cost, client=client)
    replay.run()
    return replay


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
    loop = ClosedLoop(users, isl, osl, requests_per_user, think_s, stagger_s)
    drive(loop, cfg, cost)
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


def run_benchmark_client(cfg: EngineConfig, cost: StepCost, users: int, lengths: np.ndarray) -> LoopSummary:
    """Run a :class:`BenchmarkClient` to completion and report what the client does:
    means over every request of TTFT, of TPOT (each request's decode time over its
    own output tokens less one) and of end-to-end latency."""
    loop = BenchmarkClient(users, np.asarray(lengths, dtype=int))
    drive(loop, cfg, cost)
    return _summary(loop.requests, np.ones(len(loop.requests), dtype=bool))
