"""Treat one accelerator of a benchmark table as new: calibrate it from K rows, predict the rest.

:func:`leave_one_accelerator_out` is what ``mist calibrate-accelerator`` runs:

1. resolve every row's hardware (datasheet catalogue) and model (architecture catalogue)
   and compute its physical terms (:mod:`mist.calibrate.batch_physics`); rows that cannot be
   modelled are counted by reason, never guessed;
2. the *target* is the rows whose ``hardware`` is the given name (case-insensitive), or
   else whose hardware resolves to the same datasheet; rows of the same device under other
   names are held out too, so nothing of the target's device is trained on;
3. the other accelerators' rows give the prior (:func:`mist.calibrate.batch_model.learn_prior`);
4. K target rows in all are drawn at random (``numpy.random.default_rng(seed)``) within
   strata (:func:`draw_points`: at least 2 per framework when K allows, the rest in
   proportion; within a framework, one-device and multi-device rows in proportion), so
   an unlucky draw cannot leave a framework or the multi-device terms without a row;
   ``sampling="random"`` draws K of all rows uniformly.  The frameworks are calibrated
   together (:func:`mist.calibrate.batch_model.calibrate_joint`): a deviation from the prior
   shared by the accelerator's frameworks plus a tight one per framework.  With
   ``sampling="per-framework"`` (opt-in, *not* the K-rows contract) K rows of every
   framework are drawn instead and each framework is calibrated alone;
5. every other modelled row of the target is predicted; the report gives absolute
   percentage errors of ``latency_s`` overall and per framework.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from mist.calibrate.batch_model import calibrate, calibrate_joint, fit_group, learn_prior, predict
from mist.calibrate.batch_physics import TERMS, batch_terms
from mist.calibrate.calibration import ape_summary
from mist.profiles.hardware import get_hardware, load_catalog
from mist.profiles.model_catalog import load_model_catalog, resolve_model

TOO_FEW = "at most K modelled rows: all would be calibration points, none left to predict"
MIN_GROUP_ROWS = 12  # an (accelerator, framework) with fewer rows does not inform the prior


def _lookup(names, fn) -> list:
    """``fn`` of each name, None where it raises KeyError (computed once per distinct name)."""
    cache = {}
    for name in dict.fromkeys(names):
        try:
            cache[name] = fn(name)
        except KeyError:
            cache[name] = None
    return [cache[n] for n in names]


class NoDatasheet(ValueError):
    """The target accelerator has no entry in the hardware catalog."""


def _norm(name: str) -> str:
    return str(name).strip().casefold()


def resolve(table: pd.DataFrame, catalog=None, models=None, configs_dir=None):
    """Hardware, model and device key of every row.

    Returns
    -------
    hardware : list of Hardware or None
    model : list of ModelConfig or None
    device : np.ndarray of str
        Catalogue key of the hardware, or ``"?" + name`` when it has no datasheet.
    """
    catalog = load_catalog() if catalog is None else catalog
    models = load_model_catalog() if models is None else models
    hw = _lookup(list(table["hardware"]), lambda n: get_hardware(n, catalog))
    mdl = _lookup(list(table["model"]), lambda n: resolve_model(n, models, configs_dir))
    device = np.array([h.name if h is not None else "?" + _norm(n) for h, n in zip(hw, table["hardware"])])
    return hw, mdl, device


def target_mask(table: pd.DataFrame, device: np.ndarray, name: str, catalog=None) -> np.ndarray:
    """Rows of accelerator ``name``: same ``hardware`` text (case-insensitive), else same
    datasheet (``"h100_sxm"`` selects "Nvidia H100 GPU" rows), else hardware whose words
    include all of the name's (``"a100"`` selects "Nvidia A100 GPU").

    Raises
    ------
    ValueError
        When no row matches; the message lists the table's hardware.
    """
    exact = table["hardware"].map(_norm).to_numpy() == _norm(name)
    if exact.any():
        return exact
    try:
        key = get_hardware(name, load_catalog() if catalog is None else catalog).name
    except KeyError:
        key = None
    mask = device == key
    if not mask.any():
        words = set(_norm(name).split())
        mask = table["hardware"].map(lambda h: words <= set(_norm(h).split())).to_numpy()
    if not mask.any():
        known = ", ".join(sorted(table["hardware"].unique()))
        raise ValueError(f"no rows for target {name!r}; the table has: {known}")
    return mask


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


def training_prior(terms: np.ndarray, y: np.ndarray, accelerators, frameworks):
    """Prior from all (accelerator, framework) groups with enough rows."""
    fits = {}
    keys = pd.Series(list(zip(accelerators, frameworks)))
    for key, rows in keys.groupby(keys).groups.items():
        rows = np.asarray(rows)
        if len(rows) >= MIN_GROUP_ROWS:
            fits[key] = fit_group(terms[rows], y[rows])
    return learn_prior(fits), fits


def _errors(pred: np.ndarray, y: np.ndarray) -> dict:
    stats = ape_summary(pred, y, digits=3)
    return {"rows_predicted": int(len(pred)), **{k: stats[k] for k in ("mape", "median_ape", "p90_ape")}}


def leave_one_accelerator_out(table: pd.DataFrame, target: str, k: int, seed: int = 0, *,
                              sampling: str = "stratified", catalog=None, models=None,
                              configs_dir=None) -> tuple[dict, pd.DataFrame]:
    """Calibrate accelerator ``target`` from ``k`` of its rows and predict the others.

    Parameters
    ----------
    table : pd.DataFrame
        :data:`mist.traces.readers.llm_inference_bench.SCHEMA` rows (one or more files).
    target : str
        ``hardware`` value or catalogue name/alias.
    k, seed : int
        Calibration rows of the target in all and the seed of their draw.
    sampling : {"stratified", "random", "per-framework"}
        How the ``k`` rows are drawn (:func:`draw_points`); ``"per-framework"`` (opt-in)
        draws ``k`` rows of *each* framework (more than ``k`` target rows) and
        calibrates each framework alone.
    catalog, models, configs_dir
        Hardware catalogue, model catalogue and optional folder of ``config.json``.

    Returns
    -------
    report : dict
        ``target, points`` (K), ``points_used`` (target rows fitted on: K unless the
        target has fewer modelled rows, or more with ``"per-framework"``),
        ``rows_predicted, mape, median_ape`` (%), ``p90_ape``, ``skipped`` {reason:
        rows}, ``frameworks`` {name: errors and points}, ``training`` summary,
        ``sampling``, ``strata`` {"framework/1" or "framework/>1" devices: points},
        ``seed``, ``device``.
    rows : pd.DataFrame
        The target's rows with ``role`` (``point``/``predicted``/``skipped``),
        ``predicted_s``, ``ape`` and ``skip_reason``.
    """
    hw, mdl, device = resolve(table, catalog, models, configs_dir)
    terms_df, skip = batch_terms(table, hw, mdl)
    terms, y = terms_df[list(TERMS)].to_numpy(float), table["latency_s"].to_numpy(float)
    tmask = target_mask(table, device, target, catalog)
    tdev = sorted(set(device[tmask]) - {d for d in device[tmask] if d.startswith("?")})
    if not tdev:
        names = ", ".join(sorted(set(table["hardware"][tmask])))
        raise NoDatasheet(f"no datasheet for {names}: the hardware catalog has no such device "
                          f"(known: {', '.join(load_catalog() if catalog is None else catalog)})")
    same = np.isin(device, tdev) & ~tmask
    train = ~tmask & ~same & (skip.to_numpy() == "")
    prior, fits = training_prior(terms[train], y[train], table["hardware"].to_numpy()[train],
                                 table["framework"].to_numpy()[train])
    ok = np.flatnonzero(tmask & (skip.to_numpy() == ""))
    # strata by framework only: splitting by device count as well helped A100 but made
    # single-framework targets (the unseen-accelerator case) less robust
    pos, too_few = draw_points(table["framework"].to_numpy()[ok], k, seed, sampling)
    rows = table.loc[tmask, ["line", "hardware", "framework", "model", "num_devices", "input_tokens",
                             "output_tokens", "batch_size", "latency_s"]].copy()
    rows["role"], rows["predicted_s"], rows["ape"] = "skipped", np.nan, np.nan
    rows["skip_reason"] = skip[tmask].to_numpy()
    rows.loc[table.index[ok[pos]], "role"] = "point"
    for fw in too_few:
        rows.loc[(rows["framework"] == fw) & (rows["skip_reason"] == ""), "skip_reason"] = TOO_FEW
        rows.loc[rows["skip_reason"] == TOO_FEW, "role"] = "skipped"
    thetas, scale = _calibrate_frameworks(rows, terms, y, table.index, prior, sampling == "per-framework")
    per_fw = {}
    for fw, theta in thetas.items():
        rest = np.flatnonzero(table.index.isin(rows.index[(rows["framework"] == fw)
                                                          & (rows["skip_reason"] == "")
                                                          & (rows["role"] != "point")]))
        pred = predict(theta, terms[rest])
        rows.loc[table.index[rest], "role"] = "predicted"
        rows.loc[table.index[rest], "predicted_s"] = pred
        rows.loc[table.index[rest], "ape"] = np.abs(pred / y[rest] - 1) * 100
        points = int(((rows["framework"] == fw) & (rows["role"] == "point")).sum())
        per_fw[fw] = {"points": points, **_errors(pred, y[rest])}
    training = {"rows": int(train.sum()), "groups": len(fits),
                "accelerators": sorted({a for a, _ in fits}),
                "held_out_same_device_rows": int(same.sum()),
                "skipped_rows": int((~tmask & ~same & ~train).sum())}
    report = _report(target, rows, per_fw, training, k=k, seed=seed, sampling=sampling,
                     device=tdev[0] if len(tdev) == 1 else None)
    if scale is not None:
        report["prior_scale"] = scale
    return report, rows


def _calibrate_frameworks(rows, terms, y, index, prior, per_framework) -> tuple[dict, float | None]:
    """``{framework: theta}`` of the target's frameworks that have rows to predict, and
    the prior scale the joint calibration chose (None for per-framework fits)."""
    usable = rows[rows["skip_reason"] == ""]
    frameworks = sorted(usable["framework"].unique())
    pts = usable[usable["role"] == "point"]
    at = index.get_indexer(pts.index)
    if not frameworks:
        return {}, None
    if not per_framework:  # K in all: the frameworks share one accelerator deviation
        group = np.searchsorted(frameworks, pts["framework"].to_numpy())
        return calibrate_joint(terms[at], y[at], group, prior, frameworks)
    fw_of = pts["framework"].to_numpy()
    return {fw: calibrate(terms[at[fw_of == fw]], y[at[fw_of == fw]], *prior.mean_and_sd(fw))
            for fw in frameworks}, None


def _report(target, rows, per_fw, training, *, k, seed, sampling, device) -> dict:
    predicted, points = rows[rows["role"] == "predicted"], rows[rows["role"] == "point"]
    skipped = rows.loc[rows["role"] == "skipped", "skip_reason"].value_counts()
    return {
        "target": target,
        "hardware": sorted(rows["hardware"].unique()),
        "device": device,
        "points": int(k),
        "sampling": sampling,
        "strata": {f"{fw}/{'1' if n == 1 else '>1'}": int(c) for (fw, n), c in sorted(
            points.groupby([points["framework"], points["num_devices"].clip(upper=2)]).size().items())},
        "seed": int(seed),
        "rows": int(len(rows)),
        "points_used": int((rows["role"] == "point").sum()),
        **_errors(predicted["predicted_s"].to_numpy(), predicted["latency_s"].to_numpy()),
        "skipped": {str(r): int(c) for r, c in sorted(skipped.items())},
        "frameworks": per_fw,
        "training": training,
    }
