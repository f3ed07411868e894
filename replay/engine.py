"""Replay a request stream through simulated vLLM replicas.

Each replica runs the loop "plan a step, run it for its modelled duration, emit its
tokens" (data-parallel ranks of an expert-parallel MoE model run it in lockstep).
Requests are routed to replicas by a policy of :data:`ROUTERS`. Without async
scheduling the next step is planned when the previous one ends. With it (vLLM's default since 0.11), step ``k+1`` is planned while step ``k``
runs, so admissions see only requests that arrived before step ``k`` started; a
step's plan advances the requests' token counts at once, and the tokens it samples
are emitted (timestamped) when it ends.

What arrives is fed in from outside: the requests given up front (an open loop: a
recorded or generated stream), and those a :class:`Client` sends in answer to a
finished request (a closed loop of users, a benchmark client:
:mod:`mist.replay.clients`).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Protocol

from mist.replay.coast import (
    all_decoding,
    block_phases,
    catch_up,
    decode_plan,
    decode_stats,
    grow_kv,
    leave,
)
from mist.replay.config import EngineConfig
from mist.replay.kvcache import KVCache
from mist.replay.loop import EventLoop
from mist.replay.request import Request
from mist.replay.scheduler import StepPlan, plan_step
from mist.replay.step_cost import StepCost
from mist.replay.stream import step_columns

# At equal times: finish a step, then queue arrivals, then start an idle replica,
# so requests arriving together share their first step.
STEP_END, ARRIVAL, KICK = 0, 1, 2
#: steps a streamed replay buffers before handing them to its sink (as columns)
STEP_CHUNK = 1 << 16


@dataclass
class Replica:
    """One simulated engine instance and its queues."""

    index: int
    kv: KVCache
    running: list = field(default_factory=list)
    waiting: deque = field(default_factory=deque)
    current: StepPlan | None = None
    pending: StepPlan | None = None


@dataclass
class Group:
    """Replicas that step together: one alone, or all data-parallel ranks of an
    expert-parallel MoE deployment, whose layers exchange tokens every step (vLLM runs
    idle ranks on dummy batches), so every rank's step lasts as long as the slowest."""

    members: list
    busy: bool = False
    kick_scheduled: bool = False


def _round_robin(replay: Replay, req: Request) -> Replica:
    rep = replay.replicas[replay.next_replica]
    replay.next_replica = (replay.next_replica + 1) % len(replay.replicas)
    return rep


def _least_loaded(replay: Replay, req: Request) -> Replica:
    # vLLM's data-parallel front end: the engine with the smallest 4 x waiting + running
    return min(replay.replicas, key=lambda r: (4 * len(r.waiting) + len(r.running), r.index))


ROUTERS = {"round_robin": _round_robin, "least_loaded": _least_loaded}


class Client(Protocol):
    """What drives a replay beyond the requests given up front: told of every finished
    request, it returns the requests it sends in answer (arrival times at or after
    ``now``, indices continuing the replay's), which the replay then schedules."""

    def on_finish(self, request: Request, now: float) -> Iterable[Request]:
        """Requests sent because ``request`` finished at ``now`` (s)."""
        ...


