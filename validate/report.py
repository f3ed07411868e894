"""A Markdown validation report with plots, written deterministically.

Figures are drawn on plain :class:`matplotlib.figure.Figure` objects (Agg canvas,
no pyplot global state) under matplotlib's default style, so a user's
``matplotlibrc`` cannot change the bytes, and saved without date/software metadata:
the same inputs give byte-identical files.
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path

import matplotlib.style
import numpy as np
import pandas as pd
import pyarrow.parquet as pq
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

from mist.traces.io import atomic_write_bytes, atomic_write_text
from mist.validate.align import METRICS, AlignResult
from mist.validate.cdf import cdf_points
from mist.validate.metrics import ape, excluded, format_table, valid_mask

LABELS = {"ttft": "TTFT (s)", "tpot": "TPOT (s)", "e2e": "E2E latency (s)"}
_MEAS, _SIM = "tab:blue", "tab:orange"
_QUEUE_COLUMNS = (("num_running", "running"), ("num_waiting", "waiting"))  # (steps, timeseries)
_MAX_IDS = 10  # unmatched request ids listed in the report before "... and N more"


def _png(fig: Figure) -> bytes:
    """Render ``fig`` to PNG bytes with no timestamp or software tag."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, metadata={"Software": None})
    return buf.getvalue()


def _panels(n: int, height: float = 3.6) -> tuple[Figure, list]:
    """A figure of ``n`` side-by-side axes."""
    fig = Figure(figsize=(4.6 * n, height), layout="constrained")
    return fig, list(np.atleast_1d(fig.subplots(1, n)))


def _pairs(frame: pd.DataFrame, metric: str) -> tuple[np.ndarray, np.ndarray]:
    """Valid (measured, simulated) values of ``metric`` in seconds."""
    meas = frame[f"{metric}_meas"].to_numpy(dtype=float)
    sim = frame[f"{metric}_sim"].to_numpy(dtype=float)
    keep = valid_mask(meas, sim)
    return meas[keep], sim[keep]


def _decades(*arrays: np.ndarray) -> float:
    """Decades spanned by positive data, 0 when empty or not all positive.

    Log axes only make sense for positive data spanning over a decade.
    """
    values = np.concatenate([np.asarray(a, dtype=float) for a in arrays])
    if values.size == 0 or values.min() <= 0:
        return 0.0
    return float(np.log10(values.max() / values.min()))


def _log_axes(ax, decades: float, *axes: str) -> None:
    """Log scale on ``axes`` ("x", "y") with plain labels (``0.2``, ``0.5``, ``1``).

    The default ``2x10^-1`` minor labels overlap on narrow panels, so they go; a
    data span of few ``decades`` gets 1-2-5 major ticks so that labels remain.
    """
    subs = (1.0, 2.0, 5.0) if decades <= 3 else (1.0,)
    for name in axes:
        getattr(ax, f"set_{name}scale")("log")
        axis = getattr(ax, f"{name}axis")
        axis.set_major_locator(LogLocator(base=10, subs=subs))
        axis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
        axis.set_minor_formatter(NullFormatter())


def _write_plots(out: Path, plots) -> None:
    """Draw each ``(file name, caption, draw)`` of ``plots`` under matplotlib's default
    style (a user's matplotlibrc cannot change the bytes) into ``out``."""
    with matplotlib.style.context("default"):
        for name, _, draw in plots:
            atomic_write_bytes(out / name, _png(draw()))


def _cdf_panels(series: list[tuple[dict, str, str]]) -> Figure:
    """Empirical CDFs of TTFT, TPOT and E2E (3 panels), one line per ``(values by
    metric, colour, label)`` of ``series``."""
    fig, axes = _panels(len(METRICS))
    for ax, metric in zip(axes, METRICS, strict=True):
        for values, color, label in series:
            x, y = cdf_points(values[metric])
            ax.step(x, y, where="post", color=color, label=label)
        if (decades := _decades(*(values[metric] for values, _, _ in series))) > 1:
            _log_axes(ax, decades, "x")
        ax.set(xlabel=LABELS[metric], ylabel="fraction of requests", ylim=(0, 1.02))
        ax.grid(alpha=0.3)
        ax.legend(loc="lower right")
    return fig


