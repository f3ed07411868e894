"""Read source traces and operator profiles into canonical Parquet tables.

For each PATH (a file, or a vLLM run directory) the format is detected — or taken
from --format. A request trace writes three files to DIR, named after the input:

  <stem>.requests.parquet   one row per request (times in s, first arrival = 0)
  <stem>.tokens.parquet     per-token times, when the source has them (vllm-bench)
  <stem>.meta.json          engine/run metadata, rows read and rows skipped by reason

An operator profile (Vidur, Splitwise, PyTorch profiler) writes
<stem>.operator_profile.parquet (one row per operator and feature point, latency
in s) and <stem>.meta.json to DIR; or, when --out is a FILE.parquet, all PATHs
(operator profiles only) go into that one operator_profile table. Hardware names
become the catalog's (profiles/hardware.yaml) where a name or alias matches.

All inputs are read before anything is written: one bad input writes nothing and
exits with status 2 and a "file:line: reason" message. DIR is written whole or not
at all: the tables go into a staging folder beside it that then replaces DIR, so an
earlier DIR ends holding this run's files only (nothing of it mixed in).

formats: vllm-run, vllm-bench, workload-jsonl, azure-csv, vidur-csv, mooncake-jsonl
operator profiles: vidur-mlp-csv, vidur-comm-csv, splitwise-csv, kineto-json

example:
  mist ingest ../shared/data/vllm-runs/RTXPRO6000/Llama-3.1-8B \\
      ../shared/data/arrivals/vidur/splitwise_conv.csv --out out/traces
  mist ingest ../shared/data/profiles/splitwise/perf_model.csv --out out/splitwise.parquet
"""

from __future__ import annotations

import argparse
from pathlib import Path

from mist.profiles.ingest import IngestSettings, describe, ingest
from mist.traces.formats import PROFILE_READERS, READERS
from mist.traces.io import staged_dir

HELP = "read vLLM runs, bench results, workloads, arrival traces and operator profiles into Parquet"
FORMATS = [*READERS, *PROFILE_READERS]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Declare ``PATH... --out DIR [--format NAME]``."""
    parser.add_argument("paths", nargs="+", metavar="PATH", help="trace file or vLLM run directory")
    parser.add_argument(
        "--out", required=True, type=Path, metavar="DIR",
        help="output directory, or FILE.parquet to gather operator profiles in one table",
    )  # fmt: skip
    parser.add_argument(
        "--format",
        dest="fmt",
        choices=FORMATS,
        default=None,
        metavar="NAME",
        help=f"source format for every PATH (default: detect); one of {', '.join(FORMATS)}",
    )


def run(args: argparse.Namespace) -> int:
    """Read all ``args.paths``, then write their tables to ``args.out``; print what was done."""
    paths = tuple(Path(p) for p in args.paths)
    if args.out.suffix.lower() == ".parquet":  # one table, written atomically
        done, folder = ingest(IngestSettings(paths, args.out, args.fmt)), None
    else:  # every table or none: a staging folder that replaces --out whole
        with staged_dir(args.out) as folder:
            done = ingest(IngestSettings(paths, folder, args.fmt))
    for item in done.inputs:
        print(describe(item.path, item.result))
        for f in item.files:
            print(f"  wrote {f if folder is None else args.out / f.relative_to(folder)}")
    if done.table is not None:
        print(f"wrote {args.out} ({done.table.num_rows} operator rows)")
    return 0
