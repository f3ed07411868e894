"""Per-request replay state (mutable; one object per request per replay)."""

from __future__ import annotations


class Request:
    """A request moving through the simulated engine.

    Token accounting follows vLLM: ``num_tokens = prompt_len + num_generated`` tokens
    exist; ``num_computed`` of them have KV in the cache. A step that brings
    ``num_computed`` up to ``num_tokens`` samples one new token.
    """

    __slots__ = (
        "index", "request_id", "arrival_s", "prompt_len", "output_len", "token_ids",
        "num_computed", "num_generated", "num_tokens", "blocks", "num_committed", "block_hashes", "cached_tokens",
        "queued_s", "scheduled_s", "first_token_s", "finished_s", "num_preemptions", "replica",
    )

    def __init__(self, index: int, request_id: str, arrival_s: float, prompt_len: int,
                 output_len: int, token_ids=None):
        self.index = index
        self.request_id = request_id
        self.arrival_s = arrival_s
        self.prompt_len = prompt_len
        self.output_len = output_len
        self.token_ids = token_ids
        self.num_computed = 0
        self.num_generated = 0
        self.num_tokens = prompt_len  # prompt_len + num_generated, kept in step for speed
        self.blocks: list[int] = []
        self.num_committed = 0  # leading blocks whose hashes are registered
        self.block_hashes: list[int] | None = None
        self.cached_tokens = 0
        self.queued_s = None
        self.scheduled_s = None
        self.first_token_s = None
        self.finished_s = None
        self.num_preemptions = 0
        self.replica = 0
