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

from mist.traces.io import atomic_write_json, write_staged, write_table

HELP = "replay a request stream (no measurements needed) and write simulated tables"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--trace", required=True, type=Path, help="request stream in any ingestible format")
    p.add_argument("--format", help="trace format (default: detect)")
    p.add_argument("--profiles", required=True, type=Path, help="layer-profile bundle root")
    p.add_argument("--model", required=True, type=Path, help="Hugging Face config.json")
    p.add_argument("--engine", required=True, type=Path, help="a run's meta.json (engine settings)")
    p.add_argument("--hardware", help="hardware catalog name (default: the bundle's)")
    p.add_argument("--out", required=True, type=Path, help="output folder")


def write_replay(settings, folder: Path, title: str, warn=lambda text: None):
    """The files of ``mist replay`` written into ``folder``: the steps streamed by
    :func:`mist.replay.run.replay_trace` as it replays ``settings``
    (a :class:`~mist.replay.run.ReplaySettings`), the simulated requests table,
    ``summary.json`` and the report, titled ``title``, whose queue plot reads the steps
    file a batch at a time (memory bounded by the drawn points, at any trace length).
    ``warn`` is called with each warning about the inputs once the replay has run.
    Returns ``(ReplayResult, report.md's path)``."""
    from mist.replay.run import replay_trace

    result = replay_trace(settings, out=folder)  # the steps stream into the folder
    # (matplotlib is loaded after the replay: its memory is not added to the replay's peak)
    from mist.validate.report import write_replay_report

    for text in result.warnings:
        warn(text)
    write_table(result.requests, folder / "simulated.requests.parquet")
    atomic_write_json(folder / "summary.json", result.summary())
    steps = result.steps_path if result.steps is None else result.steps_frame()
    report = write_replay_report(folder, result.latencies, steps, result.kv_blocks,
                                 title=title, summary_md=result.summary_markdown())
    return result, report


def run(args: argparse.Namespace) -> int:
    from mist.replay.run import ReplaySettings

    settings = ReplaySettings(trace=args.trace, profiles=args.profiles, model=args.model, engine=args.engine,
                              format=args.format, hardware=args.hardware)
    done = []

    def write(folder: Path) -> Path:
        done.append(write_replay(settings, folder, f"mist replay: {args.trace.name}",
                                 warn=lambda text: print(f"mist replay: warning: {text}", file=sys.stderr)))
        return done[0][1]

    report = write_staged(args.out, write)  # all files or none; an earlier --out is replaced whole
    result = done[0][0]
    summary, n, wall = result.summary(), result.requests.num_rows, result.wall_s
    skipped = "".join(f"; skipped {k}: {reason}" for reason, k in result.skipped.items())
    print(f"{args.trace}: {n} requests{skipped}, {result.num_steps} steps, {result.simulated_s:.1f} s "
          f"simulated in {wall:.2f} s wall ({n / wall:.0f} requests/s)")
    for m, p in summary["latency_s"].items():
        print(f"  {m:5s} " + "  ".join(f"{k} {v:.4f}" for k, v in p.items()))
    print(f"report: {report}")
    return 0
