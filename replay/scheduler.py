"""A vLLM-v1-like scheduler: continuous batching with chunked prefill.

One call of :func:`schedule` builds one engine step, as vLLM v1's
``Scheduler.schedule()`` does:

1. Running requests, in admission order, each take what they still need (1 token
   for a decode, the rest of the prompt for a prefill), cut to the remaining token
   budget. When KV blocks run out, the last running request is preempted (its
   blocks freed, to be recomputed) until the current one fits.
2. Only if nothing was preempted, waiting requests are admitted first-come
   first-served while the budget lasts and fewer than ``max_num_seqs`` run; each
   first looks up its prompt in the prefix cache; the last one admitted may get a
   partial chunk. The first waiting request that cannot get KV blocks stops
   admission (head-of-line blocking).
"""

from __future__ import annotations

from collections import deque

from mist.replay.config import EngineConfig
from mist.replay.kvcache import KVCache
from mist.replay.request import Request

_NO_MIN = 1 << 62  # "no decode yet" for the running minimum of KV lengths


class StepPlan:
    """The requests of one step and how many new tokens each computes.

    Attributes
    ----------
    items : list of (Request, int)
        Requests in step order and the new tokens each computes.
    num_tokens : int
        Tokens of the step (the sum over ``items``).
    preempted : int
        Running requests preempted while building the step.
    first, last : list of Request
        The requests that sample their first, their last (output length) token;
        filled when the plan is applied.
    prefills, n_decode, kv_decode_sum, kv_decode_max, kv_decode_min, kv_tokens
        Cost-model inputs, filled when the plan is applied: prefill chunks
        ``[(tokens, kv_before)]``, the decode count, the sum, max and min of their
        KV lengths, and all KV tokens of the step.
    """

    # a plain slotted class: one is built per simulated step
    __slots__ = ("items", "num_tokens", "preempted", "first", "last", "prefills", "n_decode",
                 "kv_decode_sum", "kv_decode_max", "kv_decode_min", "kv_tokens")

    def __init__(self) -> None:
        self.items: list[tuple[Request, int]] = []
        self.first: list[Request] = []
        self.last: list[Request] = []
        self.prefills: list[tuple[int, int]] = []
        self.num_tokens = self.preempted = self.n_decode = 0
        self.kv_decode_sum = self.kv_decode_max = self.kv_decode_min = self.kv_tokens = 0


def _preempt(running: list, waiting: deque, kv: KVCache) -> Request:
    """Preempt the last running request, as vLLM's FCFS scheduler does (``running.pop()``),
    even one whose last token is in flight under async scheduling: its blocks are freed
    now and it still finishes when that step ends (vLLM then drops it from the waiting
    queue; :meth:`mist.replay.engine.Replay._on_step_end` does the same). The request being
    scheduled sits at or before the end, so the victim is never one already in this step.
    """
    victim = running.pop()
    kv.release(victim, preempted=True)
    victim.num_computed = 0
    victim.num_preemptions += 1
    waiting.appendleft(victim)
    return victim


def schedule(cfg: EngineConfig, running: list, waiting: deque, kv: KVCache, now: float) -> StepPlan:
    """Build the next step from the ``running`` list and ``waiting`` queue (mutated)."""
    return _build(cfg, running, waiting, kv, now, advance=False)


def apply(plan: StepPlan, kv: KVCache) -> StepPlan:
    """Advance the planned requests' token counts; note what the step samples and costs.

    A request whose computed tokens reach its token count samples one new token
    (emitted when the step ends). Fills the plan's cost-model inputs. Returns ``plan``.
    """
    _advance(plan, 0, kv)
    return plan


def plan_step(cfg: EngineConfig, running: list, waiting: deque, kv: KVCache, now: float) -> StepPlan:
    """:func:`schedule` then :func:`apply`, with the same result, in one pass over the
    running requests (the replay's hot path)."""
    return _build(cfg, running, waiting, kv, now, advance=True)


def _build(cfg: EngineConfig, running: list, waiting: deque, kv: KVCache, now: float,
           advance: bool) -> StepPlan:
    """Schedule a step; with ``advance``, apply it on the way.

    A running request is advanced right after it is scheduled (nothing scheduled later
    reads its counts; preemption looks only behind it). Its new full blocks are committed
    only after admission, in step order, as schedule-then-apply does: an admission must
    not hit blocks computed in the same step."""
    plan = StepPlan()
    budget, decode_kv, prefill_kv, to_commit = _run(cfg.max_num_batched_tokens, running, waiting, kv, plan, advance)
    n_scheduled = len(plan.items)
    if waiting and not plan.preempted:
        budget = _admit(cfg, running, waiting, kv, now, plan, budget)
    plan.num_tokens = cfg.max_num_batched_tokens - budget
    if advance:
        _settle(plan, decode_kv, prefill_kv, to_commit, n_scheduled, kv)
    return plan


