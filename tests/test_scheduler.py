"""One call of ``schedule()``: budget, ordering, max_num_seqs, chunking, FCFS, preemption."""

from __future__ import annotations

from collections import deque

from mist.replay.config import EngineConfig
from mist.replay.kvcache import KVCache
from mist.replay.request import Request
from mist.replay.scheduler import apply, schedule


def _cfg(**kw):
    kw.setdefault("async_scheduling", False)
    kw.setdefault("enable_prefix_caching", False)
    kw.setdefault("num_gpu_blocks", 1024)  # ample, and cheap to build
    return EngineConfig(**kw)


def _kv(cfg):
    return KVCache(cfg.num_gpu_blocks, cfg.block_size, cfg.enable_prefix_caching)


def _reqs(*prompts, output_len=8):
    return [Request(i, f"r{i}", float(i), p, output_len) for i, p in enumerate(prompts)]


def _apply(plan, kv):
    """Advance token counts as a replay does after planning a step (sync mode)."""
    apply(plan, kv)


def test_token_budget_respected():
    cfg = _cfg(max_num_batched_tokens=100)
    kv = _kv(cfg)
    waiting = deque(_reqs(30, 30, 30, 30))
    running = []
    plan = schedule(cfg, running, waiting, kv, 0.0)
    # 30 + 30 + 30 + a 10-token partial chunk of the fourth = exactly the budget.
    assert [n for _, n in plan.items] == [30, 30, 30, 10]
    assert plan.num_tokens == sum(n for _, n in plan.items) == 100
    assert not waiting and len(running) == 4


def test_running_scheduled_before_waiting():
    cfg = _cfg(max_num_batched_tokens=50)
    kv = _kv(cfg)
    a, b, c = _reqs(20, 20, 100)
    running, waiting = [], deque([a, b])
    _apply(schedule(cfg, running, waiting, kv, 0.0), kv)  # a, b prefilled; each has 1 token
    waiting.append(c)
    plan = schedule(cfg, running, waiting, kv, 1.0)
    # Decodes of a and b (1 token each) come first, then c gets the remaining 48 tokens.
    assert [(r.request_id, n) for r, n in plan.items] == [("r0", 1), ("r1", 1), ("r2", 48)]
    assert plan.num_tokens == 50


def test_running_requests_can_use_the_whole_budget():
    cfg = _cfg(max_num_batched_tokens=64)
    kv = _kv(cfg)
    a, b = _reqs(200, 10)
    running, waiting = [], deque([a])
    _apply(schedule(cfg, running, waiting, kv, 0.0), kv)  # a: 64 of 200
    waiting.append(b)
    plan = schedule(cfg, running, waiting, kv, 1.0)
    # a's next chunk takes the whole budget; b, waiting, gets nothing.
    assert [(r.request_id, n) for r, n in plan.items] == [("r0", 64)]
    assert list(waiting) == [b]


def test_max_num_seqs_respected():
    cfg = _cfg(max_num_seqs=3, max_num_batched_tokens=1000)
    kv = _kv(cfg)
    waiting = deque(_reqs(10, 10, 10, 10, 10))
    running = []
    plan = schedule(cfg, running, waiting, kv, 0.0)
    assert len(plan.items) == 3 and len(running) == 3
    assert [r.request_id for r in waiting] == ["r3", "r4"]
    _apply(plan, kv)
    plan = schedule(cfg, running, waiting, kv, 1.0)
    assert len(plan.items) == 3  # the three decodes; still no room for a fourth
    assert len(waiting) == 2


