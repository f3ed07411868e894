"""Decode batches with uneven KV lengths: the profiled skew correction.

A decode batch whose KV lengths differ costs more than a uniform batch at their
mean length and less than one at their maximum. LLMServingSim's profiler measures
``alpha = (t_skew - t_mean) / (t_max - t_mean)`` over many skewed batches and fits
one ``alpha`` per bucket of (prefill chunk, batch size, skew rate, largest KV,
prefill KV) into ``skew_fit.csv``; buckets are right-closed intervals whose edges
``meta.yaml`` lists under ``skew_fit.bucket_axes``. A batch outside every
measured bucket uses the degree's ``alpha_default``. The skew rate is
``(mean - min) / (max - min)`` of the decode KV lengths.

:func:`skew_errors` measures how well each correction reproduces the bundle's own
skewed batches (``skew.csv``); ``mist calibrate`` reports it.
"""

from __future__ import annotations

from bisect import bisect_left
from dataclasses import dataclass

import numpy as np
import pandas as pd

from mist.calibrate.calibration import ape_summary
from mist.profiles.bundle import Bundle
from mist.traces.errors import TraceError, positive_numbers


@dataclass(frozen=True)
class SkewAlpha:
    """Bucketed skew ``alpha`` lookup (scalar arguments, hot-path friendly)."""

    default: float
    table: dict  # (pc, n_label, sr_label, kv_big_label, kp_label) -> alpha
    n_bins: tuple = ()
    n_labels: tuple = ()
    sr_bins: tuple = ()
    sr_labels: tuple = ()
    kvb_bins: tuple = ()
    kvb_labels: tuple = ()
    kp_bins: tuple = ()
    kp_labels: tuple = ()

    @staticmethod
    def _label(bins: tuple, labels: tuple, v: float):
        i = bisect_left(bins, v) - 1
        return labels[i] if 0 <= i < len(labels) else None

    def __call__(self, pc: int, n: int, kv_min: float, kv_mean: float, kv_max: float, kp: int) -> float:
        if not self.table:
            return self.default
        sr = (kv_mean - kv_min) / (kv_max - kv_min) if kv_max > kv_min else 0.0
        key = (pc, self._label(self.n_bins, self.n_labels, n), self._label(self.sr_bins, self.sr_labels, sr),
               self._label(self.kvb_bins, self.kvb_labels, kv_max), self._label(self.kp_bins, self.kp_labels, kp))
        return self.table.get(key, self.default)


def skew_from_bundle(bundle: Bundle, tp: int, buckets: bool = True) -> SkewAlpha:
    """The bundle's skew correction at degree ``tp`` (alpha 0 when not profiled).

    ``buckets=False`` keeps only ``alpha_default`` (one number for every batch).
    """
    fit = bundle.meta.get("skew_fit") or {}
    per_tp = fit.get("per_tp") or {}
    entry = per_tp.get(tp) or per_tp.get(str(tp)) or {}
    default = float(entry.get("alpha_default") or 0.0)
    axes = fit.get("bucket_axes") or {}
    if not buckets:
        return SkewAlpha(default, {})
    where = bundle.root / f"tp{tp}" / "skew_fit.csv"
    if (tp, "skew_fit") not in bundle.tables or not axes:
        raise TraceError(where, "per-bucket skew asked for (--skew buckets), but the bundle has no "
                                "skew_fit.csv at this degree or no skew_fit.bucket_axes in meta.yaml")
    df = bundle.tables[(tp, "skew_fit")]
    missing = [c for c in ("pc", "n_label", "skew_rate_label", "kv_big_label", "kp_label", "alpha") if c not in df]
    if missing:
        raise TraceError(where, f"missing columns {missing}")
    alpha = pd.to_numeric(df["alpha"], errors="coerce")
    bad = alpha.isna().to_numpy().nonzero()[0]
    if len(bad):
        raise TraceError(where, f"alpha must be a number, got {df['alpha'].iloc[bad[0]]!r}", line=int(bad[0]) + 2)
    table = {(int(r.pc), r.n_label, r.skew_rate_label, r.kv_big_label, r.kp_label): float(a)
             for r, a in zip(df.itertuples(index=False), alpha, strict=True)}
    return SkewAlpha(
        default, table,
        n_bins=tuple(axes["n_bins"]), n_labels=tuple(axes["n_labels"]),
        sr_bins=tuple(axes["skew_rate_bins"]), sr_labels=tuple(axes["skew_rate_labels"]),
        kvb_bins=tuple(axes["kv_big_bins"]), kvb_labels=tuple(axes["kv_big_labels"]),
        kp_bins=tuple(axes["kp_bins"]), kp_labels=tuple(axes["kp_labels"]),
    )