def plot_cdfs(frame: pd.DataFrame) -> Figure:
    """Measured and simulated empirical CDFs of TTFT, TPOT and E2E (3 panels)."""
    pairs = {metric: _pairs(frame, metric) for metric in METRICS}
    return _cdf_panels([({m: p[0] for m, p in pairs.items()}, _MEAS, "measured"),
                        ({m: p[1] for m, p in pairs.items()}, _SIM, "simulated")])


def write_replay_report(out_dir, latencies: pd.DataFrame, steps, kv_capacity: int, *,
                        title: str, summary_md: str) -> Path:
    """``report.md`` of a replay without measurements (``mist replay``): the simulated
    latency CDFs (``latency.png``, from per-request ``ttft``/``tpot``/``e2e`` in s), the
    running/waiting queue and KV-cache use over time (``queue.png``, from ``steps``: a
    DataFrame or the path of a ``steps`` Parquet file, read a batch at a time), and
    ``summary_md`` (a Markdown table) above them. Byte-identical for the same inputs."""
    out = Path(out_dir)
    values = {m: latencies[m].to_numpy(dtype=float) for m in METRICS}
    values = {m: v[np.isfinite(v) & (v > 0)] for m, v in values.items()}
    plots = [("latency.png", "Simulated latency CDFs", lambda: _cdf_panels([(values, _SIM, "simulated")])),
             ("queue.png", "Queue depth and KV cache over time", lambda: plot_queue(steps, None, kv_capacity))]
    _write_plots(out, plots)
    lines = [f"# {title}", "", summary_md, ""]
    for name, caption, _ in plots:
        lines += [f"## {caption}", "", f"![{caption}]({name})", ""]
    path = out / "report.md"
    atomic_write_text(path, "\n".join(lines))
    return path


def plot_scatter(frame: pd.DataFrame) -> Figure:
    """Per-request simulated against measured values with the ``y = x`` line (3 panels)."""
    fig, axes = _panels(len(METRICS), height=4.2)
    for ax, metric in zip(axes, METRICS, strict=True):
        meas, sim = _pairs(frame, metric)
        ax.scatter(meas, sim, s=8, alpha=0.6, color=_SIM, linewidths=0)
        both = np.concatenate([meas, sim])
        if both.size:
            lo, hi = float(both.min()), float(both.max())
            ax.plot([lo, hi], [lo, hi], color="black", lw=1, ls="--", label="y = x")
            ax.legend(loc="upper left")
        if (decades := _decades(meas, sim)) > 1:
            _log_axes(ax, decades, "x", "y")
        ax.set(xlabel=f"measured {LABELS[metric]}", ylabel=f"simulated {LABELS[metric]}")
        ax.grid(alpha=0.3)
    return fig


#: most instants a time-series panel draws: a longer replay's step series is drawn at this
#: many evenly spaced times, each the value holding then (190,000 steps cost seconds, show no more)
MAX_PLOTTED_STEPS = 4000
STEP_BATCH_ROWS = 65536  # rows of a steps Parquet file read at a time by the queue plot


def _replica_total(steps: pd.DataFrame, column: str) -> pd.Series:
    """Sum over replicas of ``column``, each replica holding its last value between steps."""
    wide = steps.pivot_table(index="start_s", columns="replica", values=column, aggfunc="last")
    return wide.sort_index().ffill().fillna(0).sum(axis=1)


def _step_batches(steps, columns: list[str]) -> Iterator[dict]:
    """``columns`` of ``steps`` as numpy arrays in row order: a DataFrame whole, a
    Parquet file's path :data:`STEP_BATCH_ROWS` rows at a time."""
    if isinstance(steps, pd.DataFrame):
        yield {c: steps[c].to_numpy() for c in columns}
        return
    with pq.ParquetFile(steps) as f:
        for batch in f.iter_batches(batch_size=STEP_BATCH_ROWS, columns=columns):
            yield {c: batch.column(c).to_numpy(zero_copy_only=False) for c in columns}


