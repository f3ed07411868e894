"""Calibrate per-operator latency models from a layer-profile bundle: the job behind ``mist calibrate``.

:func:`calibrate_profiles` reads a bundle (``meta.yaml``, ``tp<N>/*.csv``), fits one
latency model per operator at each tensor-parallel degree
(:func:`mist.calibrate.calibration.calibrate_bundle`), cross-validates each with k-fold
CV, and measures per degree how well the KV-skew corrections reproduce ``skew.csv``
(:func:`mist.calibrate.skew.skew_errors`). :func:`write_calibration` writes the artifact:

``grids.parquet``  the fitted grids (load with :func:`mist.calibrate.calibration.load_artifact`)
``report.json``    per-operator CV errors, measured ranges and point counts, bundle
                   summary, and per tp the ``skew`` errors (in-sample)
``report.md``      the same as Markdown tables, one per tp (:meth:`CalibrationResult.markdown`)
``cv.png``         bar chart of per-operator CV MAPE per tp

Every file is rendered before the first is written; the same inputs give
byte-identical files.

In a notebook::

    from mist.calibrate.bundle_job import CalibrateSettings, calibrate_profiles
    result = calibrate_profiles(CalibrateSettings(profiles="path/to/bundle"))
    print(result.markdown())
"""

from __future__ import annotations

import io
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mist.calibrate.calibration import calibrate_bundle, grids_bytes
from mist.calibrate.skew import skew_errors
from mist.profiles.bundle import read_bundle
from mist.traces.io import atomic_write_bytes, atomic_write_json, atomic_write_text


@dataclass(frozen=True)
class CalibrateSettings:
    """What :func:`calibrate_profiles` fits and how it cross-validates.

    Attributes
    ----------
    profiles : Path
        Layer-profile bundle root (holds ``meta.yaml``, ``tp<N>/``).
    tps : tuple of int, optional
        Tensor-parallel degrees to fit; None: every degree in the bundle.
    folds : int
        Cross-validation folds (at least 2).
    seed : int
        Seed of the fold shuffle.
    """

    profiles: Path
    tps: tuple | None = None
    folds: int = 5
    seed: int = 0


@dataclass(frozen=True)
class CalibrationResult:
    """Fitted models and their report.

    Attributes
    ----------
    models : dict
        ``{tp: {operator: fitted LatencyModel}}``.
    report : dict
        JSON-ready (``report.json``): bundle summary, CV settings and, per tp
        (``"1"``, ``"2"`` …), per-operator features, points, CV errors (%), measured
        ranges, ``missing_required``/``ignored_operators`` and ``skew`` (None without
        ``skew.csv``).
    """

    models: dict
    report: dict

    def markdown(self) -> str:
        """``report.md``: one Markdown table per tp (what ``mist calibrate`` prints)."""
        return markdown_tables(self.report)

    def missing_required(self) -> dict[str, list[str]]:
        """``{tp: operators a dense decoder needs that the bundle lacks}``, degrees lacking some."""
        return {tp: e["missing_required"] for tp, e in self.report["tp"].items() if e["missing_required"]}


def calibrate_profiles(settings: CalibrateSettings,
                       progress: Callable[[list], Iterable] | None = None) -> CalibrationResult:
    """Fit, cross-validate and skew-check every operator of a layer-profile bundle.

    Parameters
    ----------
    settings : CalibrateSettings
    progress : callable, optional
        Wraps the list of ``(tp, operator)`` fitting tasks, e.g. a ``tqdm`` bar.

    Raises
    ------
    TraceError
        Unreadable bundle, a requested degree not in it, or one with no known operator.
    """
    bundle = read_bundle(settings.profiles)
    models, report = calibrate_bundle(bundle, settings.tps, settings.folds, settings.seed, progress=progress)
    for tp, entry in report["tp"].items():
        entry["skew"] = skew_errors(bundle, int(tp))
    return CalibrationResult(models, report)


def write_calibration(result: CalibrationResult, out) -> None:
    """Write the artifact (``grids.parquet``, ``report.json``, ``report.md``, ``cv.png``)
    to folder ``out``; all-or-nothing: every file is rendered in memory first."""
    grids, markdown, png = grids_bytes(result.models), result.markdown(), cv_plot(result.report)
    out = Path(out)
    atomic_write_bytes(out / "grids.parquet", grids)
    atomic_write_json(out / "report.json", result.report)
    atomic_write_text(out / "report.md", markdown)
    atomic_write_bytes(out / "cv.png", png)


def _pct(x: float | None) -> str:
    return "–" if x is None else f"{x:.2f}"


def _num(x: float) -> str:
    return f"{x:g}"