SKEW_COLUMNS = ("regime", "n", "pc", "kp", "kvs", "kv_big", "kv_mean", "t_mean_us", "t_max_us", "t_skew_us")


def skew_errors(bundle: Bundle, tp: int) -> dict | None:
    """How well each skew correction reproduces the measured skewed batches of ``skew.csv``.

    Each row of ``skew.csv`` is a batch of ``n`` decodes, ``n - nb`` of them at KV length
    ``kvs`` and the others at ``kv_big`` (with a prefill chunk ``pc`` over ``kp`` cached
    tokens in the ``mixed`` regime), timed as it is (``t_skew``), with every KV length at
    the mean (``t_mean``) and at the maximum (``t_max``). Its time is predicted from its own
    ``t_mean`` and ``t_max`` as the replay does, ``t_mean + alpha (t_max - t_mean)``, with
    alpha 0 (the mean KV length alone), the degree's ``alpha_default`` and, when the bundle
    has them, the per-bucket alphas of ``skew_fit.csv``. Batches timed faster at the
    maximum than at the mean (``t_max < t_mean``: timing noise, no alpha defined) are
    counted apart (``inverted``); the rest are the batches the profiler fitted on.

    The profiler fitted the alphas on these same batches, so the errors are in-sample:
    they say what each form of correction can represent, not how it generalises.

    Returns None when the degree has no ``skew.csv``; else ``{"batches",
    "inverted", "alpha_default", "regimes": {regime or "all": {"batches",
    "measured_extra_pct", "mean_kv", "default", "buckets"}}}`` with each variant's
    :func:`mist.calibrate.calibration.ape_summary` (percent; ``buckets`` None without a bucket
    table) and ``measured_extra_pct`` the median of ``t_skew / t_mean - 1`` (percent).

    Raises
    ------
    TraceError
        A column is missing, or a time is not a positive number (file and line).
    """
    if (tp, "skew") not in bundle.tables:
        return None
    rows, base, gap, meas, inverted = _skewed_batches(bundle, tp)
    default = skew_from_bundle(bundle, tp, buckets=False)
    alphas = {"mean_kv": np.zeros(len(rows)), "default": np.full(len(rows), default.default)}
    try:
        bucketed = skew_from_bundle(bundle, tp)
    except TraceError:  # no skew_fit.csv at this degree: no per-bucket figures
        pass
    else:
        alphas["buckets"] = np.array([bucketed(int(r.pc), int(r.n), r.kvs, r.kv_mean, r.kv_big, int(r.kp))
                                      for r in rows.itertuples(index=False)], dtype=float)
    regime = rows["regime"].astype(str).to_numpy()
    regimes = {}
    for name in [*sorted(set(regime)), "all"]:
        m = np.ones(len(rows), bool) if name == "all" else regime == name
        entry = {"batches": int(m.sum()),
                 "measured_extra_pct": round(float(np.median(meas[m] / base[m] - 1) * 100), 4)}
        for variant in ("mean_kv", "default", "buckets"):
            a = alphas.get(variant)
            entry[variant] = None if a is None else ape_summary(base[m] + a[m] * gap[m], meas[m], digits=4)
        regimes[name] = entry
    return {"batches": len(rows), "inverted": inverted,
            "alpha_default": default.default, "regimes": regimes}


def _skewed_batches(bundle: Bundle, tp: int):
    """The rows of ``skew.csv`` with ``t_max >= t_mean``, their ``t_mean``, ``t_max -
    t_mean`` and ``t_skew`` (us), and how many rows were inverted (left out)."""
    df = bundle.tables[(tp, "skew")]
    where = bundle.root / f"tp{tp}" / "skew.csv"
    missing = [c for c in SKEW_COLUMNS if c not in df.columns]
    if missing:
        raise TraceError(where, f"missing columns {missing}", line=1)
    t_mean, t_max, t_skew = (positive_numbers(df[col], where, col, first_line=2)
                             for col in ("t_mean_us", "t_max_us", "t_skew_us"))
    keep = t_max >= t_mean
    return df[keep], t_mean[keep], (t_max - t_mean)[keep], t_skew[keep], int((~keep).sum())
