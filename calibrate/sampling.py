"""Which K rows of a target accelerator calibrate it: seeded, stratified draws.

:func:`draw_points` is the draw of ``mist calibrate-accelerator``: K rows in all at
random within strata (every framework gets :data:`MIN_PER_FRAMEWORK` rows when K
allows, the rest in proportion, by Hamilton's largest-remainder method), or K rows
uniformly, or (opt-in) K rows of each framework.
"""

from __future__ import annotations

import numpy as np

#: how the K rows may be drawn (:func:`draw_points`)
SAMPLINGS = ("stratified", "random", "per-framework")
MIN_PER_FRAMEWORK = 2  # stratified draw: rows of every framework when K allows


def _largest_remainder(k: int, sizes: np.ndarray, floor: int, rng) -> np.ndarray:
    """``k`` draws over strata of ``sizes`` rows: up to ``floor`` each when ``k`` allows,
    the rest in proportion to the rows left (Hamilton's method, ties broken by ``rng``)."""
    alloc = np.minimum(sizes, floor if k >= floor * np.count_nonzero(sizes) else 0)
    left, room = k - alloc.sum(), sizes - alloc
    while left > 0 and room.sum() > 0:
        quota = left * room / room.sum()
        step = np.minimum(np.floor(quota).astype(int), room)
        if step.sum() == 0:  # hand out single rows by largest remainder, random tie-break
            order = np.lexsort((rng.random(len(sizes)), -(quota - step)))
            step = np.zeros_like(sizes)
            step[[i for i in order if room[i] > 0][:left]] = 1
        alloc, left, room = alloc + step, left - step.sum(), room - step
    return alloc


def _strata(frameworks: np.ndarray, devices) -> list[list[np.ndarray]]:
    """Per framework (sorted by name), the positions of its one-device rows and of its
    multi-device rows (all one stratum when ``devices`` is None)."""
    out = []
    for fw in sorted(set(frameworks)):
        rows = np.flatnonzero(frameworks == fw)
        multi = np.zeros(len(rows), bool) if devices is None else np.asarray(devices)[rows] > 1
        out.append([rows[~multi], rows[multi]])
    return out


def draw_points(frameworks: np.ndarray, k: int, seed: int, sampling: str = "stratified",
                devices=None):
    """Positions (into ``frameworks``) of the calibration rows, and frameworks left unevaluated.

    ``sampling``:

    ``"stratified"`` (default)
        ``k`` rows in all, drawn at random within strata: every framework gets
        :data:`MIN_PER_FRAMEWORK` rows when ``k`` allows and the rest in proportion to its
        rows; a framework's share is split the same way (in proportion, at least one each
        when it allows) between its one-device and multi-device rows (``devices``).
    ``"random"``
        ``k`` of all rows, uniformly without replacement.
    ``"per-framework"``
        ``k`` of each framework's rows (more than ``k`` in all); a framework with at most
        ``k`` rows has nothing left to predict and is returned in ``too_few``.

    With at most ``k`` rows in all, ``"stratified"`` and ``"random"`` take them all and
    return every framework in ``too_few`` (nothing to predict).
    Deterministic given ``seed`` (``numpy.random.default_rng``).
    """
    if sampling not in SAMPLINGS:
        raise ValueError(f"sampling {sampling!r}: expected one of {', '.join(SAMPLINGS)}")
    rng = np.random.default_rng(seed)
    if sampling != "per-framework" and len(frameworks) <= k:
        return np.arange(len(frameworks)), sorted(set(frameworks))
    if sampling == "random":
        return np.sort(rng.choice(len(frameworks), k, replace=False)), []
    if sampling == "stratified":
        strata = _strata(frameworks, devices)
        shares = _largest_remainder(k, np.array([sum(map(len, s)) for s in strata]), MIN_PER_FRAMEWORK, rng)
        points = []
        for parts, share in zip(strata, shares):
            sizes = np.array([len(p) for p in parts])
            for rows, n in zip(parts, _largest_remainder(share, sizes, 1, rng)):
                points.append(rng.choice(rows, n, replace=False))
        return np.sort(np.concatenate(points)), []
    points, too_few = [], []
    for fw in sorted(set(frameworks)):
        rows = np.flatnonzero(frameworks == fw)
        if len(rows) <= k:
            too_few.append(fw)
            continue
        points.append(rng.choice(rows, k, replace=False))
    return np.sort(np.concatenate(points)) if points else np.array([], int), too_few