def _plotted(steps, columns: list[str]) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """The drawn step series of ``columns`` of ``steps`` (a DataFrame or a Parquet
    file's path, read a batch at a time; memory bounded by the drawn points): instants
    ``t`` and per column the values ``_replica_total`` holds at them.

    ``t`` is every distinct ``start_s``, or when there are more than
    :data:`MAX_PLOTTED_STEPS` that many evenly spaced from the first to the last; the
    value at an instant is the sum over replicas of each one's step with the latest
    ``start_s`` at or before it (the last row of equal ones; 0 before its first step).
    """
    distinct, lo, hi = np.empty(0), np.inf, -np.inf
    for batch in _step_batches(steps, ["start_s"]):
        s = batch["start_s"].astype(float)
        if (s := s[~np.isnan(s)]).size:
            lo, hi = min(lo, s.min()), max(hi, s.max())
            if distinct is not None and (distinct := np.union1d(distinct, s)).size > MAX_PLOTTED_STEPS:
                distinct = None  # (too many: only the span is needed)
    t = distinct if distinct is not None else np.linspace(lo, hi, MAX_PLOTTED_STEPS)
    held: dict = {}  # replica -> (start_s of the step holding at each instant, {column: its value})
    for batch in _step_batches(steps, ["replica", "start_s", *columns]):
        replica, start = batch["replica"], batch["start_s"].astype(float)
        for r in np.unique(replica).tolist():
            rows = np.flatnonzero(replica == r)
            rows = rows[np.argsort(start[rows], kind="stable")]  # (equal instants keep row order)
            s = start[rows]
            i = np.searchsorted(s, t, side="right") - 1
            since, values = held.setdefault(r, (np.full(t.size, -np.inf), {c: np.zeros(t.size) for c in columns}))
            take = i >= 0
            take[take] = s[i[take]] >= since[take]  # (a later row at the same instant wins)
            since[take] = s[i[take]]
            for c in columns:
                values[c][take] = batch[c][rows[i[take]]]
    return t, {c: sum((held[r][1][c] for r in sorted(held)), np.zeros(t.size)) for c in columns}


def kv_usage_pct(steps: pd.DataFrame, capacity_blocks: int) -> pd.Series:
    """Simulated KV-cache use over time (%): blocks held by requests, summed over
    replicas, over ``capacity_blocks`` (all replicas' blocks). Freed blocks that stay
    cached for prefix hits count as free, as in vLLM's ``kv_cache_usage`` gauge."""
    return 100.0 * _replica_total(steps, "kv_blocks_used") / capacity_blocks


def measured_kv_pct(timeseries: pd.DataFrame | None) -> pd.Series | None:
    """The run's ``kv_cache_pct`` ticks, or None when it has none or reports 0 % at every
    tick (a recorder that did not fill the column: a loaded engine never holds no KV)."""
    if timeseries is None or "kv_cache_pct" not in timeseries or not len(timeseries):
        return None
    pct = timeseries["kv_cache_pct"]
    return None if not (pct > 0).any() else pct


