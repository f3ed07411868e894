"""Decode batches with uneven KV lengths: the profiled skew correction.

A decode batch whose KV lengths differ costs more than a uniform batch at their
mean length and less than one at their maximum. LLMServingSim's profiler measures
``alpha = (t_skew - t_mean) / (t_max - t_mean)`` over many skewed batches and fits
one ``alpha`` per bucket of (prefill chunk, batch size, skew rate, largest KV,
prefill KV) into ``skew_fit.csv``; buckets are right-closed intervals whose edges
``meta.yaml`` lists under ``skew_fit.bucket_axes``. A batch outside every
measured bucket uses the degree's ``alpha_default``. The skew rate is
``(mean - min) / (max - min)`` of the decode KV lengths.
"""

from __future__ import annotations

from bisect import bisect_left
from dataclasses import dataclass

import pandas as pd

from profiles.bundle import Bundle
from traces.errors import TraceError


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
