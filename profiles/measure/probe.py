"""A short, fixed speed probe of the machine (about a second).

Profile-based simulators suffer when the machine's speed differs between the time
operators were profiled and the time the validated run was recorded (CPU
frequency, noisy neighbours, GPU clocks). ``mist record`` and ``mist profile`` both
run this probe and store its result in their metadata, so ``mist validate`` can
rescale the profile by the ratio of the two.

Two kinds of work are timed, because an engine step is both: a float32 matrix
multiply (compute-bound kernels) and a pure-Python loop over dicts and lists (the
engine's host-side scheduling and bookkeeping). Each is the median of several
repeats; ``score_s`` is their geometric mean, in seconds (smaller is faster).
"""

from __future__ import annotations

import os
import time

import numpy as np

PROBE_VERSION = 1


def _median_time(fn, repeats: int) -> float:
    fn()  # warm-up: caches, page faults, BLAS thread start
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return float(np.median(times))


def _python_work() -> int:
    d: dict[int, list[int]] = {}
    for i in range(60_000):
        d.setdefault(i % 97, []).append(i)
    return sum(len(v) for v in d.values())


def run_probe(repeats: int = 41, cpus=None) -> dict:
    """Time the probe's operations; return ``{"version", "matmul_s", "python_s", "score_s"}``.

    Uses one BLAS thread when threadpoolctl is available (the engines here are
    measured with one compute thread too). ``cpus``: run pinned to these CPUs (the
    ones the engine computes on — virtual CPUs of one machine can differ in speed).
    """
    if cpus and hasattr(os, "sched_setaffinity"):
        before = os.sched_getaffinity(0)
        os.sched_setaffinity(0, set(cpus))
        try:
            return run_probe(repeats)
        finally:
            os.sched_setaffinity(0, before)
    rng = np.random.default_rng(0)
    a = rng.standard_normal((384, 384), dtype=np.float32)
    b = rng.standard_normal((384, 384), dtype=np.float32)

    def matmul():
        for _ in range(8):
            a @ b

    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # pragma: no cover - scikit-learn brings threadpoolctl
        threadpool_limits = None
    if threadpool_limits is not None:
        with threadpool_limits(limits=1):
            matmul_s = _median_time(matmul, repeats)
    else:  # pragma: no cover
        matmul_s = _median_time(matmul, repeats)
    python_s = _median_time(_python_work, repeats)
    return {"version": PROBE_VERSION, "matmul_s": matmul_s, "python_s": python_s,
            "score_s": float(np.sqrt(matmul_s * python_s))}


def probe_score(*probes) -> tuple[float | None, int | None]:
    """Mean ``score_s`` of the given probes (``None`` entries skipped) and their version."""
    found = [p for p in probes if p]
    versions = {p.get("version") for p in found}
    if not found or len(versions) != 1:
        return None, None
    return float(np.mean([float(p["score_s"]) for p in found])), versions.pop()


def drift_ratio(recorded, profiled) -> float | None:
    """How much slower the machine was when recording than when profiling (>1: slower).

    Each side is one probe dict or a list of them (e.g. taken before and after),
    averaged. ``None`` when either side has none or the probe versions differ.
    """
    rec, rv = probe_score(*(recorded if isinstance(recorded, list) else [recorded]))
    prof, pv = probe_score(*(profiled if isinstance(profiled, list) else [profiled]))
    if rec is None or prof is None or rv != pv:
        return None
    return rec / prof
