"""Error metrics of simulated against measured per-request latencies.

All errors are percentages as plain numbers (``1.9`` means 1.9 %), relative to the
measured value. Per-request errors (``mape``, ``median_ape``, ``p90_ape``, ``bias``)
compare each request with its own replay; distribution errors (``mean_error``,
``p50_error``, ``p90_error``, ``p99_error``) compare the two samples' statistics and
so forgive per-request shuffling. Percentiles use numpy's default (linear) method.
Nothing is rounded here; :func:`rounded` is for writers.
"""

from __future__ import annotations

import math

import numpy as np

from mist.validate.align import METRICS, AlignResult

SUMMARY_KEYS = (
    "mape",
    "median_ape",
    "p90_ape",
    "bias",
    "mean_error",
    "p50_error",
    "p90_error",
    "p99_error",
)
"""Keys of :func:`error_summary`, in table order."""

COLUMN_TITLES = {
    "mape": "MAPE",
    "median_ape": "median APE",
    "p90_ape": "P90 APE",
    "bias": "bias",
    "mean_error": "mean err",
    "p50_error": "P50 err",
    "p90_error": "P90 err",
    "p99_error": "P99 err",
}
"""Human column titles of the error tables."""


def valid_mask(meas: np.ndarray, sim: np.ndarray) -> np.ndarray:
    """Rows usable for relative errors: both sides finite and ``meas > 0``.

    NaN (not observed, e.g. TPOT of a one-token output) and infinities are
    excluded, as is ``meas <= 0`` which has no relative error.
    """
    meas = np.asarray(meas, dtype=float)
    sim = np.asarray(sim, dtype=float)
    with np.errstate(invalid="ignore"):
        return np.isfinite(meas) & np.isfinite(sim) & (meas > 0)


def _signed_pct(sim_stat: float, meas_stat: float) -> float:
    """``(sim - meas) / meas * 100``, NaN when the measured statistic is zero."""
    if meas_stat == 0:
        return math.nan
    return float((sim_stat - meas_stat) / meas_stat * 100.0)


def error_summary(meas: np.ndarray, sim: np.ndarray) -> dict[str, float]:
    """Summarize the relative error of ``sim`` against ``meas``.

    Parameters
    ----------
    meas, sim : array_like
        Paired measured and simulated values of one metric (same unit, e.g. s).
        Rows failing :func:`valid_mask` are ignored.

    Returns
    -------
    dict
        Exactly the keys of :data:`SUMMARY_KEYS`, each a percentage (float):
        ``mape`` mean of ``|sim-meas|/meas*100``; ``median_ape``, ``p90_ape`` its
        50th/90th percentiles; ``bias`` mean of ``(sim-meas)/meas*100``;
        ``mean_error`` ``(mean(sim)-mean(meas))/mean(meas)*100``; ``pX_error``
        ``(P_X(sim)-P_X(meas))/P_X(meas)*100``. All NaN when no row is valid.
    """
    meas = np.asarray(meas, dtype=float)
    sim = np.asarray(sim, dtype=float)
    if meas.shape != sim.shape:
        raise ValueError(f"meas and sim differ in shape: {meas.shape} vs {sim.shape}")
    keep = valid_mask(meas, sim)
    m, s = meas[keep], sim[keep]
    if m.size == 0:
        return dict.fromkeys(SUMMARY_KEYS, math.nan)
    signed = (s - m) / m * 100.0
    ape = np.abs(signed)
    out = {
        "mape": float(np.mean(ape)),
        "median_ape": float(np.percentile(ape, 50)),
        "p90_ape": float(np.percentile(ape, 90)),
        "bias": float(np.mean(signed)),
        "mean_error": _signed_pct(np.mean(s), np.mean(m)),
    }
    for q in (50, 90, 99):
        out[f"p{q}_error"] = _signed_pct(np.percentile(s, q), np.percentile(m, q))
    return out


def _frame(aligned):
    """The joined frame of an :class:`AlignResult` (or the frame itself)."""
    return aligned.frame if isinstance(aligned, AlignResult) else aligned


