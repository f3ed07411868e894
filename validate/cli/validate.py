"""Replay a recorded vLLM run through the simulator and report its error.

Reads RUN_DIR (``requests.jsonl``, ``meta.json``, optional ``cluster.json`` and
``timeseries.csv``), fits per-operator latency models from the layer-profile
bundle, replays the run's requests with its engine settings, and compares
simulated with measured TTFT, TPOT and end-to-end latency per request.

Only the profile, the model config and the engine/hardware settings go into the
simulation; the measured timings are used for the comparison alone (and, with the
default ``--arrival engine``, the instant the real engine received each request).

Example::

    mist validate --run ../shared/data/vllm-runs/RTXPRO6000/Llama-3.1-8B \\
        --profiles ../shared/data/profiles/llmservingsim/RTXPRO6000/meta-llama/Llama-3.1-8B/bf16 \\
        --model ../shared/data/models/llmservingsim/meta-llama/Llama-3.1-8B.json \\
        --workload ../shared/data/workloads/sharegpt-llama-3.1-8b-300-sps10.jsonl \\
        --out out/llama --json out/llama.json
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import replace
from datetime import datetime
from pathlib import Path

import pandas as pd

from mist.traces.errors import TraceError
from mist.traces.io import atomic_write_json, write_table

HELP = "replay a recorded run and report simulated-vs-measured errors"
DRIFT_WARN = 0.05  # warn when the speed probes differ by more than this fraction


def applied_arrival(sim, asked: str) -> str:
    """The arrival rule the replay applied (its requests table's ``mist.arrival``)."""
    return (sim.schema.metadata or {}).get(b"mist.arrival", asked.encode()).decode()


def arrival_note(sim, arrival: str) -> str:
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


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--run", required=True, type=Path, help="run folder with requests.jsonl and meta.json")
    p.add_argument("--profiles", required=True, type=Path, help="layer-profile bundle root (holds meta.yaml, tp<N>/)")
    p.add_argument("--model", required=True, type=Path, help="Hugging Face config.json of the served model")
    p.add_argument("--workload", type=Path, help="request-stream JSONL with input_tok_ids (exact prefix caching); "
                   "default: RUN_DIR/workload.jsonl when present")
    p.add_argument("--hardware", help="hardware catalog name (default: the bundle's meta.yaml 'hardware')")
    p.add_argument("--out", type=Path, help="folder for report.md, plots and simulated tables")
    p.add_argument("--json", type=Path, help="write the error summary as JSON here")
    p.add_argument("--arrival", choices=("engine", "engine-aligned", "client"), default="engine",
                   help="feed requests when the real engine received them (engine, default), at the "
                   "replayed step boundary nearest that stamp (engine-aligned: vLLM stamps requests "
                   "between steps; see docs/replay.md; the same as engine without async scheduling, "
                   "with several independent data-parallel engines or when the run has no engine "
                   "stamps) or when the client sent them (client)")
    p.add_argument("--drift", choices=("auto", "off"), default="auto",
                   help="auto (default): when both the run and the profile carry a speed probe, "
                   "rescale the profile by their ratio and report errors with and without")
    p.add_argument("--skew", choices=("default", "buckets", "off"), default="default",
                   help="uneven decode KV lengths: the profile's default alpha (default), its "
                   "per-bucket alphas from skew_fit.csv, or off (decodes cost as at their mean KV)")
    p.add_argument("--no-async-scheduling", action="store_true", help="plan each step after the previous ends")
    p.add_argument("--no-prefix-caching", action="store_true", help="disable prefix caching in the replay")


#: the columns of a run's ``timeseries.csv`` the report plots (1 s ticks of the engine)
TIMESERIES_COLUMNS = ("t", "running", "waiting")
#: plotted when present: the KV cache in use, % (vLLM's kv_cache_usage gauge x 100)
OPTIONAL_TIMESERIES_COLUMNS = ("kv_cache_pct",)


def _timeseries(meta: dict, requests_meta: dict) -> pd.DataFrame | None:
    """The run's 1 s ticks, shifted onto the requests' time origin (first arrival)."""
    path = meta.get("timeseries_path")
    origin = requests_meta.get(b"mist.origin_epoch_s")
    if not path or not Path(path).is_file():
        return None
    try:
        ts = pd.read_csv(path)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise TraceError(path, f"not a readable CSV ({str(exc).strip().splitlines()[-1]})") from exc
    missing = [c for c in TIMESERIES_COLUMNS if c not in ts.columns]
    if missing:
        raise TraceError(path, f"missing columns {missing}")
    for col in TIMESERIES_COLUMNS + tuple(c for c in OPTIONAL_TIMESERIES_COLUMNS if c in ts.columns):
        values = pd.to_numeric(ts[col], errors="coerce")
        bad = values.isna().to_numpy().nonzero()[0]
        if len(bad):
            raise TraceError(path, f"{col} must be a number, got {ts[col].iloc[bad[0]]!r}", line=int(bad[0]) + 2)
        ts[col] = values
    if origin is not None and meta.get("started_at"):
        start = datetime.fromisoformat(str(meta["started_at"]).replace("Z", "+00:00")).timestamp()
        ts["t"] = ts["t"] + (start - float(origin))
    return ts


def kv_note(steps: pd.DataFrame, timeseries: pd.DataFrame | None, blocks: int, replicas: int) -> str:
    """One report line: peak KV-cache use, simulated and (where recorded) measured."""
    from mist.validate.report import kv_usage_pct, measured_kv_pct

    sim = float(kv_usage_pct(steps, blocks * replicas).max()) if len(steps) and blocks else float("nan")
    per = f"{blocks:,} blocks" + (f" per engine x {replicas}" if replicas > 1 else "")
    measured = measured_kv_pct(timeseries)
    meas = (f"measured peak {float(measured.max()):.1f} % (timeseries kv_cache_pct)" if measured is not None
            else "measured: not recorded (the run's timeseries has no kv_cache_pct above 0)")
    return f"KV cache ({per}): simulated peak {sim:.1f} %; {meas}."


def run(args: argparse.Namespace) -> int:
    from mist.profiles.measure.probe import drift_ratio
    from mist.replay.run import input_warnings, load_deployment, prepare, simulate
    from mist.traces.readers.vllm_run import attach_workload, read_vllm_run
    from mist.validate.align import align
    from mist.validate.attribution import attribute
    from mist.validate.attribution import to_markdown as attribution_md
    from mist.validate.metrics import format_table, rounded, summarize
    from mist.validate.report import write_report

    measured = read_vllm_run(args.run)
    requests = measured.requests
    workload = args.workload
    if workload is None and (args.run / "workload.jsonl").is_file():
        workload = args.run / "workload.jsonl"  # `mist record` keeps its generated stream here
        print(f"prompt token ids from {workload}")
    if workload:
        requests = attach_workload(requests, workload)
    # the report's queue plot is its only use; read (and check) it before anything is written
    timeseries = _timeseries(measured.meta, requests.schema.metadata or {}) if args.out else None
    bundle, model, hardware = load_deployment(args.profiles, args.model, args.hardware)
    overrides = {}
    if args.no_async_scheduling:
        overrides["async_scheduling"] = False
    if args.no_prefix_caching:
        overrides["enable_prefix_caching"] = False
    cfg, cost, notes = prepare(measured.meta, bundle, model, hardware,
                               skew_buckets=args.skew == "buckets", **overrides)
    for text in input_warnings(requests, model, measured.meta.get("model")):
        print(f"mist validate: warning: {text}", file=sys.stderr)
    if args.skew == "off":
        cost = replace(cost, skew=None, skew_alpha=0.0)
    ratio = drift_ratio([measured.meta.get("speed_probe"), measured.meta.get("speed_probe_end")],
                        [bundle.meta.get("speed_probe"), bundle.meta.get("speed_probe_end")])
    uncorrected = None
    if ratio is not None and args.drift == "auto":
        sim0, _, _ = simulate(requests, cfg, cost, args.arrival)
        uncorrected = summarize(align(requests.to_pandas(), sim0.to_pandas()))
        cost = replace(cost, scale=ratio)
    sim, steps, wall = simulate(requests, cfg, cost, args.arrival)
    aligned = align(requests.to_pandas(), sim.to_pandas())
    metrics = summarize(aligned)
    summary = {
        "requests": {"measured": aligned.measured, "simulated": aligned.simulated, "matched": aligned.matched},
        "metrics": rounded(metrics),
        "replay_wall_s": round(wall, 4),
        "arrival": applied_arrival(sim, args.arrival),
    }
    print(f"{args.run}: {aligned.matched} of {aligned.measured} requests matched; "
          f"replay {wall:.3f} s wall, {steps.num_rows} steps")
    if ratio is not None:
        summary["drift_ratio"] = round(ratio, 4)
        print(f"speed probe: recording/profiling time ratio {ratio:.3f} "
              f"({'applied' if uncorrected is not None else 'not applied'})")
        if abs(ratio - 1.0) > DRIFT_WARN:
            print(f"warning: the machine's speed drifted by {100 * (ratio - 1):+.1f} % between "
                  "profiling and recording; compare errors with and without correction", file=sys.stderr)
    if uncorrected is not None:
        summary["metrics_uncorrected"] = rounded(uncorrected)
        print("without drift correction:")
        print(format_table(uncorrected))
        print("with drift correction:")
    print(format_table(metrics))
    if args.json:
        atomic_write_json(args.json, summary)
    if args.out:
        write_table(sim, args.out / "simulated.requests.parquet")
        write_table(steps, args.out / "simulated.steps.parquet")
        lines = [f"Engine: {cfg}", f"Link: {notes['link']}; skew alpha {notes['skew_alpha']}",
                 f"Host time per step: {notes['host']}",
                 arrival_note(sim, args.arrival)]
        if ratio is not None:
            lines.append(f"Speed-probe drift ratio (recording / profiling): {ratio:.3f}; "
                         f"{'profile rescaled by it' if uncorrected is not None else 'not applied'}.")
        if uncorrected is not None:
            lines.append("Errors without drift correction:\n\n" + format_table(uncorrected, markdown=True))
        intro = ("Error of each request split at the instant it was first scheduled: "
                 "queueing (waiting for admission) versus its own service (prefill and decode steps).\n\n")
        steps_df = steps.to_pandas()
        capacity = cfg.num_gpu_blocks * cfg.data_parallel
        lines.append(kv_note(steps_df, timeseries, cfg.num_gpu_blocks, cfg.data_parallel))
        path = write_report(args.out, aligned, metrics, steps=steps_df, kv_capacity=capacity,
                            timeseries=timeseries,
                            title=f"mist validate: {args.run.name}", notes=lines,
                            sections=[("Error attribution", intro + attribution_md(attribute(aligned)))])
        print(f"report: {path}")
    return 0
