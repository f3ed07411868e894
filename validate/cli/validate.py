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
from pathlib import Path

from mist.traces.io import atomic_write_json, staged_outputs, write_staged

HELP = "replay a recorded run and report simulated-vs-measured errors"


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


def _settings(args: argparse.Namespace):
    from mist.validate.run import ValidateSettings

    return ValidateSettings(
        run_dir=args.run, profiles=args.profiles, model=args.model, workload=args.workload,
        hardware=args.hardware, arrival=args.arrival, drift=args.drift, skew=args.skew,
        async_scheduling=False if args.no_async_scheduling else None,
        prefix_caching=False if args.no_prefix_caching else None,
        timeseries=args.out is not None)  # the report's queue plot is its only use


def _print_excluded(result) -> None:
    """Name the requests left out of the comparison, and why (nothing on a clean run)."""
    excluded = result.aligned.excluded
    if not excluded:
        return
    print(f"mist validate: warning: {len(excluded)} request(s) excluded from the comparison "
          "(replayed at their client send times, not compared):", file=sys.stderr)
    for e in excluded:
        where = f" (requests.jsonl:{e['line']})" if "line" in e else ""
        print(f"  request {e['request_id']}{where}: {e['reason']}", file=sys.stderr)


def run(args: argparse.Namespace) -> int:
    from mist.validate.metrics import format_table
    from mist.validate.run import DRIFT_WARN, default_workload, validate_run, write_outputs

    if args.workload is None and (workload := default_workload(args.run)):
        print(f"prompt token ids from {workload}")
    result = validate_run(_settings(args))
    ratio, uncorrected = result.drift_ratio, result.metrics_uncorrected
    n_out = len(result.aligned.excluded)
    print(f"{args.run}: {result.aligned.matched} of {result.aligned.measured} requests matched"
          f"{f', {n_out} excluded' if n_out else ''}; replay {result.replay_wall_s:.3f} s wall, "
          f"{result.steps.num_rows} steps")
    _print_excluded(result)
    if ratio is not None:
        print(f"speed probe: recording/profiling time ratio {ratio:.3f} "
              f"({'applied' if uncorrected is not None else 'not applied'})")
        if abs(ratio - 1.0) > DRIFT_WARN:
            print(f"warning: the machine's speed drifted by {100 * (ratio - 1):+.1f} % between "
                  "profiling and recording; compare errors with and without correction", file=sys.stderr)
    if uncorrected is not None:
        print("without drift correction:")
        print(format_table(uncorrected))
        print("with drift correction:")
    print(format_table(result.metrics))
    with staged_outputs() as outputs:  # both staged, then put in place together; --out is replaced
        if args.out:  # whole, a --json inside it included (staged first, it takes that --json in)
            report = write_staged(args.out, lambda folder: write_outputs(result, folder), outputs)
        if args.json:
            atomic_write_json(outputs.path(args.json), result.summary())
    if args.out:
        print(f"report: {report}")
    return 0
