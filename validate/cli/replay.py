"""Replay any ingestible request stream through a calibrated simulated engine.

No measured timings are needed: TRACE is any format `mist ingest` reads (a vLLM
run, a `vllm bench` result, the ShareGPT workload JSONL, Azure/Vidur CSV, Mooncake
JSONL), the engine settings come from a run's ``meta.json`` (and the
``cluster.json`` beside it, if any). Writes the simulated ``requests`` and
``steps`` tables, a JSON summary (latency percentiles, replay speed) and ``report.md``
with the simulated latency CDFs and the queue and KV-cache use over time.

Example::

    mist replay --trace ../shared/data/arrivals/vidur/splitwise_conv.csv \\
        --profiles ../shared/data/profiles/llmservingsim/RTXPRO6000/meta-llama/Llama-3.1-8B/bf16 \\
        --model ../shared/data/models/llmservingsim/meta-llama/Llama-3.1-8B.json \\
        --engine ../shared/data/vllm-runs/RTXPRO6000/Llama-3.1-8B/meta.json --out out/azure-conv
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from mist.traces.errors import TraceError
from mist.traces.io import atomic_write_json, write_table

HELP = "replay a request stream (no measurements needed) and write simulated tables"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--trace", required=True, type=Path, help="request stream in any ingestible format")
    p.add_argument("--format", help="trace format (default: detect)")
    p.add_argument("--profiles", required=True, type=Path, help="layer-profile bundle root")
    p.add_argument("--model", required=True, type=Path, help="Hugging Face config.json")
    p.add_argument("--engine", required=True, type=Path, help="a run's meta.json (engine settings)")
    p.add_argument("--hardware", help="hardware catalog name (default: the bundle's)")
    p.add_argument("--out", required=True, type=Path, help="output folder")


def _percentiles(x: np.ndarray) -> dict:
    x = x[np.isfinite(x)]
    if not len(x):
        return {}
    return {"mean": float(x.mean()), "p50": float(np.percentile(x, 50)),
            "p90": float(np.percentile(x, 90)), "p99": float(np.percentile(x, 99))}


def run(args: argparse.Namespace) -> int:
    from mist.replay.run import input_warnings, load_deployment, prepare, simulate
    from mist.traces.derive import latencies
    from mist.traces.formats import read_trace
    from mist.traces.readers.vllm_run import read_run_meta
    from mist.validate.report import write_replay_report

    trace = read_trace(args.trace, args.format)
    if args.engine.is_file() and args.engine.name != "meta.json":
        raise TraceError(args.engine, "--engine takes a run's meta.json (or the run folder holding it)")
    meta = read_run_meta(args.engine.parent) if args.engine.name == "meta.json" else read_run_meta(args.engine)
    bundle, model, hardware = load_deployment(args.profiles, args.model, args.hardware)
    cfg, cost, _ = prepare(meta, bundle, model, hardware)
    for text in input_warnings(trace.requests, model):
        print(f"mist replay: warning: {text}", file=sys.stderr)
    sim, steps, wall = simulate(trace.requests, cfg, cost, arrival="client")
    lat = latencies(sim.to_pandas())
    span = float(np.nanmax(sim.column("finished_s").to_numpy(zero_copy_only=False)))
    summary = {
        "requests": sim.num_rows, "steps": steps.num_rows, "simulated_s": round(span, 3),
        "rows_read": trace.rows_read, "skipped": dict(trace.skipped),
        "replay_wall_s": round(wall, 4), "requests_per_wall_s": round(sim.num_rows / wall, 1),
        "latency_s": {m: {k: round(v, 6) for k, v in _percentiles(lat[m].to_numpy(float)).items()}
                      for m in ("ttft", "tpot", "e2e")},
    }
    write_table(sim, args.out / "simulated.requests.parquet")
    write_table(steps, args.out / "simulated.steps.parquet")
    atomic_write_json(args.out / "summary.json", summary)
    table = ["| metric | mean s | P50 s | P90 s | P99 s |", "| --- | ---: | ---: | ---: | ---: |"]
    table += [f"| {m} | " + " | ".join(f"{p[k]:.4f}" for k in ("mean", "p50", "p90", "p99")) + " |"
              for m, p in summary["latency_s"].items() if p]
    report = write_replay_report(
        args.out, lat, steps.to_pandas(), cfg.num_gpu_blocks * cfg.data_parallel,
        title=f"mist replay: {args.trace.name}",
        summary_md=(f"{sim.num_rows} requests, {steps.num_rows} steps, {span:.1f} s simulated; engine "
                    f"{cfg}\n\n" + "\n".join(table)))
    skipped = "".join(f"; skipped {n}: {reason}" for reason, n in trace.skipped.items())
    print(f"{args.trace}: {sim.num_rows} requests{skipped}, {steps.num_rows} steps, {span:.1f} s simulated "
          f"in {wall:.2f} s wall ({sim.num_rows / wall:.0f} requests/s)")
    for m, p in summary["latency_s"].items():
        print(f"  {m:5s} " + "  ".join(f"{k} {v:.4f}" for k, v in p.items()))
    print(f"report: {report}")
    return 0