def _run(budget: int, running: list, waiting: deque, kv: KVCache, plan: StepPlan, advance: bool) -> tuple:
    """:func:`_build`'s running requests: ``(budget left, decode KV lengths, prefill KV tokens, requests to
    commit)``. (Preemption shrinks ``running`` from the back: a request preempting itself was the last.)"""
    block, add_item, add_prefill = kv.block_size, plan.items.append, plan.prefills.append
    add_first, add_last = plan.first.append, plan.last.append
    decode_kv: list[int] = []  # KV lengths of the decodes (their count, sum, max and min)
    add_decode, to_commit, prefill_kv = decode_kv.append, [], 0
    for req in running:
        if budget <= 0:
            break
        computed, num_tokens = req.num_computed, req.num_tokens
        n = num_tokens - computed
        if n == 1 and advance:  # a decode (the common case): the general path below, unrolled
            generated, output_len = req.num_generated, req.output_len
            if generated >= output_len or (  # done, awaiting its last output; or no KV blocks
                    num_tokens > len(req.blocks) * block and not kv.allocate(req, num_tokens)
                    and not _make_room(req, num_tokens, running, waiting, kv, plan)):
                continue
            add_item((req, 1))
            budget -= 1
            req.num_computed = num_tokens
            add_decode(num_tokens)
            if num_tokens // block > req.num_committed:
                to_commit.append(req)
            req.num_generated = generated = generated + 1
            req.num_tokens = num_tokens + 1
            if generated == 1:
                add_first(req)
            if generated == output_len:
                add_last(req)
            continue
        n = min(n, budget)
        generated, output_len = req.num_generated, req.output_len
        if n <= 0 or generated >= output_len:  # done, awaiting its last output
            continue
        need = computed + n
        # (fast path: most decodes fit in the blocks the request already holds)
        if (need > len(req.blocks) * block and not kv.allocate(req, need)
                and not _make_room(req, need, running, waiting, kv, plan)):
            continue
        add_item((req, n))
        budget -= n
        if advance:  # as _advance does, but committing later
            req.num_computed = need
            if n == 1:
                add_decode(need)
            else:
                prefill_kv += need
                add_prefill((n, computed))
            if need // block > req.num_committed:
                to_commit.append(req)
            if need >= num_tokens:
                generated += 1
                req.num_generated = generated
                req.num_tokens = num_tokens + 1
                if generated == 1:
                    add_first(req)
                if generated == output_len:
                    add_last(req)
    return budget, decode_kv, prefill_kv, to_commit


def _make_room(req: Request, need: int, running: list, waiting: deque, kv: KVCache, plan: StepPlan) -> bool:
    """Preempt from the back of ``running`` until ``req`` gets KV blocks for ``need``
    tokens (True), or is itself the victim (False)."""
    while True:
        victim = _preempt(running, waiting, kv)
        plan.preempted += 1
        if victim is req:
            return False
        if kv.allocate(req, need):
            return True


def _settle(plan: StepPlan, decode_kv: list, prefill_kv: int, to_commit: list, n_scheduled: int,
            kv: KVCache) -> None:
    """Finish a plan whose first ``n_scheduled`` (running) requests were advanced while
    scheduled: the decodes' cost inputs from their KV lengths ``decode_kv``, the prefills'
    KV tokens ``prefill_kv``, the deferred commits, then the admitted requests applied."""
    if decode_kv:
        plan.n_decode, plan.kv_decode_sum = len(decode_kv), sum(decode_kv)
        plan.kv_decode_max, plan.kv_decode_min = max(decode_kv), min(decode_kv)
    plan.kv_tokens = plan.kv_decode_sum + prefill_kv
    for req in to_commit:
        kv.commit(req)
    if len(plan.items) > n_scheduled:
        _advance(plan, n_scheduled, kv)


def _admit(cfg: EngineConfig, running: list, waiting: deque, kv: KVCache, now: float,
           plan: StepPlan, budget: int) -> int:
    """Admit waiting requests first-come first-served into ``plan``; return the budget left."""
    while waiting and budget > 0 and len(running) < cfg.max_num_seqs:
        req = waiting[0]
        fresh = req.num_computed == 0 and not req.blocks
        hit = kv.match_prefix(req) if fresh else req.num_computed
        n = min(req.num_tokens - hit, budget)
        if n < req.num_tokens - hit and not cfg.enable_chunked_prefill:
            break
        if cfg.reserve_full_prompt and not kv.can_allocate(req, req.num_tokens):
            break
        if hit and not req.blocks:
            kv.take_prefix(req, hit)
        if not kv.allocate(req, hit + n):
            kv.release(req)
            break
        waiting.popleft()
        if req.scheduled_s is None:
            req.scheduled_s = now
            req.cached_tokens = hit
        req.num_computed = hit
        running.append(req)
        plan.items.append((req, n))
        budget -= n
    return budget


def _advance(plan: StepPlan, start: int, kv: KVCache) -> None:
    """Apply ``plan.items[start:]`` (see :func:`apply`), adding to the plan's cost inputs."""
    block = kv.block_size
    n_dec, kv_sum, kv_max, kv_tok = plan.n_decode, plan.kv_decode_sum, plan.kv_decode_max, plan.kv_tokens
    kv_min = plan.kv_decode_min if n_dec else _NO_MIN
    add_prefill = plan.prefills.append
    for req, n in plan.items[start:] if start else plan.items:
        computed = req.num_computed + n
        req.num_computed = computed
        kv_tok += computed
        if n == 1:  # a decode (or a prompt's last token): KV length incl. this token
            n_dec += 1
            kv_sum += computed
            if computed > kv_max:
                kv_max = computed
            if computed < kv_min:
                kv_min = computed
        else:
            add_prefill((n, computed - n))
        if computed // block > req.num_committed:
            kv.commit(req)
        if computed >= req.num_tokens:
            req.num_generated += 1
            req.num_tokens += 1
            if req.num_generated == 1:
                plan.first.append(req)
            if req.num_generated == req.output_len:
                plan.last.append(req)
    plan.n_decode, plan.kv_decode_sum, plan.kv_decode_max, plan.kv_tokens = n_dec, kv_sum, kv_max, kv_tok
    plan.kv_decode_min = kv_min if n_dec else 0
