"""Replay a request stream through simulated vLLM replicas.

Each replica runs the loop "plan a step, run it for its modelled duration, emit its
tokens". Without async scheduling the next step is planned when the previous one
ends. With it (vLLM's default since 0.11), step ``k+1`` is planned while step ``k``
runs, so admissions see only requests that arrived before step ``k`` started; a
step's plan advances the requests' token counts at once, and the tokens it samples
are emitted (timestamped) when it ends.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

import numpy as np

from replay.config import EngineConfig
from replay.cost import StepCost
from replay.engine import EventLoop
from replay.kvcache import KVCache
from replay.request import Request
from replay.scheduler import StepPlan, apply, schedule

# At equal times: finish a step, then queue arrivals, then start an idle replica,
# so requests arriving together share their first step.
STEP_END, ARRIVAL, KICK = 0, 1, 2


@dataclass
class Replica:
    """One simulated engine instance and its queues."""

    index: int
    kv: KVCache
    running: list = field(default_factory=list)
    waiting: deque = field(default_factory=deque)
    current: StepPlan | None = None
    pending: StepPlan | None = None
    busy: bool = False
    kick_scheduled: bool = False


class Replay:
    """One replay run: owns its clock, requests, replicas and step log."""

    def __init__(self, requests: list[Request], cfg: EngineConfig, cost: StepCost):
        self.requests = requests
        self.cfg = cfg
        self.cost = cost
        self.loop = EventLoop()
        self.replicas = [
            Replica(i, KVCache(cfg.num_gpu_blocks, cfg.block_size, cfg.enable_prefix_caching))
            for i in range(cfg.data_parallel)
        ]
        self.steps: list[tuple] = []
        self._next_replica = 0

    # -- planning -------------------------------------------------------------
    def _plan(self, rep: Replica, now: float) -> StepPlan:
        """Schedule a step and apply it at once (vLLM advances requests at plan time)."""
        return apply(schedule(self.cfg, rep.running, rep.waiting, rep.kv, now), rep.kv)

    def _start(self, rep: Replica, plan: StepPlan, now: float):
        rep.current = plan
        rep.busy = True
        d = self.cost.step_s(plan.num_tokens, len(plan.items), plan.prefills, plan.n_decode,
                             plan.kv_decode_sum, plan.kv_decode_max, plan.kv_decode_min)
        n_pf = len(plan.prefills)
        self.steps.append((len(self.steps), rep.index, now, d, n_pf, plan.num_tokens - plan.n_decode,
                           plan.n_decode, plan.kv_tokens, len(rep.running), len(rep.waiting),
                           rep.kv.used_blocks, plan.preempted))
        return (now + d, STEP_END, self._on_step_end, rep)

    def _kick(self, rep: Replica, now: float) -> list:
        """Start the next step if there is work; with async scheduling pre-plan one more."""
        plan = rep.pending if rep.pending is not None and rep.pending.items else self._plan(rep, now)
        rep.pending = None
        if not plan.items and not plan.preempted:
            rep.busy = False
            rep.current = None
            return []
        event = self._start(rep, plan, now)
        if self.cfg.async_scheduling:
            rep.pending = self._plan(rep, now)
        return [event]

    # -- events ---------------------------------------------------------------
    def _on_arrival(self, now: float, req: Request):
        rep = self.replicas[self._next_replica]
        self._next_replica = (self._next_replica + 1) % len(self.replicas)
        req.replica = rep.index
        req.queued_s = now
        rep.waiting.append(req)
        if rep.busy or rep.kick_scheduled:
            return []
        rep.kick_scheduled = True
        return [(now, KICK, self._on_kick, rep)]

    def _on_kick(self, now: float, rep: Replica):
        rep.kick_scheduled = False
        return [] if rep.busy else self._kick(rep, now)

    def _on_step_end(self, now: float, rep: Replica):
        done = []
        for req, k in rep.current.sampled:
            if k == 1:
                req.first_token_s = now
            if k == req.output_len:
                req.finished_s = now
                done.append(req)
        for req in done:
            rep.running.remove(req)
            rep.kv.release(req)
        return self._kick(rep, now)

    def run(self) -> None:
        for req in self.requests:
            self.loop.schedule(req.arrival_s, ARRIVAL, self._on_arrival, req)
        self.loop.run()

    def step_columns(self) -> dict:
        names = ("step_id", "replica", "start_s", "duration_s", "num_prefill_seqs", "prefill_tokens",
                 "num_decode_seqs", "kv_tokens", "num_running", "num_waiting", "kv_blocks_used",
                 "num_preempted")
        cols = list(zip(*self.steps)) if self.steps else [[] for _ in names]
        return {n: np.asarray(c) for n, c in zip(names, cols)}


def replay_requests(requests: list[Request], cfg: EngineConfig, cost: StepCost) -> Replay:
    """Run one replay to completion and return it (requests carry their times)."""
    rep = Replay(requests, cfg, cost)
    rep.run()
    return rep
