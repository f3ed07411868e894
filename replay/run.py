"""One call from data to simulated tables: settings + profile + requests -> replay.

:func:`load_deployment` and :func:`prepare` turn a profile bundle, a model config and a
run's engine settings into the engine settings and step cost of a replay;
:func:`simulate` replays a ``requests`` table through them; :func:`replay_trace` is the
whole ``mist replay`` job, from file paths (:class:`ReplaySettings`) to simulated
tables and their summary (:class:`ReplayResult`).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from mist.calibrate.calibration import fit_operators
from mist.calibrate.host import host_model, residual_summary
from mist.calibrate.lookup import GridLookup
from mist.calibrate.skew import skew_from_bundle
from mist.profiles.bundle import Bundle, read_bundle, to_operator_profile
from mist.profiles.hardware import Hardware, get_hardware
from mist.profiles.model import ModelConfig, load_model_config
from mist.replay.config import ARRIVAL, ARRIVALS, EngineConfig
from mist.replay.deployment import (
    ALLREDUCE_LATENCY_S,
    build_step_cost,
    check_profile,
    engine_config,
    requests_from_table,
)
from mist.replay.engine import Replay
from mist.replay.request import Request
from mist.replay.step_cost import StepCost
from mist.replay.stream import (
    LazyIds,
    Recorder,
    StepWriter,
    arrival_order,
    arrival_times,
    check_fits,
    request_stream,
)
from mist.traces.derive import latencies
from mist.traces.errors import ReplayError, TraceError
from mist.traces.formats import read_trace
from mist.traces.readers.vllm_run import read_run_meta
from mist.traces.schema import REQUESTS, STEPS, from_columns

#: the file ``mist replay`` streams the simulated steps into, in its output folder
STEPS_FILE = "simulated.steps.parquet"


@dataclass(frozen=True)
class Link:
    """Device-to-device link used by tensor-parallel collectives.

    Attributes
    ----------
    bw_bytes_s : float
        Bandwidth, bytes/s (one direction).
    latency_s : float
        Per-collective launch latency, s.
    source : str
        Where the figures come from.
    """

    bw_bytes_s: float
    latency_s: float
    source: str


def link_from(cluster: dict | None, hardware: Hardware | None) -> Link:
    """Link figures from a run's ``cluster.json`` (``link_bw`` GB/s, ``link_latency`` ns),
    else the hardware datasheet's interconnect."""
    if cluster and cluster.get("link_bw"):
        lat = float(cluster.get("link_latency") or 0.0) * 1e-9 or ALLREDUCE_LATENCY_S
        return Link(float(cluster["link_bw"]) * 1e9, lat, "cluster.json")
    if hardware is not None:
        return Link(hardware.interconnect_bw_bytes_s, ALLREDUCE_LATENCY_S, f"datasheet:{hardware.name}")
    return Link(64e9, ALLREDUCE_LATENCY_S, "default PCIe Gen5 x16")


def device_memory(cluster: dict | None, hardware: Hardware | None, recorded: dict | None = None) -> float:
    """GPU memory (bytes): what the engine's device reported, where the run recorded it
    (``meta.json`` ``hardware.device_total_memory_bytes``, torch's total memory: the
    figure vLLM sizes its cache against), else ``cluster.json`` npu_mem.mem_size, else
    the datasheet.

    ``mem_size`` is the device's memory as vendors label it ("24 GB" for an RTX 4090,
    which reports 24,564 MiB): binary gigabytes, 2**30 bytes."""
    total = recorded.get("device_total_memory_bytes") if isinstance(recorded, dict) else None
    if isinstance(total, (int, float)) and total > 0:
        return float(total)
    try:
        return float(cluster["nodes"][0]["instances"][0]["npu_mem"]["mem_size"]) * 2**30
    except (KeyError, IndexError, TypeError):
        pass
    if hardware is None:
        raise ReplayError("device memory unknown: the run has no cluster.json with npu_mem.mem_size and the "
                          "bundle's hardware is not in the catalog (give --hardware NAME)")
    return hardware.memory_bytes


def load_deployment(profiles_dir, model_json, hardware_name: str | None = None):
    """Read a profile bundle and a model config; look up the hardware datasheet.

    Returns ``(bundle, model, hardware)``; ``hardware`` is ``None`` when neither
    ``hardware_name`` nor the bundle's ``hardware`` is in the catalog (a CPU, say).
    """
    bundle = read_bundle(profiles_dir)
    model = load_model_config(model_json)
    try:
        hardware = get_hardware(hardware_name or bundle.hardware)
    except KeyError as exc:
        if hardware_name:  # asked for by name: a typo must not pass silently
            raise ReplayError(str(exc).strip("'\"")) from None
        hardware = None
    return bundle, model, hardware


