"""Treat one accelerator of a benchmark table as new: calibrate it from K rows, predict the rest.

:func:`calibrate_accelerator` is the job behind ``mist calibrate-accelerator``: it reads
LLM-Inference-Bench CSVs and the hardware catalog named in its
:class:`AcceleratorSettings` and runs :func:`leave_one_accelerator_out` on the table:

1. resolve every row's hardware (datasheet catalogue) and model (architecture catalogue)
   and compute its physical terms (:mod:`mist.calibrate.batch_physics`); rows that cannot be
   modelled are counted by reason, never guessed;
2. the *target* is the rows whose ``hardware`` is the given name (case-insensitive), or
   else whose hardware resolves to the same datasheet; rows of the same device under other
   names are held out too, so nothing of the target's device is trained on;
3. the other accelerators' rows give the prior (:func:`mist.calibrate.batch_model.learn_prior`);
4. K target rows in all are drawn at random (``numpy.random.default_rng(seed)``) within
   strata (:func:`mist.calibrate.sampling.draw_points`: at least 2 per framework when K allows, the rest in
   proportion; within a framework, one-device and multi-device rows in proportion), so
   an unlucky draw cannot leave a framework or the multi-device terms without a row;
   ``sampling="random"`` draws K of all rows uniformly.  The frameworks are calibrated
   together (:func:`mist.calibrate.batch_model.calibrate_joint`): a deviation from the prior
   shared by the accelerator's frameworks plus a tight one per framework.  With
   ``sampling="per-framework"`` (opt-in, *not* the K-rows contract) K rows of every
   framework are drawn instead and each framework is calibrated alone;
5. every other modelled row of the target is predicted; the report gives absolute
   percentage errors of ``latency_s`` overall and per framework.

In a notebook::

    from mist.calibrate.accelerator import AcceleratorSettings, calibrate_accelerator
    result = calibrate_accelerator(AcceleratorSettings(
        bench=("../shared/data/benchmarks/llm-inference-bench/All_results.csv",),
        target="Nvidia H100 GPU", points=10))
    print(result.summary())
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from mist.calibrate.batch_model import calibrate, calibrate_joint, fit_group, learn_prior, predict
from mist.calibrate.batch_physics import TERMS, batch_terms
from mist.calibrate.bench_rows import NoDatasheet, resolve, target_mask
from mist.calibrate.calibration import ape_summary
from mist.calibrate.sampling import draw_points
from mist.profiles.hardware import load_catalog
from mist.traces.errors import TraceError
from mist.traces.readers.llm_inference_bench import read_llm_inference_bench

TOO_FEW = "at most K modelled rows: all would be calibration points, none left to predict"
MIN_GROUP_ROWS = 12  # an (accelerator, framework) with fewer rows does not inform the prior


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


@dataclass(frozen=True)
class _Split:
    """The table's rows as leave-one-accelerator-out sees them (masks are over rows)."""

    terms: np.ndarray  # (rows, len(TERMS)) physical terms, NaN where skipped
    y: np.ndarray  # measured batch latency, s
    skip: np.ndarray  # why a row cannot be modelled, "" when it can
    target: np.ndarray  # rows of the target accelerator
    same: np.ndarray  # the target's device under other names: held out of training too
    train: np.ndarray  # modelled rows of the other devices
    devices: list  # the target's datasheet key(s)


def _split(table: pd.DataFrame, target: str, catalog, models, configs_dir) -> _Split:
    """Terms of every row and which rows are the target's, held out or training."""
    hw, mdl, device = resolve(table, catalog, models, configs_dir)
    terms_df, skip = batch_terms(table, hw, mdl)
    skip = skip.to_numpy()
    tmask = target_mask(table, device, target, catalog)
    tdev = sorted(set(device[tmask]) - {d for d in device[tmask] if d.startswith("?")})
    if not tdev:
        names = ", ".join(sorted(set(table["hardware"][tmask])))
        raise NoDatasheet(f"no datasheet for {names}: the hardware catalog has no such device "
                          f"(known: {', '.join(load_catalog() if catalog is None else catalog)})")
    same = np.isin(device, tdev) & ~tmask
    return _Split(terms_df[list(TERMS)].to_numpy(float), table["latency_s"].to_numpy(float), skip,
                  tmask, same, ~tmask & ~same & (skip == ""), tdev)


#: columns of the target's rows in :func:`leave_one_accelerator_out`'s second result
ROW_COLUMNS = ("line", "hardware", "framework", "model", "num_devices", "input_tokens",
               "output_tokens", "batch_size", "latency_s")