def plot_queue(steps, timeseries: pd.DataFrame | None, kv_capacity: int | None = None) -> Figure:
    """Running and waiting requests over time, and with ``kv_capacity`` (KV blocks of
    all replicas) the KV cache in use (%): simulated steps against measured ticks.

    Simulated counts come from ``steps`` (``num_running``/``num_waiting``/
    ``kv_blocks_used`` at ``start_s``, summed over replicas; a DataFrame or a Parquet
    file's path, drawn by :func:`_plotted`); measured ones from ``timeseries``
    (``running``/``waiting``/``kv_cache_pct`` at ``t``, s since the run start). The two
    clocks are plotted as given: the caller must put both on one origin (``requests``
    tables start at the first arrival, vLLM's ``timeseries.csv`` at the benchmark start).
    """
    names, rows = (list(steps.columns), len(steps)) if isinstance(steps, pd.DataFrame) else ([], 0)
    if steps is not None and not isinstance(steps, pd.DataFrame):
        with pq.ParquetFile(steps) as f:
            names, rows = f.schema_arrow.names, f.metadata.num_rows
    with_kv = bool(kv_capacity) and steps is not None and "kv_blocks_used" in names
    fig, axes = _panels(3 if with_kv else 2)
    ts = None
    if timeseries is not None and len(timeseries):
        ts = timeseries.sort_values("t", kind="mergesort")
    if rows:
        t, totals = _plotted(steps, [c for c, _ in _QUEUE_COLUMNS] + (["kv_blocks_used"] if with_kv else []))
    for ax, (sim_col, meas_col) in zip(axes, _QUEUE_COLUMNS):
        if ts is not None:
            ax.step(ts["t"], ts[meas_col], where="post", color=_MEAS, label="measured")
        if rows:
            ax.step(t, totals[sim_col], where="post", color=_SIM, label="simulated")
        ax.set(xlabel="time (s)", ylabel=f"{meas_col} requests")
    if with_kv:
        ax = axes[2]
        measured = measured_kv_pct(ts)
        if measured is not None:
            ax.step(ts["t"], measured, where="post", color=_MEAS, label="measured")
        elif ts is not None:
            ax.text(0.5, 0.04, "measured: not recorded (kv_cache_pct 0 at every tick)", transform=ax.transAxes,
                    ha="center", va="bottom", fontsize=8, color=_MEAS)
        top = float(measured.max()) if measured is not None else 0.0
        if rows:
            pct = 100.0 * totals["kv_blocks_used"] / kv_capacity  # (as kv_usage_pct)
            ax.step(t, pct, where="post", color=_SIM, label="simulated")
            top = max(top, float(pct.max()))
        ax.set(xlabel="time (s)", ylabel=f"KV cache in use (% of {kv_capacity:,} blocks)")
        ax.set_ylim(0, min(110.0, max(1.0, 1.15 * top)))  # room for the legend; a light load stays readable
    for ax in axes:
        ax.grid(alpha=0.3)
        if ax.has_data():
            ax.legend(loc="upper right")
    return fig


def plot_ape_vs_arrival(frame: pd.DataFrame) -> Figure:
    """Per-request absolute percentage error against arrival time (3 panels)."""
    fig, axes = _panels(len(METRICS))
    arrival = frame["arrival_s"].to_numpy(dtype=float)
    for ax, metric in zip(axes, METRICS, strict=True):
        err = ape(frame[f"{metric}_meas"], frame[f"{metric}_sim"])
        keep = np.isfinite(err)
        ax.scatter(arrival[keep], err[keep], s=8, alpha=0.6, color=_SIM, linewidths=0)
        ax.set(xlabel="arrival time (s)", ylabel=f"{metric.upper()} APE (%)")
        # APE >= 0; a fixed 0-based range also avoids offset labels on near-constant APE
        top = float(err[keep].max()) if keep.any() else 0.0
        ax.set_ylim(0, 1.1 * top if top > 0 else 1.0)
        ax.ticklabel_format(axis="y", useOffset=False)
        ax.grid(alpha=0.3)
    return fig


def _ids(ids: tuple[str, ...]) -> str:
    """A short, sorted listing of request ids."""
    shown = ", ".join(f"`{i}`" for i in ids[:_MAX_IDS])
    more = len(ids) - _MAX_IDS
    return shown + (f" … and {more} more" if more > 0 else "")