def prepare(meta: dict, bundle: Bundle, model: ModelConfig, hardware: Hardware | None,
            skew_buckets: bool = False, **overrides) -> tuple[EngineConfig, StepCost, dict]:
    """Engine settings and compiled step cost for a run; plus notes on where figures came from."""
    cluster = meta.get("cluster")
    cfg = engine_config(meta, model, lambda: device_memory(cluster, hardware, meta.get("hardware")), bundle.meta,
                        **overrides)
    if bundle.tp_degrees and cfg.tensor_parallel not in bundle.tp_degrees:
        raise TraceError(bundle.root, f"no tp{cfg.tensor_parallel}/ folder: the run uses tensor parallelism "
                                      f"{cfg.tensor_parallel}, the bundle was profiled at {bundle.tp_degrees}")
    models = fit_operators(to_operator_profile(bundle), cfg.tensor_parallel)
    check_profile(models, model, cfg.tensor_parallel, str(bundle.root / f"tp{cfg.tensor_parallel}"))
    link = link_from(cluster, hardware)
    skew = skew_from_bundle(bundle, cfg.tensor_parallel, buckets=skew_buckets)
    cost = build_step_cost(models, model, cfg, link.bw_bytes_s, link_latency_s=link.latency_s, skew=skew)
    notes = {"link": link.source, "skew_alpha": f"{skew.default} default, {len(skew.table)} buckets",
             "num_gpu_blocks": cfg.num_gpu_blocks, "host": "none"}
    engine_steps = bundle.tables.get((cfg.tensor_parallel, "engine_steps"))
    if engine_steps is not None and len(engine_steps):
        compose = cost.operators_only().step_s
        summary = residual_summary(engine_steps, compose)
        cost = replace(cost, host=GridLookup.from_model(host_model(engine_steps, compose)))
        notes["host"] = (f"residual of {summary['steps']} profiled engine steps over the operators "
                         f"(operators explain {100 * summary['median_composed_over_measured']:.0f} % "
                         f"of a step, median)")
    elif "step_overhead" in models:
        notes["host"] = "step_overhead.csv"
    return cfg, cost, notes


def _model_key(name: str) -> str:
    """``org/Name`` and ``org--Name_config`` as one comparable key."""
    stem = str(name).replace("--", "/").rsplit("/", 1)[-1].removesuffix("_config")
    return "".join(ch for ch in stem.casefold() if ch.isalnum())


def input_warnings(requests: pa.Table, model: ModelConfig, run_model: str | None = None) -> list[str]:
    """What about the inputs deserves a warning (the replay still runs): requests longer
    than the model's context, and a run recorded with another model than ``model``."""
    out = []
    need = (requests.column("input_tokens").to_numpy(zero_copy_only=False).astype(float)
            + requests.column("output_tokens").to_numpy(zero_copy_only=False).astype(float))
    longer = int((need > model.max_position_embeddings).sum()) if model.max_position_embeddings else 0
    if longer:
        out.append(f"{longer} request(s) are longer than {model.name}'s context ({model.max_position_embeddings} "
                   "tokens): vLLM refuses them unless max_model_len is raised; they are replayed anyway")
    if run_model and _model_key(run_model) != _model_key(model.name):
        out.append(f"the run was recorded with {run_model}, the model config is {model.name}")
    return out


def check_capacity(reqs: list[Request], cfg: EngineConfig) -> None:
    """Raise ReplayError unless every request can run: its prompt and output fit in one
    replica's KV cache, and (chunked prefill off) its prompt in one step's token budget
    (see :func:`mist.replay.stream.check_fits`)."""
    check_fits([r.request_id for r in reqs], [r.prompt_len for r in reqs], [r.output_len for r in reqs], cfg)


def effective_arrival(requests: pa.Table, arrival: str) -> str:
    """The rule ``arrival`` comes to for ``requests``: aligning needs every request to
    carry the engine's stamp (``queued_s``); a client's send time is no step boundary, so
    without stamps ``"engine-aligned"`` is ``"engine"`` (stamp where recorded, else the
    send time)."""
    if arrival != "engine-aligned" or not requests.num_rows:
        return arrival
    queued = requests.column("queued_s")
    stamped = queued.null_count == 0 and not pc.any(pc.is_nan(queued)).as_py()
    return arrival if stamped else "engine"


