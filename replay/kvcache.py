"""A paged KV cache with vLLM-style automatic prefix caching.

Blocks hold ``block_size`` tokens. Free blocks wait in one LRU queue; a block that
filled up while in use keeps its content hash after it is freed, so a later request
with the same prefix can reuse it until the block is handed out again (evicted).
Block hashes chain: block ``i``'s hash covers all tokens up to the end of block ``i``.

Prompt tokens hash by their ids when the trace has them; otherwise, and for
generated tokens (whose ids a replay never knows), they hash with a per-request
salt, so they can only be hit by the same request again (after a preemption).
Salted blocks are therefore registered only when their request is preempted: no
other request can ever find them, so registering them as they fill (as vLLM does)
would change no lookup, only cost time.
"""

from __future__ import annotations

from mist.replay.request import Request

_SALT_TAG = -7  # marks per-request salted hashes; token ids are never negative


def prompt_block_hashes(token_ids, block_size: int) -> list[int]:
    """Chained hashes of the full blocks of ``token_ids``.

    Ints and tuples of ints hash identically in every Python process (no hash
    randomisation), so hits are reproducible.
    """
    hashes, prev = [], 0
    for start in range(0, len(token_ids) - block_size + 1, block_size):
        prev = hash((prev, tuple(token_ids[start:start + block_size])))
        hashes.append(prev)
    return hashes if token_ids else []


