"""Grids of the operator profile and the summary of timed samples (pure Python + NumPy).

The profiler times every operator at the points of these grids; :func:`summarize`
turns each point's samples into the ``time_us, spread_us, samples`` columns.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

from mist.profiles.measure.settings import ProfileSettings


def token_grid(max_value: int, dense_until: int = 16, factor: float = 1.25) -> list[int]:
    """Every integer 1..``dense_until``, then steps of ×``factor``, ending at ``max_value``."""
    if max_value < 1:
        raise ValueError(f"grid maximum must be at least 1, got {max_value}")
    if factor <= 1:
        raise ValueError(f"factor must exceed 1, got {factor}")
    values = list(range(1, min(dense_until, max_value) + 1))
    x = float(values[-1])
    while True:
        x *= factor
        v = int(round(x))
        if v >= max_value:
            break
        if v > values[-1]:
            values.append(v)
    if values[-1] != max_value:
        values.append(max_value)
    return values


def geometric_grid(first: int, max_value: int, factor: int = 2, zero: bool = True) -> list[int]:
    """``[0,] first, first·factor, …`` up to ``max_value``, which is always included."""
    values = [0] if zero else []
    v = first
    while v < max_value:
        values.append(v)
        v *= factor
    if max_value >= 1 and (not values or values[-1] != max_value):
        values.append(max_value)
    return values


def attention_points(max_tokens: int, max_seqs: int, max_kv: int, chunk_factor: int = 2,
                     kv_factor: int = 4, n_factor: int = 2) -> list[tuple[int, int, int, int]]:
    """Grid of ``(prefill_chunk, kv_prefill, n_decode, kv_decode)`` batches to time.

    Like the GPU bundles' grid (chunks 0,16,32…; KV 0,16,…; decodes 0,1,2,4…) but
    with coarser, configurable steps. Kept: batches the engine could schedule —
    ``chunk + n_decode <= max_tokens``, ``n_decode + (chunk > 0) <= max_seqs``,
    ``kv_prefill + chunk <= max_kv``, ``kv_decode <= max_kv`` — and not empty.
    ``kv_prefill`` is 0 without a chunk, ``kv_decode`` is 0 without decodes.
    """
    chunks = geometric_grid(16, max_tokens, chunk_factor)
    kvs = geometric_grid(16, max_kv, kv_factor)
    ns = [0] + geometric_grid(1, max_seqs, n_factor, zero=False)
    points = []
    for c in chunks:
        for kp in (kvs if c else [0]):
            if kp + c > max_kv:
                continue
            for n in ns:
                if (c == 0 and n == 0) or c + n > max_tokens or n + (c > 0) > max_seqs:
                    continue
                for kd in (kvs[1:] if n else [0]):
                    points.append((c, kp, n, kd))
    return points


def grids_for(settings: ProfileSettings) -> dict:
    """The grids (and factors) a run uses; ``quick`` coarsens every axis."""
    q = settings.quick
    dense = token_grid(settings.max_num_batched_tokens, 4 if q else 16, 2.0 if q else 1.25)
    seqs = token_grid(settings.max_num_seqs, 2 if q else 16, 2.0 if q else 1.25)
    factors = dict(chunk_factor=4, kv_factor=8, n_factor=4) if q else \
        dict(chunk_factor=2, kv_factor=4, n_factor=2)
    points = attention_points(settings.max_num_batched_tokens, settings.max_num_seqs,
                              settings.max_kv, **factors)
    return {"tokens": dense, "sequences": seqs, "attention": points, "attention_factors": factors}


def grid_meta(g: dict) -> dict:
    """The grids for ``meta.yaml``: dense and per-sequence lists, attention axes."""
    points = g["attention"]
    return {"tokens": g["tokens"], "sequences": g["sequences"],
            "attention": {"points": len(points), **g["attention_factors"],
                          "chunks": sorted({p[0] for p in points}),
                          "kv": sorted({p[1] for p in points} | {p[3] for p in points}),
                          "n_decode": sorted({p[2] for p in points})}}


def summarize(samples_s: Iterable[float]) -> tuple[float, float, int]:
    """``(median, p90 - p10, count)`` of timings given in seconds, returned in µs."""
    a = np.asarray(list(samples_s), dtype=float) * 1e6
    if a.size == 0:
        raise ValueError("no samples to summarize")
    p10, p50, p90 = np.percentile(a, [10, 50, 90])
    return float(p50), float(p90 - p10), int(a.size)