def test_chunked_prefill_5000_tokens_budget_2048():
    cfg = _cfg(max_num_batched_tokens=2048)
    kv = _kv(cfg)
    (req,) = _reqs(5000, output_len=2)
    running, waiting = [], deque([req])
    chunks = []
    while req.num_generated == 0:
        plan = schedule(cfg, running, waiting, kv, float(len(chunks)))
        assert [r for r, _ in plan.items] == [req]
        chunks.append(plan.items[0][1])
        _apply(plan, kv)
    # 5000 = 2048 + 2048 + 904; only the last chunk samples the first token.
    assert chunks == [2048, 2048, 904]
    assert req.num_computed == 5000 and req.num_generated == 1
    assert len(req.blocks) == -(-5000 // 16)  # ceil(5000/16) = 313
    plan = schedule(cfg, running, waiting, kv, 3.0)
    assert plan.items == [(req, 1)]  # then a decode


def test_fcfs_admission_and_scheduled_time():
    cfg = _cfg(max_num_batched_tokens=100)
    kv = _kv(cfg)
    reqs = _reqs(60, 60, 10)
    running, waiting = [], deque(reqs)
    plan = schedule(cfg, running, waiting, kv, 7.0)
    # FCFS: r0 gets 60, r1 the remaining 40 (partial chunk); r2 is not let past r1
    # even though its 10 tokens would have been small.
    assert [(r.request_id, n) for r, n in plan.items] == [("r0", 60), ("r1", 40)]
    assert list(waiting) == [reqs[2]]
    assert reqs[0].scheduled_s == reqs[1].scheduled_s == 7.0
    assert reqs[2].scheduled_s is None


def test_head_of_line_blocking_on_kv_blocks():
    cfg = _cfg(block_size=16, num_gpu_blocks=2)
    kv = _kv(cfg)
    big, small = _reqs(100, 10)
    running, waiting = [], deque([big, small])
    plan = schedule(cfg, running, waiting, kv, 0.0)
    # big needs ceil(100/16) = 7 blocks > 2: it stays first and blocks small behind it.
    assert plan.items == [] and plan.num_tokens == 0
    assert list(waiting) == [big, small]
    assert big.blocks == [] and kv.used_blocks == 0


def test_preemption_by_recompute_of_last_running_request():
    cfg = _cfg(block_size=16, num_gpu_blocks=4, max_num_batched_tokens=1000)
    kv = _kv(cfg)
    a, b, c = _reqs(32, 32, 8)
    running, waiting = [], deque([a, b])
    _apply(schedule(cfg, running, waiting, kv, 0.0), kv)
    # a and b hold 2 blocks each (32 tokens) = all 4; each now has 33 tokens.
    assert kv.used_blocks == 4 and a.num_tokens == b.num_tokens == 33
    waiting.append(c)
    plan = schedule(cfg, running, waiting, kv, 1.0)
    # a's decode needs a 3rd block: none free, so the LAST running request (b) is
    # preempted: blocks freed, num_computed reset, put at the FRONT of waiting.
    assert plan.preempted == 1
    assert plan.items == [(a, 1)] and plan.num_tokens == 1
    assert running == [a]
    assert list(waiting) == [b, c]
    assert b.num_computed == 0 and b.blocks == [] and b.num_preemptions == 1
    assert b.num_generated == 1  # its sampled token is kept and recomputed
    assert len(a.blocks) == 3 and kv.used_blocks == 3
    # No waiting request was admitted in the step that preempted (1 block was free).
    assert c.scheduled_s is None and c.blocks == []


def test_preempted_request_is_readmitted_first_and_recomputes_everything():
    cfg = _cfg(block_size=16, num_gpu_blocks=4, max_num_batched_tokens=1000)
    kv = _kv(cfg)
    a, b, c = _reqs(32, 32, 8)
    running, waiting = [], deque([a, b])
    _apply(schedule(cfg, running, waiting, kv, 0.0), kv)
    waiting.append(c)
    _apply(schedule(cfg, running, waiting, kv, 1.0), kv)  # preempts b
    kv.release(a)  # a finishes
    running.remove(a)
    plan = schedule(cfg, running, waiting, kv, 2.0)
    # b first (front of waiting) with all 33 tokens (32 prompt + 1 generated), then c.
    assert [(r.request_id, n) for r, n in plan.items] == [("r1", 33), ("r2", 8)]
    assert b.scheduled_s == 0.0  # first scheduling time is kept


def test_preemption_of_the_only_running_request():
    cfg = _cfg(block_size=16, num_gpu_blocks=2, max_num_batched_tokens=1000)
    kv = _kv(cfg)
    (a,) = _reqs(32)
    running, waiting = [], deque([a])
    _apply(schedule(cfg, running, waiting, kv, 0.0), kv)
    plan = schedule(cfg, running, waiting, kv, 1.0)
    # a itself is the last running request: it preempts itself and nothing runs.
    assert plan.preempted == 1 and plan.items == []
    assert running == [] and list(waiting) == [a] and kv.used_blocks == 0


def test_reserve_full_prompt_waits_for_whole_prompt():
    cfg = _cfg(block_size=16, num_gpu_blocks=4, max_num_batched_tokens=32, reserve_full_prompt=True)
    kv = _kv(cfg)
    (a,) = _reqs(100)
    plan = schedule(cfg, [], deque([a]), kv, 0.0)
    # A 32-token chunk would fit in 2 blocks, but the full prompt needs 7 > 4.
    assert plan.items == []
    cfg = _cfg(block_size=16, num_gpu_blocks=4, max_num_batched_tokens=32)
    plan = schedule(cfg, [], deque([a]), _kv(cfg), 0.0)
    assert plan.items == [(a, 32)]
