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
exits with status 2 and a "file:line: reason" message.

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

from mist.profiles.hardware import get_hardware
from mist.traces.errors import TraceError
from mist.traces.formats import (
    PROFILE_READERS,
    READERS,
    ProfileResult,
    ReadResult,
    detect_format,
    is_profile_format,
    read_profile,
    read_trace,
)
from mist.traces.io import atomic_write_json, write_table
from mist.traces.readers.profile_base import concat_profiles

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


def canonical_hardware(name: str) -> str:
    """Catalog key of the device called ``name`` (name or alias); else ``name`` unchanged."""
    try:
        return get_hardware(name).name
    except KeyError:
        return name


def output_stem(path) -> str:
    """Base name of the outputs for ``path``: its directory name or file name without suffix."""
    path = Path(path)
    return path.resolve().name if path.is_dir() else path.stem


def read_one(path: Path, fmt: str | None = None) -> ReadResult | ProfileResult:
    """Read one request trace or operator profile (nothing written)."""
    fmt = fmt or detect_format(path)
    if is_profile_format(fmt):
        return read_profile(path, fmt, canonical_hardware)
    return read_trace(path, fmt)


def read_all(
    paths, fmt: str | None = None, unique_stems: bool = True
) -> list[tuple[Path, str, ReadResult | ProfileResult]]:
    """Read every input (nothing written); raise on the first bad one or a stem clash.

    Returns
    -------
    list of (path, stem, ReadResult or ProfileResult)
    """
    done: list[tuple[Path, str, ReadResult | ProfileResult]] = []
    stems: dict[str, Path] = {}
    for raw in paths:
        path = Path(raw)
        stem = output_stem(path)
        if unique_stems and stem in stems:
            raise TraceError(
                path,
                f"output name {stem!r} is already used by {stems[stem]}; ingest them separately"
                " (operator profiles: or gather them with --out FILE.parquet)",
            )
        stems[stem] = path
        done.append((path, stem, read_one(path, fmt)))
    return done


def write_outputs(out: Path, stem: str, result: ReadResult | ProfileResult) -> list[Path]:
    """Write one input's tables and metadata under ``out``; return the files written."""
    meta = dict(result.meta)
    if isinstance(result, ProfileResult):
        files = [out / f"{stem}.operator_profile.parquet"]
        write_table(result.table, files[0])
        meta.update(
            rows_written=result.table.num_rows, rows_per_operator=result.rows_per_operator()
        )
    else:
        files = [out / f"{stem}.requests.parquet"]
        write_table(result.requests, files[0])
        if result.tokens is not None:
            files.append(out / f"{stem}.tokens.parquet")
            write_table(result.tokens, files[-1])
        meta.update(rows_written=result.requests.num_rows)
    meta.update(rows_read=result.rows_read, skipped=dict(result.skipped))
    files.append(out / f"{stem}.meta.json")
    atomic_write_json(files[-1], meta)
    return files


def _skipped(result) -> str:
    if not result.skipped:
        return "; nothing skipped"
    why = "; ".join(f"{n} {reason}" for reason, n in result.skipped.items())
    return f"; skipped {sum(result.skipped.values())}: {why}"


def describe(path: Path, result: ReadResult | ProfileResult) -> str:
    """What was read, how many rows, what was skipped and why (profiles: rows per operator)."""
    fmt = result.meta.get("source_format", "?")
    if isinstance(result, ProfileResult):
        names = ", ".join(
            f"{a} -> {b}" if a != b else a for a, b in result.meta["hardware_names"].items()
        )
        text = (f"{path}: {fmt}, {result.rows_read} rows read, {result.table.num_rows} operator rows"
                f" (hardware {names}){_skipped(result)}")  # fmt: skip
        return text + "".join(f"\n  {op}: {n} rows" for op, n in result.rows_per_operator().items())
    text = f"{path}: {fmt}, {result.rows_read} rows read, {result.requests.num_rows} requests"
    if result.tokens is not None:
        text += f", {result.tokens.num_rows} token times"
    return text + _skipped(result)


def _profiles_only(results) -> None:
    for path, _, result in results:
        if not isinstance(result, ProfileResult):
            raise TraceError(path, f"{result.meta.get('source_format')} is a request trace; "
                             "--out FILE.parquet takes operator profiles only (give a directory)")  # fmt: skip


def run(args: argparse.Namespace) -> int:
    """Read all ``args.paths``, then write their tables to ``args.out``."""
    to_file = args.out.suffix.lower() == ".parquet"
    results = read_all(args.paths, args.fmt, unique_stems=not to_file)
    if to_file:
        _profiles_only(results)
    for path, stem, result in results:
        print(describe(path, result))
        if not to_file:
            for f in write_outputs(args.out, stem, result):
                print(f"  wrote {f}")
    if to_file:
        table = concat_profiles([result.table for _, _, result in results])
        write_table(table, args.out)
        print(f"wrote {args.out} ({table.num_rows} operator rows)")
    return 0
