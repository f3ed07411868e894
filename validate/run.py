"""Validate a simulator against a recorded vLLM run: the job behind ``mist validate``.

:func:`validate_run` reads a run folder (``requests.jsonl``, ``meta.json``, optional
``cluster.json`` and ``timeseries.csv``), fits per-operator latency models from a
layer-profile bundle, replays the run's requests with its engine settings and pairs
simulated with measured requests. Only the profile, the model config and the
engine/hardware settings go into the simulation; the measured timings serve the
comparison alone (and, with ``arrival="engine"``, the instant the real engine
received each request). :func:`write_outputs` writes the simulated tables and the
report; :meth:`ValidationResult.summary` is the ``--json`` document.

In a notebook::

    from mist.validate.run import ValidateSettings, validate_run
    result = validate_run(ValidateSettings(run_dir=..., profiles=..., model=...))
    result.metrics["e2e"]["mape"]
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, replace
from datetime import datetime
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa

from mist.profiles.measure.probe import drift_ratio
from mist.replay.config import EngineConfig
from mist.replay.run import ARRIVALS, input_warnings, load_deployment, prepare, simulate
from mist.traces.checks import MAX_TOKENS, MAX_TRACE_S, Check, raise_at, violation
from mist.traces.errors import InputWarning, TraceError
from mist.traces.io import write_table
from mist.traces.readers.vllm_run import attach_workload, read_vllm_run
from mist.validate.align import AlignResult, align
from mist.validate.attribution import attribute
from mist.validate.attribution import to_markdown as attribution_md
from mist.validate.metrics import format_table, rounded, summarize
from mist.validate.report import kv_usage_pct, measured_kv_pct, write_report

DRIFT_WARN = 0.05  # warn when the speed probes differ by more than this fraction
DRIFT_RULES = ("auto", "off")  # see ValidateSettings.drift
SKEW_RULES = ("default", "buckets", "off")  # see ValidateSettings.skew
#: the columns of a run's ``timeseries.csv`` the report plots (1 s ticks of the engine)
TIMESERIES_COLUMNS = ("t", "running", "waiting")
#: plotted when present: the KV cache in use, % (vLLM's kv_cache_usage gauge x 100)
OPTIONAL_TIMESERIES_COLUMNS = ("kv_cache_pct",)
#: declared values of the timeseries' columns the report reads (when present): seconds
#: since the run started, counts of requests, a percentage; ``t`` also strictly increases
#: (1 s ticks). Other columns (the throughputs) are not read, so not checked.
TIMESERIES_CHECKS: dict[str, Check] = {
    "t": Check(0, MAX_TRACE_S), "running": Check(0, MAX_TOKENS, whole=True),
    "waiting": Check(0, MAX_TOKENS, whole=True), "kv_cache_pct": Check(0, 100),
}
_WORKLOAD = "workload.jsonl"  # `mist record` keeps its generated stream in the run folder
_ATTRIBUTION_INTRO = ("Error of each request split at the instant it was first scheduled: "
                      "queueing (waiting for admission) versus its own service (prefill and decode steps).\n\n")


@dataclass(frozen=True)
class ValidateSettings:
    """What :func:`validate_run` replays and how.

    Attributes
    ----------
    run_dir : Path
        Recorded run folder with ``requests.jsonl`` and ``meta.json``.
    profiles : Path
        Layer-profile bundle root (holds ``meta.yaml``, ``tp<N>/``).
    model : Path
        Hugging Face ``config.json`` of the served model.
    workload : Path, optional
        Request-stream JSONL with ``input_tok_ids`` (exact prefix caching); ``None``:
        ``run_dir/workload.jsonl`` when present (``mist record`` keeps its stream there).
    hardware : str, optional
        Hardware catalog name; ``None``: the bundle's ``meta.yaml`` ``hardware``.
    arrival : str
        ``"engine"`` (the real engine's stamps), ``"engine-aligned"`` (each stamp joined
        to the nearest replayed step boundary) or ``"client"`` (the client's send times).
    drift : str
        ``"auto"``: when both the run and the profile carry a speed probe, rescale the
        profile by their ratio and keep the errors without it too; ``"off"``: never.
    skew : str
        Uneven decode KV lengths: ``"default"`` (the profile's default alpha),
        ``"buckets"`` (its per-bucket alphas from ``skew_fit.csv``) or ``"off"``.
    async_scheduling, prefix_caching : bool, optional
        Override the run's engine setting; ``None`` keeps what the run recorded.
    timeseries : bool
        Read (and check) the run's ``timeseries.csv`` for the report's queue plot.
    """

    run_dir: Path
    profiles: Path
    model: Path
    workload: Path | None = None
    hardware: str | None = None
    arrival: str = "engine"
    drift: str = "auto"
    skew: str = "default"
    async_scheduling: bool | None = None
    prefix_caching: bool | None = None
    timeseries: bool = True

    def __post_init__(self):
        # a misspelt rule must not fall back to the default silently
        for name, allowed in (("arrival", ARRIVALS), ("drift", DRIFT_RULES), ("skew", SKEW_RULES)):
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name} must be one of {allowed}, not {getattr(self, name)!r}")


@dataclass(frozen=True)
class ValidationResult:
    """Simulated against measured requests of one run.

    Attributes
    ----------
    settings : ValidateSettings
        What was asked.
    aligned : AlignResult
        Measured and simulated requests joined on ``request_id``.
    metrics : dict
        :func:`mist.validate.metrics.summarize` of ``aligned`` (percentages).
    metrics_uncorrected : dict or None
        The same without the drift correction, when one was applied.
    drift_ratio : float or None
        Speed-probe time ratio recording / profiling, when both carry a probe.
    simulated, steps : pyarrow.Table
        The replay's ``requests`` and ``steps`` tables (times in s).
    replay_wall_s : float
        Wall-clock time of the (corrected) replay, s.
    workload : Path or None
        The request stream whose prompt token ids were attached.
    warnings : tuple of str
        What about the inputs deserves a warning (each also issued as an
        :class:`InputWarning` when found; the replay still ran).
    engine : EngineConfig
        The engine settings replayed.
    deployment : dict
        Where the link, skew and host-time figures came from (``prepare``'s notes).
    timeseries : pandas.DataFrame or None
        The run's 1 s engine ticks on the requests' time origin, when read.
    """

    settings: ValidateSettings
    aligned: AlignResult
    metrics: dict
    metrics_uncorrected: dict | None
    drift_ratio: float | None
    simulated: pa.Table
    steps: pa.Table
    replay_wall_s: float
    workload: Path | None
    warnings: tuple[str, ...]
    engine: EngineConfig
    deployment: dict
    timeseries: pd.DataFrame | None

    @property
    def arrival(self) -> str:
        """The arrival rule the replay applied (its requests table's ``mist.arrival``)."""
        return applied_arrival(self.simulated, self.settings.arrival)

    def summary(self) -> dict:
        """The error summary (``mist validate --json``): counts (``excluded``: requests left
        out of the comparison, listed with their line and reason under ``excluded``), rounded
        metrics, wall time (s), arrival rule and, when measured, the drift ratio and
        uncorrected metrics."""
        a = self.aligned
        out = {"requests": {"measured": a.measured, "simulated": a.simulated, "matched": a.matched,
                            "excluded": len(a.excluded)},
               "excluded": [{k: e[k] for k in ("request_id", "line", "reason") if k in e} for e in a.excluded],
               "metrics": rounded(self.metrics), "replay_wall_s": round(self.replay_wall_s, 4),
               "arrival": self.arrival}
        if self.drift_ratio is not None:
            out["drift_ratio"] = round(self.drift_ratio, 4)
        if self.metrics_uncorrected is not None:
            out["metrics_uncorrected"] = rounded(self.metrics_uncorrected)
        return out

    def notes(self, steps: pd.DataFrame | None = None) -> list[str]:
        """The report's notes: engine, link, host time, arrivals, drift and KV-cache use
        (``steps``: :attr:`steps` as a DataFrame, when the caller has it already)."""
        cfg, notes = self.engine, self.deployment
        lines = [f"Engine: {cfg}", f"Link: {notes['link']}; skew alpha {notes['skew_alpha']}",
                 f"Host time per step: {notes['host']}", arrival_note(self.simulated, self.settings.arrival)]
        applied = self.metrics_uncorrected is not None
        if self.drift_ratio is not None:
            lines.append(f"Speed-probe drift ratio (recording / profiling): {self.drift_ratio:.3f}; "
                         f"{'profile rescaled by it' if applied else 'not applied'}.")
        if applied:
            lines.append("Errors without drift correction:\n\n" + format_table(self.metrics_uncorrected, markdown=True))
        steps = self.steps.to_pandas() if steps is None else steps
        lines.append(kv_note(steps, self.timeseries, cfg.num_gpu_blocks, cfg.data_parallel))
        return lines


def default_workload(run_dir) -> Path | None:
    """The request stream ``mist record`` kept in ``run_dir``, or None."""
    path = Path(run_dir) / _WORKLOAD
    return path if path.is_file() else None


def applied_arrival(sim: pa.Table, asked: str) -> str:
    """The arrival rule the replay applied (its requests table's ``mist.arrival``)."""
    return (sim.schema.metadata or {}).get(b"mist.arrival", asked.encode()).decode()


def arrival_note(sim: pa.Table, arrival: str) -> str:
    """What the replay did with the requests' arrival times (``sim``: its requests table,
    whose ``mist.arrival`` metadata names the rule applied), for the report."""
    applied = applied_arrival(sim, arrival)
    if applied == "client":
        return "Arrivals fed at the client's send times."
    if applied == "engine-aligned":
        return ("Arrivals: the real engine's stamps, each request joining the plan made at the "
                "replayed step boundary nearest its stamp (engine-aligned).")
    note = "Arrivals fed at the real engine's stamps where recorded, else the client's send times"
    if arrival == "engine-aligned":  # asked for, not applicable
        note += (" (not aligned: that needs an engine stamp on every request, async scheduling "
                 "and a single engine group)")
    return note + "."


def read_timeseries(meta: dict, requests_meta: dict) -> pd.DataFrame | None:
    """The run's 1 s ticks (``meta["timeseries_path"]``), shifted onto the requests' time
    origin (first arrival, ``mist.origin_epoch_s`` of ``requests_meta``); None without one.

    Raises
    ------
    TraceError
        An unreadable CSV, a missing column, a value :data:`TIMESERIES_CHECKS` rejects or
        ticks out of order (line named), or a path outside the run folder
        (``meta["source_path"]``). Without ``started_at`` in ``meta`` the ticks cannot be
        placed on the requests' clock: None, with an :class:`InputWarning` saying so.
    """
    path = meta.get("timeseries_path")
    origin = requests_meta.get(b"mist.origin_epoch_s")
    if not path or not Path(path).is_file():
        return None
    run = meta.get("source_path")
    # the reader confined it to the run folder; a meta from elsewhere must not lead outside
    if run is None or not Path(path).resolve().is_relative_to(Path(run).resolve()):
        raise TraceError(path, f"timeseries outside the run folder {run!r}: not read")
    try:
        ts = pd.read_csv(path)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise TraceError(path, f"not a readable CSV ({str(exc).strip().splitlines()[-1]})") from exc
    missing = [c for c in TIMESERIES_COLUMNS if c not in ts.columns]
    if missing:
        raise TraceError(path, f"missing columns {missing}")
    _check_timeseries(path, ts)
    if origin is not None and not meta.get("started_at"):
        warnings.warn(f"{path}: ignored (not plotted): meta.json has no started_at, the instant its ticks "
                      "count from", InputWarning, stacklevel=2)
        return None
    if origin is not None:
        start = datetime.fromisoformat(str(meta["started_at"]).replace("Z", "+00:00")).timestamp()
        ts["t"] = ts["t"] + (start - float(origin))
    return ts


def _check_timeseries(path, ts: pd.DataFrame) -> None:
    """Numbers where a number is read (:data:`TIMESERIES_CHECKS`, line named), in place;
    ticks in strictly increasing time."""
    for col, check in TIMESERIES_CHECKS.items():
        if col not in ts.columns:
            continue
        raw, values = ts[col], pd.to_numeric(ts[col], errors="coerce")
        bad = np.flatnonzero(values.isna().to_numpy())
        if bad.size:
            raise TraceError(path, f"{col} must be a number, got {raw.iloc[bad[0]]!r}", line=int(bad[0]) + 2)
        found = violation(values.to_numpy(float), np.ones(len(ts), dtype=bool), check)
        if found is not None:
            raise_at(path, col, found[0], str(raw.iloc[found[0]]), found[1], np.arange(len(ts)) + 2)
        ts[col] = values
    back = np.flatnonzero(np.diff(ts["t"].to_numpy(float)) <= 0)
    if back.size:
        i = int(back[0]) + 1
        raise_at(path, "t", i, float(ts["t"].iloc[i]),
                 f"must increase from tick to tick (the previous is {float(ts['t'].iloc[i - 1])!r})",
                 np.arange(len(ts)) + 2)


def kv_note(steps: pd.DataFrame, timeseries: pd.DataFrame | None, blocks: int, replicas: int) -> str:
    """One report line: peak KV-cache use, simulated and (where recorded) measured."""
    sim = float(kv_usage_pct(steps, blocks * replicas).max()) if len(steps) and blocks else float("nan")
    per = f"{blocks:,} blocks" + (f" per engine x {replicas}" if replicas > 1 else "")
    measured = measured_kv_pct(timeseries)
    meas = (f"measured peak {float(measured.max()):.1f} % (timeseries kv_cache_pct)" if measured is not None
            else "measured: not recorded (the run's timeseries has no kv_cache_pct above 0)")
    return f"KV cache ({per}): simulated peak {sim:.1f} %; {meas}."


def validate_run(settings: ValidateSettings) -> ValidationResult:
    """Replay a recorded run through the simulator and compare it with what was measured.

    Every input is read and checked before the replay starts; nothing is written.
    Requests the reader excluded (engine stamps that contradict the run's clock or their
    own order: ``meta["excluded"]`` of :func:`mist.traces.readers.vllm_run.read_vllm_run`)
    are replayed at their client send times and left out of the comparison; the result
    lists them (``aligned.excluded``, :meth:`ValidationResult.summary`).

    Raises
    ------
    TraceError
        A bad run folder, workload, timeseries or profile bundle (file and reason named).
    ReplayError
        A run the engine could not serve (see :func:`mist.replay.run.simulate`).
    """
    s = settings
    measured = read_vllm_run(s.run_dir)
    requests = measured.requests
    # requests whose stamps contradict the clock or their own order: replayed, not compared
    excluded = measured.meta.get("excluded", [])
    workload = default_workload(s.run_dir) if s.workload is None else s.workload
    if workload:
        requests = attach_workload(requests, workload)
    timeseries = read_timeseries(measured.meta, requests.schema.metadata or {}) if s.timeseries else None
    bundle, model, hardware = load_deployment(s.profiles, s.model, s.hardware)
    overrides = {k: v for k, v in (("async_scheduling", s.async_scheduling),
                                   ("enable_prefix_caching", s.prefix_caching)) if v is not None}
    cfg, cost, notes = prepare(measured.meta, bundle, model, hardware, skew_buckets=s.skew == "buckets", **overrides)
    found = tuple(input_warnings(requests, model, measured.meta.get("model")))
    for text in found:  # issued now, not with the result: a replay that then fails still shows them
        warnings.warn(text, InputWarning, stacklevel=2)
    if s.skew == "off":
        cost = replace(cost, skew=None, skew_alpha=0.0)
    ratio = drift_ratio([measured.meta.get("speed_probe"), measured.meta.get("speed_probe_end")],
                        [bundle.meta.get("speed_probe"), bundle.meta.get("speed_probe_end")])
    uncorrected = None
    if ratio is not None and s.drift == "auto":
        sim0, _, _ = simulate(requests, cfg, cost, s.arrival)
        uncorrected = summarize(align(requests.to_pandas(), sim0.to_pandas(), excluded))
        cost = replace(cost, scale=ratio)
    sim, steps, wall = simulate(requests, cfg, cost, s.arrival)
    aligned = align(requests.to_pandas(), sim.to_pandas(), excluded)
    return ValidationResult(settings=s, aligned=aligned, metrics=summarize(aligned),
                            metrics_uncorrected=uncorrected, drift_ratio=ratio, simulated=sim, steps=steps,
                            replay_wall_s=wall, workload=workload, warnings=found, engine=cfg,
                            deployment=notes, timeseries=timeseries)


def write_outputs(result: ValidationResult, out_dir) -> Path:
    """Write ``simulated.requests.parquet``, ``simulated.steps.parquet`` and the report
    (``report.md`` with its plots, error attribution included) into ``out_dir``.

    Returns
    -------
    Path
        Path of ``report.md``.
    """
    out = Path(out_dir)
    write_table(result.simulated, out / "simulated.requests.parquet")
    write_table(result.steps, out / "simulated.steps.parquet")
    steps = result.steps.to_pandas()
    cfg = result.engine
    return write_report(out, result.aligned, result.metrics, steps=steps,
                        kv_capacity=cfg.num_gpu_blocks * cfg.data_parallel, timeseries=result.timeseries,
                        title=f"mist validate: {Path(result.settings.run_dir).name}", notes=result.notes(steps),
                        sections=[("Error attribution", _ATTRIBUTION_INTRO + attribution_md(attribute(result.aligned)))])