class KVCache:
    """Block allocator with prefix caching (``enable_prefix_caching``).

    The free queue is a list read from ``head`` (least recently freed first): blocks
    are taken and returned a slice at a time. A free block that a prefix hit takes
    back (:meth:`take_prefix`) stays in the list, counted in ``dead``, and is skipped
    when its turn comes: a block's dead entries always precede its live one.
    """

    #: taken entries the free list keeps before it is compacted
    _COMPACT = 4096

    def __init__(self, num_blocks: int, block_size: int, prefix_caching: bool = True):
        self.num_blocks = num_blocks
        self.block_size = block_size
        self.prefix_caching = prefix_caching
        self.queue: list[int] = list(range(num_blocks))  # free blocks in LRU order, from ``head``
        self.head = 0
        self.num_free = num_blocks
        self.dead: dict[int, int] = {}  # block -> entries of it in ``queue`` that are no longer free
        self.shared = 0  # blocks held by more than one request
        self.ref = [0] * num_blocks
        self.hash_of: list[int | None] = [None] * num_blocks
        self.block_of: dict[int, int] = {}
        self.hit_tokens = 0
        self.queried_tokens = 0

    @property
    def free(self) -> list[int]:
        """The free blocks, least recently freed first (the order they are handed out)."""
        dead, out = dict(self.dead), []
        for b in self.queue[self.head:]:
            if dead.get(b):
                dead[b] -= 1
            else:
                out.append(b)
        return out

    @property
    def used_blocks(self) -> int:
        return self.num_blocks - self.num_free

    def _hashes(self, req: Request, upto_blocks: int) -> list[int]:
        """Hashes of the request's first ``upto_blocks`` full blocks (computed lazily)."""
        hashes = req.block_hashes
        if hashes is None:
            ids = req.token_ids
            hashes = prompt_block_hashes(ids, self.block_size) if ids is not None else []
            req.block_hashes = hashes
        if len(hashes) < upto_blocks:  # salted hashes for tokens without known ids
            # (a tuple salt: hash(-1) == hash(-2) in CPython, so bare ints could collide)
            salt = (_SALT_TAG, req.index)
            prev = hashes[-1] if hashes else hash(salt)
            for i in range(len(hashes), upto_blocks):
                prev = hash((prev, salt, i))
                hashes.append(prev)
        return hashes

    def match_prefix(self, req: Request) -> int:
        """Tokens of ``req`` found in the cache (whole blocks), at most ``num_tokens - 1``.

        The last token is always recomputed: its logits are needed to sample.
        """
        if not self.prefix_caching:
            return 0
        # (block hashes come from token ids alone: a request without ids has only salted
        # ones, which are registered at its first preemption and nowhere else)
        if req.token_ids is None and not req.num_preemptions:
            self.queried_tokens += req.num_tokens  # salted blocks only: none can be cached yet
            return 0
        max_blocks = (req.num_tokens - 1) // self.block_size
        hashes = self._hashes(req, max_blocks)
        n = 0
        for h in hashes[:max_blocks]:
            if h not in self.block_of:
                break
            n += 1
        self.queried_tokens += req.num_tokens
        self.hit_tokens += n * self.block_size
        return n * self.block_size

    def take_prefix(self, req: Request, num_tokens: int) -> None:
        """Attach the cached blocks of ``req``'s first ``num_tokens`` tokens."""
        ref, dead = self.ref, self.dead
        for h in req.block_hashes[: num_tokens // self.block_size]:
            b = self.block_of[h]
            if ref[b] == 0:  # (its entry in the free queue is skipped when reached)
                dead[b] = dead.get(b, 0) + 1
                self.num_free -= 1
            elif ref[b] == 1:
                self.shared += 1
            ref[b] += 1
            req.blocks.append(b)
        req.num_committed = len(req.blocks)

    def can_allocate(self, req: Request, num_tokens: int) -> bool:
        need = -(-num_tokens // self.block_size) - len(req.blocks)
        return need <= self.num_free

    def allocate(self, req: Request, num_tokens: int) -> bool:
        """Grow ``req`` to hold ``num_tokens`` tokens; False (and no change) if blocks run out."""
        blocks = req.blocks
        need = -(-num_tokens // self.block_size) - len(blocks)
        if need > self.num_free:
            return False
        if need <= 0:
            return True
        head = self.head
        if need == 1 and not self.dead:  # (the common case: a decode entering a new block)
            return self._take_one(blocks, head)
        if self.dead:
            taken, head = self._take_live(need, head)
        else:
            taken = self.queue[head:head + need]  # the least recently freed blocks
            head += need
        self._claim(taken)
        blocks += taken
        self._advance(head)
        return True

    def _claim(self, taken: list) -> None:
        """Blocks just taken from the free queue: their cached content evicted, each
        referenced once, the free count lowered."""
        self.num_free -= len(taken)
        if self.block_of:  # evict the cached content
            hash_of, block_of = self.hash_of, self.block_of
            for b in taken:
                h = hash_of[b]
                if h is not None:
                    del block_of[h]
                    hash_of[b] = None
        ref = self.ref
        for b in taken:
            ref[b] = 1

    def _advance(self, head: int) -> None:
        """Move the free queue's head to ``head``, dropping the consumed prefix once it
        is at least half the queue (and ``_COMPACT`` entries)."""
        if head >= self._COMPACT and 2 * head >= len(self.queue):
            del self.queue[:head]
            head = 0
        self.head = head

    def _take_one(self, blocks: list, head: int) -> bool:
        """:meth:`allocate` of one block with no dead entries in the free queue."""
        b = self.queue[head]
        h = self.hash_of[b]
        if h is not None:  # evict the cached content
            del self.block_of[h]
            self.hash_of[b] = None
        self.ref[b] = 1
        blocks.append(b)
        self.num_free -= 1
        self._advance(head + 1)
        return True

    def take_one_each(self, reqs: list) -> None:
        """:meth:`allocate` of one more block for each of ``reqs`` in turn (as many
        blocks free; each needs exactly one), in one slice when no entry is dead."""
        if self.dead:
            for r in reqs:
                self.allocate(r, (len(r.blocks) + 1) * self.block_size)
            return
        head = self.head
        taken = self.queue[head:head + len(reqs)]
        self._claim(taken)
        for r, b in zip(reqs, taken):
            r.blocks.append(b)
        self._advance(head + len(taken))

    def _take_live(self, need: int, head: int) -> tuple[list, int]:
        """The next ``need`` free blocks from ``head``, skipping dead entries; and the new head."""
        queue, dead, taken = self.queue, self.dead, []
        while len(taken) < need:
            b = queue[head]
            head += 1
            left = dead.get(b)
            if left:
                if left == 1:
                    del dead[b]
                else:
                    dead[b] = left - 1
            else:
                taken.append(b)
        return taken, head

    def commit(self, req: Request) -> None:
        """Register the hashes of blocks that are now full of computed tokens (those
        hashed from token ids; salted ones wait for :meth:`release` of a preemption)."""
        if not self.prefix_caching:
            return
        bs = self.block_size
        full = req.num_computed // bs
        start = req.num_committed
        if full <= start:
            return
        req.num_committed = full
        ids = req.token_ids
        if ids is None:
            return
        if full > len(ids) // bs:
            full = len(ids) // bs
        self._register(req, start, full)

    def commit_ahead(self, due: list, k: int) -> None:
        """:meth:`commit` of the requests of ``due`` (``(first plan, request)`` pairs,
        see :func:`mist.replay.coast.block_phases`) due by plan ``k``, as of ``k`` more
        computed tokens than they have."""
        bs = self.block_size
        for first, r in due:
            if first > k:
                continue
            if r.token_ids is None:  # (nothing to register: the count alone)
                full = (r.num_computed + k) // bs
                if full > r.num_committed:
                    r.num_committed = full
                continue
            had = r.num_computed
            r.num_computed = had + k
            self.commit(r)
            r.num_computed = had

    def _register(self, req: Request, start: int, end: int) -> None:
        """Register the hashes of ``req``'s blocks ``start`` to ``end`` (exclusive)."""
        if end <= start:
            return
        hashes = req.block_hashes
        if hashes is None or len(hashes) < end:
            hashes = self._hashes(req, end)
        blocks, hash_of, block_of = req.blocks, self.hash_of, self.block_of
        for i in range(start, end):
            b = blocks[i]
            if hash_of[b] is None:
                h = hashes[i]
                if h not in block_of:
                    hash_of[b] = h
                    block_of[h] = b

    def release(self, req: Request, preempted: bool = False) -> None:
        """Free ``req``'s blocks, tail first, so its last blocks are evicted first.
        ``preempted``: it will be recomputed, so its salted full blocks are registered
        first, for it to find again."""
        if preempted and self.prefix_caching:
            ids = req.token_ids
            self._register(req, len(ids) // self.block_size if ids is not None else 0, req.num_committed)
        blocks, ref = req.blocks, self.ref
        if not self.shared:  # every block is this request's alone: all free again
            for b in blocks:
                ref[b] = 0
            self.queue += reversed(blocks)
            self.num_free += len(blocks)
        else:
            queue = self.queue
            for b in reversed(blocks):
                left = ref[b] - 1
                ref[b] = left
                if not left:
                    queue.append(b)
                    self.num_free += 1
                elif left == 1:
                    self.shared -= 1
        req.blocks = []
        req.num_committed = 0
