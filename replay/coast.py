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
    phase = k % kv.block_size
    due = [r for first, r in takes[phase] if first <= k]
    if len(due) > kv.num_free:
        return False
    for r in due:
        kv.allocate(r, r.num_computed + k)
    if fills is not None:
        for first, r in fills[phase]:
            if first <= k:  # commit reads the request's computed tokens as of this plan
                had = r.num_computed
                r.num_computed = had + k
                kv.commit(r)
                r.num_computed = had
    return True


def decode_plan(running: list, kv_sum: int, kv_max: int, kv_min: int) -> StepPlan:
    """The plan of a quiet decode step of ``running`` (see :meth:`Replay._coast`)."""
    n = len(running)
    plan = StepPlan()
    plan.items = [(r, 1) for r in running]
    plan.num_tokens = plan.n_decode = n
    plan.kv_decode_sum = plan.kv_tokens = kv_sum
    plan.kv_decode_max, plan.kv_decode_min = kv_max, kv_min
    return plan