def simulate(requests: pa.Table, cfg: EngineConfig, cost: StepCost, arrival: str = ARRIVAL,
             steps_path: Path | None = None):
    """Replay ``requests``; return (simulated requests table, steps table, wall seconds).

    ``arrival``: one of :data:`ARRIVALS` (see :func:`effective_arrival`). Aligned arrivals
    apply with async scheduling and one engine group (see :class:`mist.replay.engine.Replay`);
    the rule applied is the simulated table's ``mist.arrival`` metadata. Requests are
    made as the clock reaches them and dropped when finished (:mod:`mist.replay.stream`;
    aligned arrivals, which look ahead, are made up front). With ``steps_path`` the
    steps stream into that Parquet file as the replay runs, and the steps table
    returned is None.

    Raises
    ------
    ReplayError
        When the engine has no KV cache, a request needs more KV cache than the engine
        has (vLLM refuses such a request), or a request never finished.
    """
    if arrival not in ARRIVALS:
        raise ValueError(f"arrival must be one of {ARRIVALS}, not {arrival!r}")
    kind = "client" if arrival == "client" else "engine"
    t = arrival_times(requests, kind)
    order = arrival_order(t)
    src = {k: requests.column(k) for k in ("request_id", "arrival_s", "input_tokens", "output_tokens")}  # (Arrow)
    ids = LazyIds(src["request_id"])
    check_fits(LazyIds(src["request_id"], order),
               *(src[k].to_numpy().astype(np.int64)[order] for k in ("input_tokens", "output_tokens")), cfg)
    recorder = Recorder(len(t))
    writer = StepWriter(steps_path) if steps_path is not None else None
    t0 = time.perf_counter()
    try:
        if effective_arrival(requests, arrival) == "engine-aligned":
            rep = Replay(requests_from_table(requests, kind), cfg, cost, align_arrivals=True, client=recorder)
        else:
            rep = Replay([], cfg, cost, client=recorder, arrivals=request_stream(requests, t, order), sink=writer)
        rep.run()
        wall = time.perf_counter() - t0
        if recorder.finished < len(t):
            first = next(i for i in order if np.isnan(recorder.times["finished_s"][i]))
            raise ReplayError(f"the simulation stalled: {len(t) - recorder.finished} of {len(t)} requests never "
                              f"finished (first: {ids[first]}); please report this with the inputs")
        if writer is not None:
            rep.flush_steps()
            writer.close()
    except BaseException:
        if writer is not None:
            writer.abort()
        raise
    cols = dict(src)
    cols.update(recorder.columns())
    applied = "engine-aligned" if rep.align else kind
    sim = from_columns(REQUESTS, cols, metadata={"mist.source_format": "mist-replay", "mist.arrival": applied})
    steps = None if writer is not None else from_columns(STEPS, rep.step_columns())
    return sim, steps, wall


@dataclass(frozen=True)
class ReplaySettings:
    """What ``mist replay`` replays: a request stream through the engine of a run.

    Attributes
    ----------
    trace : Path
        Request stream in any format :func:`mist.traces.formats.read_trace` reads.
    profiles : Path
        Layer-profile bundle root.
    model : Path
        Hugging Face ``config.json`` of the model.
    engine : Path
        A run's ``meta.json`` (or the run folder holding it): the engine settings.
    format : str or None
        Trace format (None: detected).
    hardware : str or None
        Hardware catalog name (None: the bundle's).
    arrival : str
        One of :data:`ARRIVALS`; a trace's own send times by default (what every
        format carries).
    """

    trace: Path
    profiles: Path
    model: Path
    engine: Path
    format: str | None = None
    hardware: str | None = None
    arrival: str = "client"


