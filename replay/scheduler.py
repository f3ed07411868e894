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
from dataclasses import dataclass, field

from replay.config import EngineConfig
from replay.kvcache import KVCache
from replay.request import Request


@dataclass
class StepPlan:
    """The requests of one step and how many new tokens each computes."""

    items: list[tuple[Request, int]] = field(default_factory=list)
    num_tokens: int = 0
    preempted: int = 0
    # (request, index of the token it samples, 1-based), filled when the plan is applied
    sampled: list[tuple[Request, int]] = field(default_factory=list)
    # cost-model inputs, filled when the plan is applied: prefill chunks
    # [(tokens, kv_before)], decode count, their KV sum and max, all KV tokens
    prefills: list[tuple[int, int]] = field(default_factory=list)
    n_decode: int = 0
    kv_decode_sum: int = 0
    kv_decode_max: int = 0
    kv_decode_min: int = 0
    kv_tokens: int = 0


def _preempt(running: list, waiting: deque, kv: KVCache, lo: int) -> Request:
    """Preempt the last running request at index ``lo`` or later that still has tokens
    to produce (with async scheduling a request whose last token is in flight is
    finishing, not preemptible; requests before ``lo`` are already in this step).
    """
    i = len(running) - 1
    while i > lo and running[i].num_generated >= running[i].output_len:
        i -= 1
    victim = running.pop(i)
    kv.release(victim)
    victim.num_computed = 0
    victim.num_preemptions += 1
    waiting.appendleft(victim)
    return victim


def schedule(cfg: EngineConfig, running: list, waiting: deque, kv: KVCache, now: float) -> StepPlan:
    """Build the next step from the ``running`` list and ``waiting`` queue (mutated)."""
    plan = StepPlan()
    budget = cfg.max_num_batched_tokens
    block = kv.block_size
    append = plan.items.append
    i = 0
    n_running = len(running)
    while i < n_running and budget > 0:
        req = running[i]
        computed = req.num_computed
        n = req.num_tokens - computed
        if n > budget:
            n = budget
        if n <= 0 or req.num_generated >= req.output_len:  # done, awaiting its last output
            i += 1
            continue
        need = computed + n
        # (fast path: most decodes fit in the blocks the request already holds)
        if (need + block - 1) // block > len(req.blocks) and not kv.allocate(req, need):
            fits = False
            while not fits:  # preempt from the back until this request fits, or is the victim
                victim = _preempt(running, waiting, kv, i)
                plan.preempted += 1
                if victim is req:
                    break
                fits = kv.allocate(req, need)
            n_running = len(running)
            if not fits:
                continue
        append((req, n))
        budget -= n
        i += 1
    if plan.preempted:
        plan.num_tokens = cfg.max_num_batched_tokens - budget
        return plan
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
    plan.num_tokens = cfg.max_num_batched_tokens - budget
    return plan


def apply(plan: StepPlan, kv: KVCache) -> StepPlan:
    """Advance the planned requests' token counts; note what the step samples and costs.

    A request whose computed tokens reach its token count samples one new token
    (emitted when the step ends). Fills the plan's cost-model inputs. Returns ``plan``.
    """
    block = kv.block_size
    n_dec = kv_sum = kv_max = kv_tok = 0
    kv_min = 1 << 62
    add_prefill, add_sampled = plan.prefills.append, plan.sampled.append
    for req, n in plan.items:
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
            add_sampled((req, req.num_generated))
    plan.n_decode, plan.kv_decode_sum, plan.kv_decode_max, plan.kv_tokens = n_dec, kv_sum, kv_max, kv_tok
    plan.kv_decode_min = kv_min if n_dec else 0
    return plan
