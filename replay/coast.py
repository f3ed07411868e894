"""Coasting helpers of :meth:`mist.replay.engine.Replay._coast`: runs of quiet decode
steps stepped through without the event loop (KV blocks taken and committed in the
order the scheduler would, and the plan such a step stands for)."""

from __future__ import annotations

from mist.replay.kvcache import KVCache
from mist.replay.scheduler import StepPlan


def block_phases(running: list, kv: KVCache) -> tuple[list, list | None]:
    """For coasting (:meth:`Replay._coast`): per request, the plans (counted from 1
    after the current one) that take a KV block, and those that fill one (its hashes
    committed; ``None`` without prefix caching). Both recur every ``block_size`` plans
    from the first, so they are kept by the first's phase (``k % block_size``), in
    running order."""
    block = kv.block_size
    takes = [[] for _ in range(block)]
    fills = [[] for _ in range(block)] if kv.prefix_caching else None
    for r in running:
        c = r.num_computed
        first = len(r.blocks) * block - c + 1
        if first < 1:
            first = 1
        takes[first % block].append((first, r))
        if fills is not None:
            first = (r.num_committed + 1) * block - c
            if first < 1:
                first = 1
            fills[first % block].append((first, r))
    return takes, fills


def grow_kv(kv: KVCache, takes: list, fills: list | None, k: int) -> bool:
    """Take and commit the KV blocks of coasted plan ``k`` in the order
    :func:`mist.replay.scheduler.plan_step` would (requests in running order,
    allocations before commits); False, with nothing taken, when blocks run out."""
    block = kv.block_size
    phase = k % block
    due = [r for first, r in takes[phase] if first <= k]
    if len(due) > kv.num_free:
        return False
    if due:  # (each takes one block: its KV length just crossed a block boundary)
        kv.take_one_each(due)
    if fills is not None:
        kv.commit_ahead(fills[phase], k)
    return True


def leave(decoders: list, finished: list, takes: list, fills: list | None, k: int, kv_sum: int) -> tuple:
    """The decoders ``finished`` (in coasted plan ``k``, whose KV lengths sum to
    ``kv_sum``) leave: their token counts brought up to date, their block phases
    dropped. Returns ``(decoders left, their count, their KV-length sum, maximum and
    minimum in plan k, the first plan in which one of them finishes)``."""
    gone = set(map(id, finished))
    block = len(takes)
    for r in finished:
        c = r.num_computed  # (as when the phases were found: they recur every block_size plans)
        _drop(takes, (1 - c) % block, r)
        if fills is not None:
            _drop(fills, -c % block, r)
        r.num_computed = c + k
        r.num_generated += k
        r.num_tokens += k
        kv_sum -= c + k
    left = [r for r in decoders if id(r) not in gone]
    if not left:
        return left, 0, 0, 0, 0, 0
    c = [r.num_computed for r in left]
    return (left, len(left), kv_sum, max(c) + k, min(c) + k,
            min(r.output_len - r.num_generated for r in left))


def _drop(phases: list, phase: int, r) -> None:
    """Drop ``r``'s entry from ``phases``: from ``phases[phase]``, where
    :func:`block_phases` put it (unless a lagging commit moved its first fill to plan 1),
    else from whichever phase holds it."""
    due = phases[phase]
    kept = [e for e in due if e[1] is not r]
    if len(kept) < len(due):
        phases[phase] = kept
        return
    for i, due in enumerate(phases):
        if any(e[1] is r for e in due):
            phases[i] = [e for e in due if e[1] is not r]


def all_decoding(running: list) -> bool:
    """True when every running request is one token short of its next sample and has
    sampled its first (no prompt left to prefill: a plan that fills the token budget may
    have cut a prompt one token short)."""
    return all(r.num_tokens - r.num_computed == 1 and r.num_generated for r in running)


def decode_stats(plan: StepPlan, decoders: list) -> tuple[int, int, int, int, int]:
    """``(count, KV-length sum, maximum, minimum, first plan with a finish)`` of the
    decoders of the plan ``plan`` (their KV lengths from their computed tokens when
    ``plan`` also completed prefills)."""
    n = len(decoders)
    if n == plan.n_decode:
        stats = plan.kv_decode_sum, plan.kv_decode_max, plan.kv_decode_min
    else:
        c = [r.num_computed for r in decoders]
        stats = sum(c), max(c), min(c)
    return (n, *stats, min(r.output_len - r.num_generated for r in decoders))


def catch_up(decoders: list, done: int) -> None:
    """Bring the token counts of ``decoders`` up to date after ``done`` coasted plans."""
    for r in decoders:
        r.num_computed += done
        r.num_generated += done
        r.num_tokens += done


def decode_plan(running: list, kv_sum: int, kv_max: int, kv_min: int, last: list | None = None) -> StepPlan:
    """The plan of a quiet decode step of ``running`` (see :meth:`Replay._coast`), in
    which the requests ``last`` (in running order) sample their last token."""
    n = len(running)
    plan = StepPlan()
    plan.items = [(r, 1) for r in running]
    plan.num_tokens = plan.n_decode = n
    plan.kv_decode_sum = plan.kv_tokens = kv_sum
    plan.kv_decode_max, plan.kv_decode_min = kv_max, kv_min
    if last:
        plan.last = last
    return plan