def _target_rows(table: pd.DataFrame, split: _Split, k: int, seed: int, sampling: str) -> pd.DataFrame:
    """The target's rows with the drawn calibration points marked (``role``)."""
    ok = np.flatnonzero(split.target & (split.skip == ""))
    # strata by framework only: splitting by device count as well helped A100 but made
    # single-framework targets (the unseen-accelerator case) less robust
    pos, too_few = draw_points(table["framework"].to_numpy()[ok], k, seed, sampling)
    rows = table.loc[split.target, list(ROW_COLUMNS)].copy()
    rows["role"], rows["predicted_s"], rows["ape"] = "skipped", np.nan, np.nan
    rows["skip_reason"] = split.skip[split.target]
    rows.loc[table.index[ok[pos]], "role"] = "point"
    for fw in too_few:
        rows.loc[(rows["framework"] == fw) & (rows["skip_reason"] == ""), "skip_reason"] = TOO_FEW
        rows.loc[rows["skip_reason"] == TOO_FEW, "role"] = "skipped"
    return rows


def leave_one_accelerator_out(table: pd.DataFrame, target: str, k: int, seed: int = 0, *,
                              sampling: str = "stratified", catalog=None, models=None,
                              configs_dir=None) -> tuple[dict, pd.DataFrame]:
    """Calibrate accelerator ``target`` from ``k`` of its rows and predict the others.

    Parameters
    ----------
    table : pd.DataFrame
        ``offline_batch_bench`` rows (:data:`mist.traces.schema.OFFLINE_BATCH_BENCH`;
        one or more files).
    target : str
        ``hardware`` value or catalogue name/alias.
    k, seed : int
        Calibration rows of the target in all and the seed of their draw.
    sampling : {"stratified", "random", "per-framework"}
        How the ``k`` rows are drawn (:func:`mist.calibrate.sampling.draw_points`);
        ``"per-framework"`` (opt-in) draws ``k`` rows of *each* framework (more than
        ``k`` target rows) and calibrates each framework alone.
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
        ``seed``, ``device``, ``prior_scale`` (joint calibration only).
    rows : pd.DataFrame
        The target's rows (:data:`ROW_COLUMNS`) with ``role``
        (``point``/``predicted``/``skipped``), ``predicted_s``, ``ape`` (%) and
        ``skip_reason``.
    """
    split = _split(table, target, catalog, models, configs_dir)
    train = split.train
    prior, fits = training_prior(split.terms[train], split.y[train], table["hardware"].to_numpy()[train],
                                 table["framework"].to_numpy()[train])
    rows = _target_rows(table, split, k, seed, sampling)
    thetas, scale = _calibrate_frameworks(rows, split.terms, split.y, table.index, prior,
                                          sampling == "per-framework")
    per_fw = _predict_frameworks(rows, thetas, split, table.index)
    training = {"rows": int(train.sum()), "groups": len(fits),
                "accelerators": sorted({a for a, _ in fits}),
                "held_out_same_device_rows": int(split.same.sum()),
                "skipped_rows": int((~split.target & ~split.same & ~train).sum())}
    report = _report(target, rows, per_fw, training, k=k, seed=seed, sampling=sampling,
                     device=split.devices[0] if len(split.devices) == 1 else None)
    if scale is not None:
        report["prior_scale"] = scale
    return report, rows


def _predict_frameworks(rows: pd.DataFrame, thetas: dict, split: _Split, index: pd.Index) -> dict:
    """Predict every modelled non-point row of each calibrated framework (filling ``rows``'
    ``role``, ``predicted_s`` and ``ape`` in place); ``{framework: points and errors}``."""
    per_fw = {}
    for fw, theta in thetas.items():
        rest = np.flatnonzero(index.isin(rows.index[(rows["framework"] == fw)
                                                    & (rows["skip_reason"] == "")
                                                    & (rows["role"] != "point")]))
        pred = predict(theta, split.terms[rest])
        rows.loc[index[rest], "role"] = "predicted"
        rows.loc[index[rest], "predicted_s"] = pred
        rows.loc[index[rest], "ape"] = np.abs(pred / split.y[rest] - 1) * 100
        points = int(((rows["framework"] == fw) & (rows["role"] == "point")).sum())
        per_fw[fw] = {"points": points, **_errors(pred, split.y[rest])}
    return per_fw


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


@dataclass(frozen=True)
class AcceleratorSettings:
    """What :func:`calibrate_accelerator` calibrates and how.

    Attributes
    ----------
    bench : tuple of Path
        LLM-Inference-Bench CSV file(s) (``All_results.csv``, ``TP_PP_Results.csv``,
        ``all_results_TTFT_ITL.csv``), read and concatenated; each at most once.
    target : str
        Accelerator to treat as new: a ``Hardware`` value ("Nvidia H100 GPU") or a
        catalogue name/alias (``h100_sxm``).
    points : int
        K, the calibration rows of ``target`` drawn at random, in all (of each framework
        with ``sampling="per-framework"``).
    seed : int
        Seed of the draw.
    sampling : {"stratified", "random", "per-framework"}
        How the K rows are drawn (:func:`mist.calibrate.sampling.draw_points`).
    models_dir : Path, optional
        Folder of Hugging Face ``config.json`` files (``<org>--<name>_config.json``) for
        models the catalogue lacks.
    hardware : tuple of Path
        Extra hardware catalogs (format of ``profiles/hardware.yaml``), read in order.
    """

    bench: tuple
    target: str
    points: int
    seed: int = 0
    sampling: str = "stratified"
    models_dir: Path | None = None
    hardware: tuple = ()