@dataclass(frozen=True)
class ReplayResult:
    """A replayed trace (see :func:`replay_trace`).

    Attributes
    ----------
    requests, steps : pyarrow.Table
        The simulated ``requests`` and ``steps`` tables (``steps`` None when the steps
        were streamed to ``steps_path``).
    config : EngineConfig
        The engine replayed.
    wall_s : float
        Wall time of the replay alone (s).
    latencies : pandas.DataFrame
        Per request: ``request_id``, ``ttft``, ``tpot``, ``e2e`` (s).
    rows_read : int
        Rows the trace reader read.
    skipped : dict
        Rows the reader skipped, by reason.
    warnings : tuple of str
        What about the inputs deserves a warning (the replay ran all the same).
    steps_path : Path or None
        The Parquet file the steps streamed into (``replay_trace(..., out=...)``).
    steps_rows : int
        Rows of ``steps_path``.
    """

    requests: pa.Table
    steps: pa.Table | None
    config: EngineConfig
    wall_s: float
    latencies: pd.DataFrame
    rows_read: int
    skipped: dict = field(default_factory=dict)
    warnings: tuple = ()
    steps_path: Path | None = None
    steps_rows: int = 0

    @property
    def num_steps(self) -> int:
        """Engine steps replayed."""
        return self.steps.num_rows if self.steps is not None else self.steps_rows

    def steps_frame(self, columns: list | None = None) -> pd.DataFrame:
        """The steps (only ``columns``, if given) as a DataFrame."""
        if self.steps is not None:
            return (self.steps.select(columns) if columns else self.steps).to_pandas()
        return pq.read_table(self.steps_path, columns=columns).to_pandas()

    @property
    def simulated_s(self) -> float:
        """Simulated time (s) until the last request finished."""
        return float(np.nanmax(self.requests.column("finished_s").to_numpy(zero_copy_only=False)))

    @property
    def kv_blocks(self) -> int:
        """KV-cache blocks of all replicas together."""
        return self.config.num_gpu_blocks * self.config.data_parallel

    def summary(self) -> dict:
        """Counts, simulated span (s), replay speed and latency percentiles (s), rounded
        as ``mist replay`` writes them to ``summary.json``."""
        n = self.requests.num_rows
        return {
            "requests": n, "steps": self.num_steps, "simulated_s": round(self.simulated_s, 3),
            "rows_read": self.rows_read, "skipped": dict(self.skipped),
            "replay_wall_s": round(self.wall_s, 4), "requests_per_wall_s": round(n / self.wall_s, 1),
            "latency_s": {m: {k: round(v, 6) for k, v in _percentiles(self.latencies[m].to_numpy(float)).items()}
                          for m in ("ttft", "tpot", "e2e")},
        }

    def summary_markdown(self) -> str:
        """The run in a sentence and a table of latency percentiles (Markdown)."""
        table = ["| metric | mean s | P50 s | P90 s | P99 s |", "| --- | ---: | ---: | ---: | ---: |"]
        table += [f"| {m} | " + " | ".join(f"{p[k]:.4f}" for k in ("mean", "p50", "p90", "p99")) + " |"
                  for m, p in self.summary()["latency_s"].items() if p]
        return (f"{self.requests.num_rows} requests, {self.num_steps} steps, {self.simulated_s:.1f} s "
                f"simulated; engine {self.config}\n\n" + "\n".join(table))


def _percentiles(x: np.ndarray) -> dict:
    x = x[np.isfinite(x)]
    if not len(x):
        return {}
    return {"mean": float(x.mean()), "p50": float(np.percentile(x, 50)),
            "p90": float(np.percentile(x, 90)), "p99": float(np.percentile(x, 99))}


def replay_trace(settings: ReplaySettings, out: Path | None = None) -> ReplayResult:
    """Replay a request stream through the engine of a run (``mist replay``): no
    measured timings needed, the engine settings from the run's ``meta.json`` (and the
    ``cluster.json`` beside it, if any). Writes nothing, unless ``out`` (a folder) is
    given: then the steps stream into ``out/simulated.steps.parquet`` as the replay
    runs (bounded memory at any trace length; the same file as writing the table).

    Raises
    ------
    TraceError
        When an input cannot be read, or ``settings.engine`` is a file other than ``meta.json``.
    ReplayError
        As :func:`simulate` and :func:`prepare` raise it.
    """
    trace = read_trace(settings.trace, settings.format)
    engine = Path(settings.engine)
    if engine.is_file() and engine.name != "meta.json":
        raise TraceError(engine, "--engine takes a run's meta.json (or the run folder holding it)")
    meta = read_run_meta(engine.parent if engine.name == "meta.json" else engine)
    bundle, model, hardware = load_deployment(settings.profiles, settings.model, settings.hardware)
    cfg, cost, _ = prepare(meta, bundle, model, hardware)
    warnings = tuple(input_warnings(trace.requests, model))
    steps_path = Path(out) / STEPS_FILE if out is not None else None
    sim, steps, wall = simulate(trace.requests, cfg, cost, arrival=settings.arrival, steps_path=steps_path)
    return ReplayResult(requests=sim, steps=steps, config=cfg, wall_s=wall, rows_read=trace.rows_read,
                        skipped=dict(trace.skipped), warnings=warnings, latencies=latencies(sim.to_pandas()),
                        steps_path=steps_path,
                        steps_rows=pq.ParquetFile(steps_path).metadata.num_rows if steps is None else 0)