class Replay:
    """One replay run: owns its clock, requests, replicas and step log."""

    def __init__(self, requests: list[Request], cfg: EngineConfig, cost: StepCost, align_arrivals: bool = False,
                 client: Client | None = None, arrivals: Iterator[Request] | None = None,
                 sink: Callable[[dict], None] | None = None):
        self.requests = requests  # (grows by what the client sends)
        # streamed (see :meth:`run`): requests made as the clock reaches them, steps
        # handed to ``sink`` as columns every STEP_CHUNK steps
        self.arrivals = arrivals
        self.sink = sink
        self.flushed = 0  # steps handed to the sink
        self.client = client
        self.cfg = cfg
        self.cost = cost
        self.loop = EventLoop()
        self.replicas = [
            Replica(i, KVCache(cfg.num_gpu_blocks, cfg.block_size, cfg.enable_prefix_caching))
            for i in range(cfg.data_parallel)
        ]
        lockstep = cfg.expert_parallel and cfg.data_parallel > 1
        self.groups = [Group(self.replicas)] if lockstep else [Group([r]) for r in self.replicas]
        self.group_of = {r.index: g for g in self.groups for r in g.members}
        self.route = ROUTERS[cfg.router]
        self.steps: list[tuple] = []
        self.next_replica = 0
        # arrivals stamped at real step boundaries (vLLM's queued_ts): each joins the plan
        # made at the replayed step boundary nearest its stamp (one group only)
        self.align = align_arrivals and cfg.async_scheduling and len(self.groups) == 1
        self.upcoming: list[Request] = []
        self.next_upcoming = 0
        # one engine alone (no other group's events to interleave with): runs of quiet
        # decode steps are stepped through without the event loop (:meth:`_coast`)
        self.coast = len(self.groups) == 1 and len(self.replicas) == 1 and not self.align
        self.coasted = 0  # steps run by _coast

    # -- planning -------------------------------------------------------------
    def _plan(self, rep: Replica, now: float) -> StepPlan:
        """Schedule a step and apply it at once (vLLM advances requests at plan time)."""
        return plan_step(self.cfg, rep.running, rep.waiting, rep.kv, now)

    def _duration(self, plan: StepPlan) -> float:
        if not plan.items:
            return 0.0
        return self.cost.step_s(plan.num_tokens, len(plan.items), plan.prefills, plan.n_decode,
                                plan.kv_decode_sum, plan.kv_decode_max, plan.kv_decode_min)

    def _log(self, rep: Replica, plan: StepPlan, now: float, d: float) -> None:
        self.steps.append((rep.index, now, d, len(plan.prefills),
                           plan.num_tokens - plan.n_decode, plan.n_decode, plan.kv_tokens,
                           len(rep.running), len(rep.waiting), rep.kv.used_blocks, plan.preempted))

    def _kick(self, group: Group, now: float) -> list:
        """Start the group's next step if any member has work; with async scheduling
        pre-plan one more."""
        if len(group.members) == 1:
            return self._kick_one(group, group.members[0], now)
        plans = []
        for rep in group.members:
            plan = rep.pending if rep.pending is not None and rep.pending.items else self._plan(rep, now)
            rep.pending = None
            plans.append(plan)
        if not any(p.items or p.preempted for p in plans):
            group.busy = False
            for rep in group.members:
                rep.current = None
            return []
        own = [self._duration(p) for p in plans]
        d = (self.cost.group_step_s(own, [p.num_tokens if p.items else 0 for p in plans])
             if self.cost.moe_s else max(own))
        for rep, plan in zip(group.members, plans):
            rep.current = plan
            if plan.items or plan.preempted:
                self._log(rep, plan, now, d)
        group.busy = True
        if self.cfg.async_scheduling:
            if self.align:
                self._take_early(now, now + d / 2)
            for rep in group.members:
                rep.pending = self._plan(rep, now)
        return [(now + d, STEP_END, self._on_step_end, group)]

    def _kick_one(self, group: Group, rep: Replica, now: float) -> list:
        """:meth:`_kick` for a group of one replica (the hot path of most replays):
        :meth:`_duration` and :meth:`_log` inlined."""
        plan = rep.pending
        if plan is None or not plan.items:
            plan = self._plan(rep, now)
        rep.pending = None
        items = plan.items
        if not items and not plan.preempted:
            group.busy = False
            rep.current = None
            return []
        n_decode = plan.n_decode
        if not items:
            d = 0.0
        elif plan.prefills:
            d = self.cost.step_s(plan.num_tokens, len(items), plan.prefills, n_decode, plan.kv_decode_sum,
                                 plan.kv_decode_max, plan.kv_decode_min)
        else:  # (decodes alone: every item one token)
            d = self.cost.decode_s(n_decode, plan.kv_decode_sum, plan.kv_decode_max, plan.kv_decode_min)
        rep.current = plan
        steps, kv = self.steps, rep.kv  # (kv.used_blocks, inlined)
        steps.append((rep.index, now, d, len(plan.prefills), plan.num_tokens - n_decode, n_decode,
                      plan.kv_tokens, len(rep.running), len(rep.waiting), kv.num_blocks - kv.num_free, plan.preempted))
        group.busy = True
        if (self.coast and not rep.waiting and len(items) == len(rep.running) and not plan.last
                and not plan.preempted and self.loop.next_time() >= now + 2 * d
                and (n_decode == len(items) and plan.num_tokens < self.cfg.max_num_batched_tokens
                     or all_decoding(rep.running))):
            return self._coast(group, rep, plan, now, d)
        if self.cfg.async_scheduling:
            if self.align:
                self._take_early(now, now + d / 2)
            rep.pending = self._plan(rep, now)
        return [(now + d, STEP_END, self._on_step_end, group)]

    def _coast(self, group: Group, rep: Replica, plan: StepPlan, now: float, d: float) -> list:
        """Run quiet decode steps in a row, from the step ``plan`` starting at ``now``
        (already logged, lasting ``d``), without the event loop or the scheduler.

        ``plan`` holds every running request, leaves each one token short of its next
        sample, finishes and preempts none, and nothing waits. The plans after it are
        quiet: every decoder (running, not yet done) decodes one token; their cost needs
        only the decoders' count and KV-length sum, max and min. Invariant: a decoder's
        token counts lag by ``done`` (the plans built here), its KV length in plan ``k``
        is its computed tokens plus ``k``. With async scheduling a plan that finishes
        requests is coasted too: they leave the decoders, and finish at its end
        (:meth:`_finish`). Coasting stops before a plan for which KV blocks run out
        (:func:`grow_kv`), or at a step end an arrival precedes; the replay is the same
        event for event, bit for bit.
        """
        kv, log, decode_s = rep.kv, self.steps.append, self.cost.decode_s
        index, block, num_blocks = rep.index, kv.block_size, kv.num_blocks
        sync = not self.cfg.async_scheduling
        decoders = rep.running
        n, kv_sum, kv_max, kv_min, last_plan = decode_stats(plan, decoders)
        takes, fills = block_phases(decoders, kv)
        next_arrival = self.loop.next_time()
        done = logged = 0  # plans built here beyond ``plan``; coasted steps logged
        ending = []  # the requests the step now running finishes
        while True:
            end, k = now + d, done + 1
            if sync and (next_arrival < end or k >= last_plan):  # (sync: the next plan is made at the step end)
                break
            phase = k % block
            # (most plans take and fill no block: grow_kv is called only when one might)
            if (takes[phase] or (fills is not None and fills[phase])) and not grow_kv(kv, takes, fills, k):
                break
            done = k
            kv_sum, kv_max, kv_min = kv_sum + n, kv_max + 1, kv_min + 1
            last = [r for r in decoders if r.output_len - r.num_generated == k] if k == last_plan else None
            if not sync and next_arrival < end:  # the plan just built waits for this step's end
                rep.pending = decode_plan(decoders, kv_sum, kv_max, kv_min, last)
                break
            now = end
            if not logged:  # (``plan``'s first tokens are sampled at its end)
                for r in plan.first:
                    r.first_token_s = now
            if ending:  # (the step that ended finished requests)
                for r in ending:
                    self._finish(rep, r, now)
                ending, next_arrival = [], self.loop.next_time()  # (a client may have sent requests)
            d = decode_s(n, kv_sum, kv_max, kv_min)
            logged += 1
            log((index, now, d, 0, 0, n, kv_sum, n, 0, num_blocks - kv.num_free, 0))
            if last:  # plan k finishes ``last`` at its end: the plans after it leave them out
                ending = last
                decoders, n, kv_sum, kv_max, kv_min, last_plan = leave(decoders, last, takes, fills, k, kv_sum)
                if not n:
                    break
        self.coasted += logged
        catch_up(decoders, done)
        if logged:  # (the coasted steps sample no first token)
            plan = StepPlan()
            plan.last = ending
        return self._resume(group, rep, plan, now, d)

    def _resume(self, group: Group, rep: Replica, current: StepPlan, now: float, d: float) -> list:
        """Hand a replica back to the event loop after :meth:`_coast`: ``current`` is the
        step running from ``now`` for ``d`` s; the next plan is made now if coasting did not."""
        rep.current = current
        if self.cfg.async_scheduling and rep.pending is None:
            rep.pending = self._plan(rep, now)
        if self.sink is not None and len(self.steps) >= STEP_CHUNK:
            self.flush_steps()
        return [(now + d, STEP_END, self._on_step_end, group)]

    def _take_early(self, now: float, until: float) -> None:
        """Queue the requests stamped before ``until`` (the middle of the step starting
        at ``now``) for the plan made now: nearer this boundary than the next one."""
        upcoming = self.upcoming
        while self.next_upcoming < len(upcoming) and upcoming[self.next_upcoming].arrival_s < until:
            req = upcoming[self.next_upcoming]
            self.next_upcoming += 1
            if req.queued_s is None:
                rep = self.route(self, req)
                req.replica = rep.index
                req.queued_s = req.arrival_s
                rep.waiting.append(req)

    # -- events ---------------------------------------------------------------
    def _on_arrival(self, now: float, req: Request):
        if req.queued_s is not None:  # taken into an earlier plan (aligned arrivals)
            return []
        rep = self.route(self, req)
        req.replica = rep.index
        req.queued_s = now
        rep.waiting.append(req)
        group = self.group_of[rep.index]
        if group.busy or group.kick_scheduled:
            return []
        group.kick_scheduled = True
        return [(now, KICK, self._on_kick, group)]

    def _on_kick(self, now: float, group: Group):
        group.kick_scheduled = False
        return [] if group.busy else self._kick(group, now)

    def _on_step_end(self, now: float, group: Group):
        for rep in group.members:
            plan = rep.current
            for req in plan.first:
                req.first_token_s = now
            for req in plan.last:
                self._finish(rep, req, now)
        events = self._kick(group, now)
        if self.sink is not None and len(self.steps) >= STEP_CHUNK:
            self.flush_steps()
        return events

    def _finish(self, rep: Replica, req: Request, now: float) -> None:
        """``req`` sampled its last token at ``now``: it leaves its replica, and the
        client (if any) is told and its answers scheduled (before the next plan)."""
        req.finished_s = now
        if req.num_computed:
            rep.running.remove(req)
            rep.kv.release(req)
        else:  # preempted while its last token was in flight: done all the same
            rep.waiting.remove(req)
        if self.client is not None:
            self._feed(self.client.on_finish(req, now))

    def _feed(self, requests: Iterable[Request]) -> None:
        """Schedule the arrival of requests a client sends during the replay."""
        for req in requests:
            self.requests.append(req)
            self.loop.schedule(req.arrival_s, ARRIVAL, self._on_arrival, req)

    def _on_streamed_arrival(self, now: float, req: Request):
        """Schedule the stream's next arrival (coasting reads it), then queue this one."""
        nxt = next(self.arrivals, None)
        if nxt is not None:
            self.loop.schedule(nxt.arrival_s, ARRIVAL, self._on_streamed_arrival, nxt)
        return self._on_arrival(now, req)

    def run(self) -> None:
        """Run to completion. Streamed (``arrivals``, in (arrival, index) order), only the
        next arrival is in the loop: arrivals pop in the order they would if all were
        scheduled up front, so the replay is the same (aligned arrivals look ahead: not streamed)."""
        if self.arrivals is not None:
            if self.align:
                raise ValueError("aligned arrivals look ahead and cannot be streamed")
            first = next(self.arrivals, None)
            if first is not None:
                self.loop.schedule(first.arrival_s, ARRIVAL, self._on_streamed_arrival, first)
        if self.align:
            self.upcoming = sorted(self.requests, key=lambda r: (r.arrival_s, r.index))
        for req in self.requests:
            self.loop.schedule(req.arrival_s, ARRIVAL, self._on_arrival, req)
        self.loop.run()

    def step_columns(self) -> dict:
        """The steps not yet handed to a sink, as ``steps`` columns (all of them when
        the replay has no sink)."""
        return step_columns(self.steps, self.flushed)

    def flush_steps(self) -> None:
        """Hand the buffered steps to the sink as columns and forget them."""
        if self.steps:
            self.sink(self.step_columns())
            self.flushed += len(self.steps)
            self.steps.clear()


def replay_requests(requests: list[Request], cfg: EngineConfig, cost: StepCost,
                    align_arrivals: bool = False) -> Replay:
    """Run one replay to completion and return it (requests carry their times).

    ``align_arrivals``: the arrival times are stamps taken at real step boundaries
    (vLLM's ``queued_ts``); each request joins the plan made at the replayed step
    boundary nearest its stamp instead of waiting for the next one (with async
    scheduling and one engine group; see docs/replay.md)."""
    rep = Replay(requests, cfg, cost, align_arrivals)
    rep.run()
    return rep
