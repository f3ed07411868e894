"""Paged KV cache: block counts, allocation failure, release, prefix caching."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from mist.replay.kvcache import KVCache, prompt_block_hashes
from mist.replay.request import Request

REPO = Path(__file__).resolve().parents[1]


def _req(index, prompt_len, token_ids=None, output_len=4):
    return Request(index, f"r{index}", 0.0, prompt_len, output_len, token_ids)


def _compute_all(kv, req):
    """Attach cached prefix, allocate the rest, and mark the whole prompt computed."""
    hit = kv.match_prefix(req)
    if hit:  # as the scheduler does: take_prefix only after a hit
        kv.take_prefix(req, hit)
    assert kv.allocate(req, req.num_tokens)
    req.num_computed = req.num_tokens
    kv.commit(req)
    return hit


@pytest.mark.parametrize("tokens, blocks", [(1, 1), (16, 1), (17, 2), (33, 3), (48, 3), (49, 4)])
def test_allocation_counts_ceil_of_tokens_over_block_size(tokens, blocks):
    kv = KVCache(num_blocks=10, block_size=16)
    req = _req(1, tokens)
    assert kv.allocate(req, tokens)
    # ceil(tokens / 16) blocks, all taken from the free list.
    assert len(req.blocks) == blocks
    assert kv.used_blocks == blocks
    assert len(set(req.blocks)) == blocks


def test_allocation_grows_incrementally():
    kv = KVCache(num_blocks=10, block_size=16)
    req = _req(1, 100)
    assert kv.allocate(req, 20)  # 2 blocks
    first = list(req.blocks)
    assert kv.allocate(req, 32)  # still 2 blocks: nothing new
    assert req.blocks == first
    assert kv.allocate(req, 33)  # 3 blocks: one more, old ones kept in place
    assert req.blocks[:2] == first and len(req.blocks) == 3
    assert kv.used_blocks == 3


def test_allocation_failure_leaves_state_unchanged():
    kv = KVCache(num_blocks=4, block_size=16)
    a = _req(1, 32)
    assert kv.allocate(a, 32)  # 2 of 4 blocks
    free_before = list(kv.free)
    ref_before = list(kv.ref)
    b = _req(2, 100)
    assert not kv.can_allocate(b, 100)  # ceil(100/16) = 7 > 2 free
    assert kv.allocate(b, 100) is False
    assert b.blocks == []
    assert list(kv.free) == free_before
    assert kv.ref == ref_before
    assert kv.used_blocks == 2
    assert kv.can_allocate(b, 32) and kv.allocate(b, 32)  # exactly the 2 left


def test_release_returns_blocks():
    kv = KVCache(num_blocks=8, block_size=16)
    a, b = _req(1, 40), _req(2, 20)
    assert kv.allocate(a, 40) and kv.allocate(b, 20)  # 3 + 2 blocks
    assert kv.used_blocks == 5
    kv.release(a)
    assert a.blocks == [] and kv.used_blocks == 2
    kv.release(b)
    assert kv.used_blocks == 0 and len(kv.free) == 8
    assert kv.ref == [0] * 8


def test_shared_prefix_of_40_tokens_matches_32():
    kv = KVCache(num_blocks=20, block_size=16)
    shared = list(range(40))
    a = _req(1, 60, shared + list(range(1000, 1020)))
    b = _req(2, 60, shared + list(range(2000, 2020)))
    assert _compute_all(kv, a) == 0
    # Blocks 0 (ids 0-15) and 1 (16-31) are equal; block 2 (32-47) differs from id 40 on.
    assert kv.match_prefix(b) == 32
    before = kv.used_blocks
    kv.take_prefix(b, 32)
    assert b.blocks == a.blocks[:2]  # the same physical blocks, shared
    assert kv.used_blocks == before  # sharing takes nothing new
    assert kv.ref[a.blocks[0]] == 2


def test_fully_cached_prompt_still_recomputes_a_token():
    kv = KVCache(num_blocks=20, block_size=16)
    ids = list(range(64))
    a = _req(1, 64, ids)
    _compute_all(kv, a)  # 4 full blocks committed
    b = _req(2, 64, list(ids))
    # All 4 blocks are cached, but the match is capped at num_tokens - 1 = 63 tokens,
    # i.e. floor(63/16) = 3 whole blocks = 48.
    assert kv.match_prefix(b) == 48
    c = _req(3, 48, ids[:48])
    assert kv.match_prefix(c) == 32  # floor(47/16) = 2 blocks
    d = _req(4, 1, ids[:1])
    assert kv.match_prefix(d) == 0


def test_partial_block_is_not_cached():
    kv = KVCache(num_blocks=20, block_size=16)
    a = _req(1, 40, list(range(40)))
    _compute_all(kv, a)  # blocks 0,1 full; block 2 holds 8 tokens: not hashed
    b = _req(2, 60, list(range(60)))
    assert kv.match_prefix(b) == 32


def test_evicted_blocks_no_longer_hit():
    kv = KVCache(num_blocks=4, block_size=16)
    ids = list(range(64))
    a = _req(1, 64, ids)
    _compute_all(kv, a)
    kv.release(a)
    # Freed but still cached: a copy hits (48 tokens, capped as above).
    assert kv.match_prefix(_req(2, 64, list(ids))) == 48
    # Another request takes all 4 free blocks: every cached block is handed out again.
    other = _req(3, 64, list(range(500, 564)))
    assert kv.allocate(other, 64)
    assert kv.match_prefix(_req(4, 64, list(ids))) == 0


def test_eviction_is_lru_tail_first():
    kv = KVCache(num_blocks=4, block_size=16)
    ids = list(range(64))
    a = _req(1, 64, ids)
    _compute_all(kv, a)
    kv.release(a)
    # Release is tail first, so one new block evicts a's LAST block (ids 48-63); the
    # first three blocks still hit: min(3 blocks, floor(63/16) = 3) = 48 tokens.
    assert kv.allocate(_req(3, 16, list(range(500, 516))), 16)
    assert kv.match_prefix(_req(2, 64, list(ids))) == 48
    # A second new block evicts block 2 (ids 32-47): the chain now breaks after 2 blocks.
    assert kv.allocate(_req(5, 16, list(range(600, 616))), 16)
    assert kv.match_prefix(_req(4, 64, list(ids))) == 32


def test_prefix_caching_off_never_hits():
    kv = KVCache(num_blocks=20, block_size=16, prefix_caching=False)
    ids = list(range(64))
    a = _req(1, 64, ids)
    _compute_all(kv, a)
    assert kv.match_prefix(_req(2, 64, list(ids))) == 0
    assert kv.block_of == {}
    assert kv.hit_tokens == 0


def test_hashes_are_deterministic_and_chained():
    ids = list(range(50))
    h1 = prompt_block_hashes(ids, 16)
    h2 = prompt_block_hashes(list(ids), 16)
    assert h1 == h2 and len(h1) == 3  # floor(50/16) full blocks
    # Chained: changing a token in block 0 changes every later hash.
    other = prompt_block_hashes([999] + ids[1:], 16)
    assert all(x != y for x, y in zip(h1, other))
    # Changing a token in block 2 changes only block 2.
    late = prompt_block_hashes(ids[:40] + [999] + ids[41:], 16)
    assert late[:2] == h1[:2] and late[2] != h1[2]
    assert prompt_block_hashes([], 16) == []


def test_hashes_are_identical_across_processes():
    # Block hashes must not depend on PYTHONHASHSEED, or prefix hits would differ by run.
    code = ("from replay.kvcache import prompt_block_hashes;"
            "print(prompt_block_hashes(list(range(50)), 16))")
    outs = set()
    for seed in ("1", "2"):
        res = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True,
                             env={"PYTHONHASHSEED": seed, "PYTHONPATH": str(REPO)}, check=True)
        outs.add(res.stdout)
    assert outs == {str(prompt_block_hashes(list(range(50)), 16)) + "\n"}


def _preempt(kv, req):
    """As the scheduler's preemption does it."""
    kv.release(req, preempted=True)
    req.num_computed = 0
    req.num_preemptions += 1