@dataclass(frozen=True)
class AcceleratorResult:
    """What :func:`calibrate_accelerator` found.

    Attributes
    ----------
    report : dict
        :func:`leave_one_accelerator_out`'s report plus ``bench`` (the CSV paths as
        given): the ``--json`` document.
    rows : pd.DataFrame
        The target's rows with ``role``, ``predicted_s`` (s), ``ape`` (%) and
        ``skip_reason``: the ``--rows`` CSV.
    """

    report: dict
    rows: pd.DataFrame

    def summary(self) -> str:
        """Markdown table: one line per framework and the total, then what was skipped
        and where the prior came from."""
        r = self.report
        lines = [f"# mist calibrate-accelerator: {r['target']} ({r['sampling']}, "
                 f"K={r['points']}, seed {r['seed']})", "",
                 "| framework | points | rows predicted | MAPE % | median APE % | P90 APE % |",
                 "|---|---:|---:|---:|---:|---:|"]
        for fw, e in r["frameworks"].items():
            lines.append(f"| {fw} | {e['points']} | {e['rows_predicted']} | {_pct(e['mape'])} | "
                         f"{_pct(e['median_ape'])} | {_pct(e['p90_ape'])} |")
        lines.append(f"| **all** | {r['points_used']} | {r['rows_predicted']} | "
                     f"{_pct(r['mape'])} | {_pct(r['median_ape'])} | {_pct(r['p90_ape'])} |")
        lines.append("")
        for reason, n in r["skipped"].items():
            lines.append(f"skipped {n} row(s): {reason}")
        t = r["training"]
        if t.get("skipped_rows"):
            lines.append(f"skipped {t['skipped_rows']} training row(s) of other accelerators: "
                         "no datasheet or no model config to compose them from")
        lines.append(f"prior from {t['rows']} rows of {len(t['accelerators'])} other accelerator(s), "
                     f"{t['groups']} accelerator x framework group(s)"
                     + (f"; its spread x{r['prior_scale']:g}, as the calibration rows' evidence chose"
                        if r.get("prior_scale") is not None else ""))
        return "\n".join(lines) + "\n"


def _pct(x) -> str:
    return "–" if x is None else f"{x:.2f}"


def check_distinct(paths) -> None:
    """Raise TraceError when a file is given twice: its rows would be both calibration
    points and predictions."""
    seen: dict = {}
    for path in map(Path, paths):
        try:
            key = path.resolve()
        except (OSError, RuntimeError) as exc:  # RuntimeError: a symlink loop (Python < 3.13)
            raise TraceError(path, f"cannot resolve the path (a symbolic link loop?): {exc}") from exc
        if key in seen:
            raise TraceError(path, f"given twice in --bench (as {seen[key]}): its rows would be both "
                                   "calibration points and predictions")
        seen[key] = path


def read_bench(paths) -> pd.DataFrame:
    """LLM-Inference-Bench CSVs read and concatenated (``offline_batch_bench`` rows);
    TraceError (file, line, reason) when the reader rejects one."""
    return pd.concat([read_llm_inference_bench(p).to_pandas() for p in paths], ignore_index=True)


def calibrate_accelerator(settings: AcceleratorSettings) -> AcceleratorResult:
    """Calibrate ``settings.target`` from K of its benchmark rows and predict the others.

    Raises
    ------
    TraceError
        Unreadable input, a ``models_dir`` that is no folder, a target with no rows or
        no datasheet, or no row of the target left to predict (named against the first
        CSV).
    """
    s = settings
    check_distinct(s.bench)
    if s.models_dir is not None and not Path(s.models_dir).is_dir():
        raise TraceError(s.models_dir, "--models folder not found")
    table = read_bench(s.bench)
    catalog = load_catalog(extra=list(s.hardware))
    try:
        report, rows = leave_one_accelerator_out(table, s.target, s.points, s.seed, sampling=s.sampling,
                                                 catalog=catalog, configs_dir=s.models_dir)
    except NoDatasheet as exc:
        raise TraceError(s.bench[0], f"{exc}; give its datasheet figures with --hardware FILE "
                                     "(format: profiles/hardware.yaml)") from exc
    except ValueError as exc:
        raise TraceError(s.bench[0], str(exc)) from exc
    if not report["rows_predicted"]:
        why = "; ".join(f"{n} {reason}" for reason, n in report["skipped"].items())
        raise TraceError(s.bench[0], f"no row of {s.target!r} left to predict with --points "
                                     f"{s.points} (skipped: {why})")
    report["bench"] = [str(p) for p in s.bench]
    return AcceleratorResult(report, rows)
