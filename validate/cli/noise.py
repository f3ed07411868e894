"""The noise floor: how much two real recordings of the same stream differ.

Reads two recordings of the same request stream (run folders, or any format
`mist ingest` reads that has timings, e.g. `vllm bench serve` result JSON; requests
are matched by id, or by position when the source has no ids),
treats the first as "measured" and the second as "simulated", and reports the
same per-request and distribution errors `mist validate` reports for the
simulator. Every simulator error figure should be read against these: a replay
cannot be expected to match one recording better than a second recording does.

Example::

    mist noise --a runs/cpu-rate2-a --b runs/cpu-rate2-b --json out/noise.json
"""

from __future__ import annotations

import argparse
from pathlib import Path

from mist.traces.io import atomic_write_json

HELP = "compare two recordings of one stream: the real engine's own run-to-run spread"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--a", required=True, type=Path, help="first recording (reference)")
    p.add_argument("--b", required=True, type=Path, help="second recording of the same stream")
    p.add_argument("--json", type=Path, help="write the comparison as JSON here")
    p.add_argument("--out", type=Path, help="folder for a report with plots")


def run(args: argparse.Namespace) -> int:
    from mist.profiles.measure.probe import drift_ratio
    from mist.traces.formats import read_trace
    from mist.validate.align import align
    from mist.validate.metrics import format_table, rounded, summarize
    from mist.validate.report import write_report

    a, b = read_trace(args.a), read_trace(args.b)
    aligned = align(a.requests.to_pandas(), b.requests.to_pandas())
    metrics = summarize(aligned)
    ratio = drift_ratio([b.meta.get("speed_probe"), b.meta.get("speed_probe_end")],
                        [a.meta.get("speed_probe"), a.meta.get("speed_probe_end")])
    summary = {
        "requests": {"a": aligned.measured, "b": aligned.simulated, "matched": aligned.matched},
        "metrics": rounded(metrics),
        "speed_ratio_b_over_a": None if ratio is None else round(ratio, 4),
    }
    print(f"{args.a} vs {args.b}: {aligned.matched} requests matched")
    if ratio is not None:
        print(f"speed probe ratio b/a: {ratio:.3f}")
    print(format_table(metrics))
    if args.json:
        atomic_write_json(args.json, summary)
    if args.out:
        path = write_report(args.out, aligned, metrics, title=f"mist noise: {args.a.name} vs {args.b.name}",
                            notes=[f"'measured' = {args.a}, 'simulated' = {args.b}"])
        print(f"report: {path}")
    return 0