def test_requests_without_token_ids_do_not_share_blocks_with_other_requests():
    kv = KVCache(num_blocks=40, block_size=16)
    a = _req(5, 64)
    _compute_all(kv, a)
    _preempt(kv, a)  # its salted blocks are now registered, for it to find again
    # Without token ids, blocks are salted per request: another request (even one that
    # really looks the cache up, as a preempted one does) never hits them ...
    other = _req(6, 64)
    other.num_preemptions = 1
    assert kv.match_prefix(other) == 0
    # ... but the same request does: 48 tokens as above
    assert kv.match_prefix(a) == 48
    # a request that simply ends leaves nothing findable (no one could find it anyway)
    b = _req(7, 64)
    _compute_all(kv, b)
    kv.release(b)
    b.num_computed, b.num_preemptions = 0, 1
    assert kv.match_prefix(b) == 0


def test_requests_0_and_1_without_token_ids_do_not_share_blocks():
    # hash(-1) == hash(-2) in CPython: the salt must not let indices 0 and 1 collide
    kv = KVCache(num_blocks=40, block_size=16)
    first = _req(0, 64)
    _compute_all(kv, first)
    _preempt(kv, first)
    second = _req(1, 64)
    second.num_preemptions = 1
    assert kv.match_prefix(second) == 0
    assert kv.match_prefix(first) == 48


class _EagerKV(KVCache):
    """The reference: every full block registered as it fills (vLLM's bookkeeping) and
    every waiting request looked up, salted or not."""

    def match_prefix(self, req):
        saved = req.num_preemptions  # look every request up: the shortcut is for ones never preempted
        req.num_preemptions = saved or 1
        try:
            return super().match_prefix(req)
        finally:
            req.num_preemptions = saved

    def commit(self, req):
        if not self.prefix_caching:
            return
        full, start = req.num_computed // self.block_size, req.num_committed
        if full > start:
            req.num_committed = full
            self._register(req, start, full)

    def release(self, req, preempted=False):
        super().release(req)

    def commit_ahead(self, due, k):  # (every commit registers, ids or not)
        for first, r in due:
            if first <= k:
                had = r.num_computed
                r.num_computed = had + k
                self.commit(r)
                r.num_computed = had


