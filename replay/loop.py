"""A small deterministic discrete-event loop.

Events are ``(time_s, priority, seq, handler, payload)`` in a heap; ``seq`` is a
per-loop counter, so ties break in scheduling order and two loops fed the same
events pop them identically. Handlers return the events they cause as
``(time_s, priority, handler, payload)`` tuples; the loop only pops and pushes.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable, Iterable

Handler = Callable[[float, object], Iterable[tuple]]


class EventLoop:
    """Pop events in time order and push the events their handlers return."""

    def __init__(self) -> None:
        self.now = 0.0
        self._heap: list = []
        self._seq = 0

    def schedule(self, time_s: float, priority: int, handler: Handler, payload=None) -> None:
        """Add an event at ``time_s`` (s); lower ``priority`` pops first at equal times."""
        if time_s < self.now:
            raise ValueError(f"cannot schedule in the past ({time_s} < {self.now})")
        heapq.heappush(self._heap, (time_s, priority, self._seq, handler, payload))
        self._seq += 1

    def next_time(self) -> float:
        """Time (s) of the earliest pending event (infinity when none is left)."""
        return self._heap[0][0] if self._heap else float("inf")

    def step(self) -> bool:
        """Process one event; return False when none is left."""
        if not self._heap:
            return False
        time_s, _, _, handler, payload = heapq.heappop(self._heap)
        self.now = time_s
        for event in handler(time_s, payload) or ():
            self.schedule(*event)
        return True

    def run(self, until: float = float("inf")) -> float:
        """Process events up to time ``until`` (s); return the simulated time reached."""
        heap = self._heap
        while heap and heap[0][0] <= until:
            self.step()
        return self.now
