"""The discrete-event loop: ordering, handler-returned events, past times, ``run(until)``."""

from __future__ import annotations

import pytest

from mist.replay.loop import EventLoop


def _recorder(log):
    def handler(now, payload):
        log.append((now, payload))
        return []
    return handler


def test_events_pop_in_time_order():
    loop = EventLoop()
    log = []
    rec = _recorder(log)
    for t in (3.0, 1.0, 2.0, 0.5):
        loop.schedule(t, 0, rec, t)
    loop.run()
    # Sorted by time regardless of scheduling order; the handler sees now == event time.
    assert log == [(0.5, 0.5), (1.0, 1.0), (2.0, 2.0), (3.0, 3.0)]
    assert loop.now == 3.0


def test_ties_break_by_priority_then_insertion_order():
    loop = EventLoop()
    log = []
    rec = _recorder(log)
    loop.schedule(1.0, 1, rec, "p1-first")
    loop.schedule(1.0, 0, rec, "p0-first")
    loop.schedule(1.0, 1, rec, "p1-second")
    loop.schedule(1.0, 0, rec, "p0-second")
    loop.run()
    # Same time: priority 0 before 1; within a priority, the order they were scheduled.
    assert [p for _, p in log] == ["p0-first", "p0-second", "p1-first", "p1-second"]


def test_handler_returned_events_are_scheduled():
    loop = EventLoop()
    log = []

    def tick(now, n):
        log.append((now, n))
        # A chain of 3 ticks 0.25 s apart: 0, 0.25, 0.5.
        return [(now + 0.25, 0, tick, n + 1)] if n < 2 else []

    loop.schedule(0.0, 0, tick, 0)
    assert loop.run() == 0.5
    assert log == [(0.0, 0), (0.25, 1), (0.5, 2)]


def test_handler_returning_none_is_allowed():
    loop = EventLoop()
    loop.schedule(1.0, 0, lambda now, payload: None)
    assert loop.step() is True
    assert loop.step() is False


def test_scheduling_in_the_past_raises():
    loop = EventLoop()
    loop.schedule(2.0, 0, lambda now, p: [])
    loop.run()
    with pytest.raises(ValueError, match="past"):
        loop.schedule(1.0, 0, lambda now, p: [])
    loop.schedule(2.0, 0, lambda now, p: [])  # "now" itself is allowed


def test_handler_scheduling_in_the_past_raises():
    loop = EventLoop()
    loop.schedule(1.0, 0, lambda now, p: [(now - 0.5, 0, lambda n, q: [], None)])
    with pytest.raises(ValueError):
        loop.run()


def test_run_until_stops_and_resumes():
    loop = EventLoop()
    log = []
    rec = _recorder(log)
    for t in (1.0, 2.0, 3.0):
        loop.schedule(t, 0, rec, t)
    # Events at t <= until are processed; the clock stays at the last processed event.
    assert loop.run(until=2.0) == 2.0
    assert [p for _, p in log] == [1.0, 2.0]
    assert loop.run(until=2.5) == 2.0
    assert loop.run() == 3.0
    assert [p for _, p in log] == [1.0, 2.0, 3.0]


def test_two_loops_fed_the_same_events_pop_identically():
    def feed():
        loop, log = EventLoop(), []
        rec = _recorder(log)
        for i, (t, prio) in enumerate([(1.0, 1), (1.0, 0), (0.5, 1), (1.0, 1), (0.5, 0)]):
            loop.schedule(t, prio, rec, i)
        loop.run()
        return log

    # By hand: (0.5,0)#4, (0.5,1)#2, (1.0,0)#1, (1.0,1)#0, (1.0,1)#3.
    assert feed() == feed() == [(0.5, 4), (0.5, 2), (1.0, 1), (1.0, 0), (1.0, 3)]
