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


def run_probe(repeats: int = 41) -> dict:
    """Time the probe's operations; return ``{"version", "matmul_s", "python_s", "score_s"}``.

    Uses one BLAS thread when threadpoolctl is available (the engines here are
    measured with one compute thread too).
    """
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


def drift_ratio(recorded: dict | None, profiled: dict | None) -> float | None:
    """How much slower the machine was when recording than when profiling (>1: slower).

    ``None`` when either probe is missing or of another probe version.
    """
    if not recorded or not profiled:
        return None
    if recorded.get("version") != profiled.get("version"):
        return None
    return float(recorded["score_s"]) / float(profiled["score_s"])