def _counts_md(aligned: AlignResult) -> list[str]:
    """Markdown lines with request counts, unmatched ids and excluded rows."""
    lines = [
        f"- measured requests: {aligned.measured}",
        f"- simulated requests: {aligned.simulated}",
        f"- matched (compared): {aligned.matched}",
    ]
    if aligned.only_measured:
        lines.append(
            f"- only measured ({len(aligned.only_measured)}): {_ids(aligned.only_measured)}"
        )
    if aligned.only_simulated:
        lines.append(
            f"- only simulated ({len(aligned.only_simulated)}): {_ids(aligned.only_simulated)}"
        )
    if aligned.excluded:  # (absent on a clean run, whose report stays as it was)
        lines.append(f"- excluded from the comparison ({len(aligned.excluded)}; replayed, not compared):")
        lines += [f"  - `{e['request_id']}`" + (f" (line {e['line']})" if "line" in e else "") + f": {e['reason']}"
                  for e in aligned.excluded[:_MAX_IDS]]
        if len(aligned.excluded) > _MAX_IDS:
            lines.append(f"  - … and {len(aligned.excluded) - _MAX_IDS} more (all in the --json summary)")
    skipped = excluded(aligned)
    parts = ", ".join(f"{m} {skipped[m]}" for m in METRICS)
    lines.append(f"- matched requests left out (NaN or measured <= 0): {parts}")
    return lines


def _markdown(title, aligned, metrics, notes, images: list[tuple[str, str]], sections=()) -> str:
    """The report text: title, counts, error table, notes, images."""
    out = [f"# {title}", "", "## Requests", "", *_counts_md(aligned), ""]
    out += [
        "## Errors",
        "",
        "Percent of the measured value; signed errors are simulated minus measured.",
        "",
    ]
    out += [format_table(metrics, markdown=True)]
    for heading, body in sections:
        out += [f"## {heading}", "", body]
    if notes:
        out += ["## Notes", "", *(f"- {n}" for n in notes), ""]
    out += ["## Plots", ""]
    for name, caption in images:
        out += [f"### {caption}", "", f"![{caption}]({name})", ""]
    return "\n".join(out)


def write_report(
    out_dir,
    aligned: AlignResult,
    metrics: dict,
    *,
    steps: pd.DataFrame | None = None,
    timeseries: pd.DataFrame | None = None,
    kv_capacity: int | None = None,
    title: str,
    notes=(),
    sections=(),
) -> Path:
    """Write ``report.md`` and its PNG plots to ``out_dir``.

    Parameters
    ----------
    out_dir : str or Path
        Output folder, created if missing.
    aligned : AlignResult
        Output of :func:`mist.validate.align.align`.
    metrics : dict
        Output of :func:`mist.validate.metrics.summarize` (percentages).
    steps : pandas.DataFrame, optional
        Simulated ``steps`` table (times in s) for the queue-depth plot.
    timeseries : pandas.DataFrame, optional
        Measured engine ticks with columns ``t`` (s since run start), ``running``,
        ``waiting`` (and optionally ``kv_cache_pct``). The queue-depth plot is drawn
        when ``steps`` or this is given.
    kv_capacity : int, optional
        KV blocks of all replicas: adds the KV-cache use panel to the queue plot.
    title : str
        Report heading.
    notes : sequence of str, optional
        Free-text bullet points (settings, caveats).
    sections : sequence of (heading, markdown), optional
        Extra report sections placed after the error table.

    Returns
    -------
    Path
        Path of ``report.md``. Files written: ``report.md``, ``cdf.png``,
        ``scatter.png``, ``ape_vs_arrival.png`` and, when drawn, ``queue.png``.
    """
    out, frame = Path(out_dir), aligned.frame
    plots = [("cdf.png", "Latency CDFs, measured vs simulated", lambda: plot_cdfs(frame)),
             ("scatter.png", "Per-request simulated vs measured", lambda: plot_scatter(frame))]
    if steps is not None or timeseries is not None:
        plots.append(("queue.png", "Queue depth and KV cache over time", lambda: plot_queue(steps, timeseries, kv_capacity)))
    plots.append(("ape_vs_arrival.png", "Per-request APE vs arrival time", lambda: plot_ape_vs_arrival(frame)))
    _write_plots(out, plots)
    path = out / "report.md"
    atomic_write_text(path, _markdown(title, aligned, metrics, list(notes), [p[:2] for p in plots], sections))
    return path