def markdown_tables(report: dict) -> str:
    """One Markdown table per tp: operator, features, points, CV errors (%), ranges."""
    b = report["bundle"]
    lines = [f"# mist calibrate: {b['model']} on {b['hardware']}", "",
             f"Bundle `{b['root']}` (engine {b['engine']} {b['engine_version']}, "
             f"CUDA {b['cuda_version']}, {b['variant']}). "
             f"{report['cv']['folds']}-fold cross-validation, seed {report['cv']['seed']}; "
             "errors are absolute percentage errors of held-out points.", ""]
    for tp, entry in report["tp"].items():
        lines += [f"## tp={tp}", "",
                  "| operator | features | points | CV MAPE % | median APE % | P90 APE % | measured range |",
                  "|---|---|---:|---:|---:|---:|---|"]
        for op, e in entry["operators"].items():
            ranges = ", ".join(f"{f} {_num(lo)}–{_num(hi)}" for f, (lo, hi) in e["ranges"].items())
            cv = e["cv"]
            lines.append(f"| {op} | {', '.join(e['features'])} | {e['points']} | {_pct(cv['mape'])} | "
                         f"{_pct(cv['median_ape'])} | {_pct(cv['p90_ape'])} | {ranges} |")
        lines.append("")
        if entry["missing_required"]:
            lines += [f"Missing operators a dense decoder needs: {', '.join(entry['missing_required'])}.", ""]
        if entry["ignored_operators"]:
            lines += [f"Not modelled (unknown operators): {', '.join(entry['ignored_operators'])}.", ""]
        if entry.get("skew"):
            lines += skew_table(tp, entry["skew"])
    if any(e["cv"]["mape"] is None for t in report["tp"].values() for e in t["operators"].values()):
        lines += ["– : fewer than 2 × folds points, no cross-validated figure.", ""]
    return "\n".join(lines)


def _mape_p90(e: dict | None) -> str:
    return "–" if e is None else f"{e['mape']:.2f} / {e['p90_ape']:.2f}"


def skew_table(tp: str, skew: dict) -> list[str]:
    """Markdown lines: how each KV-skew correction reproduces the bundle's skewed batches."""
    lines = [f"### tp={tp}: KV-skew correction against `skew.csv`", "",
             f"{skew['batches']:,} measured decode batches with uneven KV lengths (and {skew['inverted']} "
             "timed faster with every KV length at the maximum than at the mean, left out). Each "
             "batch's time is predicted from its own measured uniform-mean and uniform-max times, "
             "`t_mean + alpha (t_max - t_mean)`, as the replay does; the "
             "profiler fitted the alphas on these same batches, so the errors are in-sample. (Buckets "
             "are keyed by the exact profiled prefill chunk: in a replay with `--skew buckets` a mixed "
             "step whose chunk is not a profiled size takes the one alpha.)", "",
             f"| regime | batches | measured over mean KV (median %) | mean KV alone: MAPE / P90 % | "
             f"one alpha ({skew['alpha_default']:g}): MAPE / P90 % | per-bucket alphas: MAPE / P90 % |",
             "|---|---:|---:|---:|---:|---:|"]
    for name, e in skew["regimes"].items():
        lines.append(f"| {name} | {e['batches']:,} | {e['measured_extra_pct']:+.2f} | {_mape_p90(e['mean_kv'])} | "
                     f"{_mape_p90(e['default'])} | {_mape_p90(e['buckets'])} |")
    return lines + [""]


def cv_plot(report: dict) -> bytes:
    """PNG bytes of a grouped bar chart: CV MAPE (%) per operator, one bar per tp."""
    import matplotlib.style
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    tps = list(report["tp"])
    ops = sorted({op for entry in report["tp"].values() for op in entry["operators"]})
    width = 0.8 / max(len(tps), 1)
    with matplotlib.style.context("default"):
        fig = Figure(figsize=(max(6.0, 0.6 * len(ops) + 2), 4.0), layout="constrained")
        FigureCanvasAgg(fig)
        ax = fig.subplots()
        x = np.arange(len(ops))
        for i, tp in enumerate(tps):
            cv = [report["tp"][tp]["operators"].get(op, {}).get("cv", {}).get("mape") for op in ops]
            ax.bar(x + (i - (len(tps) - 1) / 2) * width, [np.nan if v is None else v for v in cv],
                   width, label=f"tp={tp}")
        ax.set_xticks(x, ops, rotation=45, ha="right")
        ax.set_ylabel("cross-validated MAPE (%)")
        ax.set_title(f"{report['bundle']['model']} on {report['bundle']['hardware']}: "
                     f"{report['cv']['folds']}-fold CV error per operator")
        ax.grid(axis="y", alpha=0.3)
        ax.legend()
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=100, metadata={"Software": None})
    return buf.getvalue()