@pytest.mark.parametrize("seed", range(12))
def test_registering_salted_blocks_at_preemption_changes_no_result(seed, monkeypatch):
    # (a mutation that skips the registration at preemption, or the lookup of a
    # preempted request without ids, fails several of these seeds)
    # random streams through a cache small enough to preempt: some prompts share
    # prefixes, some have ids shorter than a block or than the prompt, some none
    import numpy as np

    import mist.replay.engine as simulate
    from mist.calibrate.lookup import GridLookup
    from mist.replay.config import EngineConfig
    from mist.replay.step_cost import StepCost

    rng = np.random.default_rng(seed)
    shared = rng.integers(0, 1000, 200).tolist()

    def stream():
        reqs = []
        for i in range(60):
            n = int(rng.integers(5, 160))
            kind = rng.integers(0, 4)
            ids = (None if kind == 0 else shared[:n] if kind == 1 and n <= 200
                   else rng.integers(0, 1000, int(rng.integers(1, n + 1))).tolist() if kind == 2
                   else rng.integers(0, 1000, n).tolist())
            reqs.append(Request(i, f"r{i}", float(rng.uniform(0, 2)), n, int(rng.integers(1, 40)), ids))
        return sorted(reqs, key=lambda r: r.arrival_s)

    reqs = stream()
    zero = GridLookup(axes=((0.0, 1.0),) * 4, values=(0.0,) * 16, strides=(8, 4, 2, 1))
    cost = StepCost(dense_s=(0.0,) + (0.01,) * 4096, per_seq_s=(0.0,) * 300, attention=zero, num_layers=1)
    cfg = EngineConfig(max_num_seqs=int(rng.integers(4, 32)), max_num_batched_tokens=int(rng.integers(64, 400)),
                       block_size=16, num_gpu_blocks=int(rng.integers(14, 60)),
                       async_scheduling=bool(seed % 2))
    results = []
    for kv_class in (KVCache, _EagerKV):
        monkeypatch.setattr(simulate, "KVCache", kv_class)
        copies = [Request(r.index, r.request_id, r.arrival_s, r.prompt_len, r.output_len, r.token_ids) for r in reqs]
        rep = simulate.replay_requests(copies, cfg, cost)
        results.append(([(r.first_token_s, r.finished_s, r.cached_tokens, r.num_preemptions)
                          for r in sorted(rep.requests, key=lambda r: r.index)], rep.steps))
    assert results[0] == results[1]


def test_free_queue_order_with_a_free_block_taken_back_by_a_prefix_hit():
    """A prefix hit on freed blocks takes them out of the LRU queue; released again they
    rejoin it at the back (the blocks handed out next are worked out by hand)."""
    kv = KVCache(num_blocks=4, block_size=2)
    a = _req(1, 5, [1, 2, 3, 4, 5])
    _compute_all(kv, a)  # blocks 0, 1, 2 (0 and 1 full: registered)
    assert a.blocks == [0, 1, 2] and kv.free == [3]
    kv.release(a)
    assert kv.free == [3, 2, 1, 0] and kv.num_free == 4  # tail first
    b = _req(2, 5, [1, 2, 3, 4, 5])
    assert kv.match_prefix(b) == 4
    kv.take_prefix(b, 4)
    assert b.blocks == [0, 1] and kv.free == [3, 2] and kv.used_blocks == 2
    c = _req(3, 4, [7, 7, 7, 7])  # shares block 0 with nobody
    assert kv.match_prefix(c) == 0
    d = _req(4, 5, [1, 2, 3, 4, 5])
    kv.take_prefix(d, kv.match_prefix(d))  # blocks 0 and 1 now held twice
    assert kv.ref[0] == kv.ref[1] == 2 and kv.free == [3, 2]
    kv.release(b)
    assert kv.free == [3, 2] and kv.ref[0] == 1  # still held by d
    kv.release(d)
    assert kv.free == [3, 2, 1, 0]
    assert kv.allocate(c, 8) and c.blocks == [3, 2, 1, 0]  # the taken-back entries are skipped
    assert kv.block_of == {} and kv.num_free == 0 and kv.free == []  # 0 and 1 evicted


def test_free_queue_is_compacted_and_keeps_its_order():
    kv = KVCache(num_blocks=64, block_size=1)
    reqs = [_req(i, 1) for i in range(64)]
    for rounds in range(200):  # 200 x 64 blocks through the queue: compacted many times
        for r in reqs:
            assert kv.allocate(r, 1)
        for r in reqs[::-1] if rounds % 2 else reqs:
            kv.release(r)
    assert len(kv.queue) - kv.head == 64 and kv.head < 2 * KVCache._COMPACT + 64
    assert kv.free == [r.index for r in reqs] and kv.ref == [0] * 64