def summarize(aligned) -> dict[str, dict[str, float]]:
    """:func:`error_summary` of each metric of an aligned table.

    Parameters
    ----------
    aligned : AlignResult or pandas.DataFrame
        Output of :func:`mist.validate.align.align` (or its ``frame``).

    Returns
    -------
    dict
        ``{"ttft": summary, "tpot": summary, "e2e": summary}``.
    """
    df = _frame(aligned)
    return {m: error_summary(df[f"{m}_meas"], df[f"{m}_sim"]) for m in METRICS}


def excluded(aligned) -> dict[str, int]:
    """Number of matched requests left out of each metric's errors.

    A row is left out when either side is NaN/infinite or the measured value is
    ``<= 0`` (see :func:`valid_mask`), e.g. TPOT of one-token outputs.
    """
    df = _frame(aligned)
    return {m: int((~valid_mask(df[f"{m}_meas"], df[f"{m}_sim"])).sum()) for m in METRICS}


def ape(meas: np.ndarray, sim: np.ndarray) -> np.ndarray:
    """Per-request absolute percentage error ``|sim-meas|/meas*100``; NaN where invalid."""
    meas = np.asarray(meas, dtype=float)
    sim = np.asarray(sim, dtype=float)
    keep = valid_mask(meas, sim)
    out = np.full(meas.shape, np.nan)
    out[keep] = np.abs(sim[keep] - meas[keep]) / meas[keep] * 100.0
    return out


def rounded(d, ndigits: int = 4):
    """Copy of a nested dict/list with floats rounded; NaN/inf become ``None`` (valid JSON)."""
    if isinstance(d, dict):
        return {k: rounded(v, ndigits) for k, v in d.items()}
    if isinstance(d, (list, tuple)):
        return [rounded(v, ndigits) for v in d]
    if isinstance(d, (float, np.floating)):
        return round(float(d), ndigits) if math.isfinite(d) else None
    if isinstance(d, np.integer):
        return int(d)
    return d


def _cell(value, signed: bool) -> str:
    """One table cell: two decimals, a sign for signed errors, ``n/a`` for missing."""
    if value is None or not math.isfinite(value):
        return "n/a"
    return f"{value:+.2f}" if signed else f"{value:.2f}"


def _rows(metrics: dict) -> list[list[str]]:
    """Header row then one row per metric present, in :data:`METRICS` order."""
    rows = [["metric", *(f"{COLUMN_TITLES[k]} %" for k in SUMMARY_KEYS)]]
    for name in (m for m in METRICS if m in metrics):
        summary = metrics[name]
        cells = [_cell(summary.get(k), signed=not k.endswith("ape")) for k in SUMMARY_KEYS]
        rows.append([name, *cells])
    return rows


def format_table(metrics: dict, *, markdown: bool = False) -> str:
    """Render :func:`summarize` output as a fixed-width text (or Markdown) table.

    Parameters
    ----------
    metrics : dict
        ``{"ttft": summary, "tpot": summary, "e2e": summary}``; absent metrics are
        skipped. Values are percentages; NaN/None print as ``n/a``.
    markdown : bool, optional
        Emit a GitHub-flavoured Markdown table instead of plain text.

    Returns
    -------
    str
        The table, lines joined by ``\\n``, with a trailing newline.
    """
    rows = _rows(metrics)
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = []
    for i, row in enumerate(rows):
        cells = [
            c.ljust(w) if j == 0 else c.rjust(w)
            for j, (c, w) in enumerate(zip(row, widths, strict=True))
        ]
        lines.append(("| " + " | ".join(cells) + " |") if markdown else "  ".join(cells))
        if i == 0:
            if markdown:
                rules = [
                    ("-" * w) if j == 0 else ("-" * (w - 1) + ":") for j, w in enumerate(widths)
                ]
                lines.append("| " + " | ".join(rules) + " |")
            else:
                lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines) + "\n"
