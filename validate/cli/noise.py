"""The noise floor: how much two real recordings of the same stream differ.

Reads two recordings of the same request stream (run folders, or any format
`mist ingest` reads that has timings, e.g. `vllm bench serve` result JSON; requests
are matched by id, or by position when the source has no ids),
treats the first as "measured" and the second as "simulated", and reports the
same per-request and distribution errors `mist validate` reports for the
simulator. Every simulator error figure should be read against these: a replay
cannot be expected to match one recording better than a second recording does.

Example::

    mist noise --a traces/samples/cpu-tiny-llama-repeat --b traces/samples/cpu-tiny-llama --json out/noise.json
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from mist.traces.io import atomic_write_json, staged_outputs, write_staged

HELP = "compare two recordings of one stream: the real engine's own run-to-run spread"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--a", required=True, type=Path, help="first recording (reference)")
    p.add_argument("--b", required=True, type=Path, help="second recording of the same stream")
    p.add_argument("--json", type=Path, help="write the comparison as JSON here")
    p.add_argument("--out", type=Path, help="folder for a report with plots")


def run(args: argparse.Namespace) -> int:
    from mist.validate.metrics import format_table
    from mist.validate.noise import NoiseSettings, noise_floor, write_noise_report

    result = noise_floor(NoiseSettings(a=args.a, b=args.b))
    aligned = result.aligned
    print(f"{args.a} vs {args.b}: {aligned.matched} requests matched")
    for side, ids in ((args.a, aligned.only_measured), (args.b, aligned.only_simulated)):
        if ids:  # a request of one recording that the other lacks: left out, and said so
            shown = ", ".join(map(str, ids[:10])) + (" …" if len(ids) > 10 else "")
            print(f"mist noise: warning: {len(ids)} request(s) only in {side}, excluded from the "
                  f"comparison: {shown}", file=sys.stderr)
    if result.speed_ratio is not None:
        print(f"speed probe ratio b/a: {result.speed_ratio:.3f}")
    print(format_table(result.metrics))
    with staged_outputs() as outputs:  # both staged, then put in place together; --out is replaced
        if args.out:  # whole, a --json inside it included (staged first, it takes that --json in)
            report = write_staged(args.out, lambda folder: write_noise_report(result, folder), outputs)
        if args.json:
            atomic_write_json(outputs.path(args.json), result.summary())
    if args.out:
        print(f"report: {report}")
    return 0
