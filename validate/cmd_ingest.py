"""Read source traces into canonical Parquet tables.

For each PATH (a file, or a vLLM run directory) the format is detected — or taken
from --format — and three files are written to DIR, named after the input:

  <stem>.requests.parquet   one row per request (times in s, first arrival = 0)
  <stem>.tokens.parquet     per-token times, when the source has them (vllm-bench)
  <stem>.meta.json          engine/run metadata, rows read and rows skipped by reason

All inputs are read before anything is written: one bad input writes nothing and
exits with status 2 and a "file:line: reason" message.

formats: vllm-run, vllm-bench, workload-jsonl, azure-csv, vidur-csv, mooncake-jsonl

example:
  mist ingest ../shared/data/vllm-runs/RTXPRO6000/Llama-3.1-8B \\
      ../shared/data/arrivals/vidur/splitwise_conv.csv --out out/traces
"""

from __future__ import annotations

import argparse
from pathlib import Path

from traces.errors import TraceError
from traces.formats import READERS, ReadResult, read_trace
from traces.io import atomic_write_json, write_table

HELP = "read vLLM runs, vllm bench results, workloads and arrival traces into Parquet"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Declare ``PATH... --out DIR [--format NAME]``."""
    parser.add_argument("paths", nargs="+", metavar="PATH", help="trace file or vLLM run directory")
    parser.add_argument("--out", required=True, type=Path, metavar="DIR", help="output directory")
    parser.add_argument(
        "--format",
        dest="fmt",
        choices=list(READERS),
        default=None,
        metavar="NAME",
        help=f"source format for every PATH (default: detect); one of {', '.join(READERS)}",
    )


def output_stem(path) -> str:
    """Base name of the outputs for ``path``: its directory name or file name without suffix."""
    path = Path(path)
    return path.resolve().name if path.is_dir() else path.stem


def read_all(paths, fmt: str | None = None) -> list[tuple[Path, str, ReadResult]]:
    """Read every input (nothing written); raise on the first bad one or a stem clash.

    Returns
    -------
    list of (path, stem, ReadResult)
    """
    done: list[tuple[Path, str, ReadResult]] = []
    stems: dict[str, Path] = {}
    for raw in paths:
        path = Path(raw)
        stem = output_stem(path)
        if stem in stems:
            raise TraceError(
                path,
                f"output name {stem!r} is already used by {stems[stem]}; ingest them separately",
            )
        stems[stem] = path
        done.append((path, stem, read_trace(path, fmt)))
    return done


def write_outputs(out: Path, stem: str, result: ReadResult) -> list[Path]:
    """Write one input's tables and metadata under ``out``; return the files written."""
    files = [out / f"{stem}.requests.parquet"]
    write_table(result.requests, files[0])
    if result.tokens is not None:
        files.append(out / f"{stem}.tokens.parquet")
        write_table(result.tokens, files[-1])
    meta = dict(result.meta)
    meta.update(
        rows_read=result.rows_read,
        rows_written=result.requests.num_rows,
        skipped=dict(result.skipped),
    )
    files.append(out / f"{stem}.meta.json")
    atomic_write_json(files[-1], meta)
    return files


def describe(path: Path, result: ReadResult) -> str:
    """One line: what was read, how many rows, what was skipped and why."""
    fmt = result.meta.get("source_format", "?")
    text = f"{path}: {fmt}, {result.rows_read} rows read, {result.requests.num_rows} requests"
    if result.tokens is not None:
        text += f", {result.tokens.num_rows} token times"
    if result.skipped:
        why = "; ".join(f"{n} {reason}" for reason, n in result.skipped.items())
        text += f"; skipped {sum(result.skipped.values())}: {why}"
    else:
        text += "; nothing skipped"
    return text


def run(args: argparse.Namespace) -> int:
    """Read all ``args.paths``, then write their tables to ``args.out``."""
    results = read_all(args.paths, args.fmt)
    for path, stem, result in results:
        print(describe(path, result))
        for f in write_outputs(args.out, stem, result):
            print(f"  wrote {f}")
    return 0
