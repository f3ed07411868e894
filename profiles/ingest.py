"""Reading source traces and operator profiles into canonical Parquet tables (``mist ingest``).

For each input (a file, or a vLLM run directory) the format is detected or given. A
request trace becomes ``<stem>.requests.parquet`` (and ``<stem>.tokens.parquet`` when
the source has per-token times) plus ``<stem>.meta.json`` in the output folder; an
operator profile becomes ``<stem>.operator_profile.parquet`` plus ``<stem>.meta.json``,
or, when the output is a ``FILE.parquet``, every input (operator profiles only) goes
into that one ``operator_profile`` table. Hardware names become the catalog's
(:mod:`mist.profiles.hardware`) where a name or alias matches.

All inputs are read before anything is written: one bad input writes nothing.

Example
-------
>>> from mist.profiles.ingest import IngestSettings, ingest
>>> done = ingest(IngestSettings(paths=("perf_model.csv",), out="out/splitwise.parquet"))
>>> done.table.num_rows                                        # doctest: +SKIP
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa

from mist.profiles.hardware import get_hardware
from mist.traces.errors import TraceError
from mist.traces.formats import (
    ProfileResult,
    ReadResult,
    detect_format,
    is_profile_format,
    read_profile,
    read_trace,
)
from mist.traces.io import atomic_write_json, write_table
from mist.traces.readers.profile_base import concat_profiles


@dataclass(frozen=True)
class IngestSettings:
    """What to read and where to write it.

    Attributes
    ----------
    paths : tuple of Path
        Trace files, vLLM run directories or operator-profile sources.
    out : Path
        Output folder, or ``FILE.parquet`` to gather operator profiles in one table.
    fmt : str, optional
        Source format of every path (a ``mist.traces.formats`` reader name); detected
        per path when None.
    """

    paths: tuple[Path, ...]
    out: Path
    fmt: str | None = None

    @property
    def to_file(self) -> bool:
        """Whether ``out`` is one Parquet file gathering every operator profile."""
        return Path(self.out).suffix.lower() == ".parquet"


@dataclass(frozen=True)
class Ingested:
    """One input: where it was, the name of its outputs, what was read, what was written."""

    path: Path
    stem: str
    result: ReadResult | ProfileResult
    files: tuple[Path, ...] = ()


@dataclass(frozen=True)
class IngestResult:
    """What :func:`ingest` read and wrote.

    Attributes
    ----------
    inputs : tuple of Ingested
        One per input path, in the order given.
    table : pa.Table or None
        The gathered ``operator_profile`` table when the output was ``FILE.parquet``.
    """

    inputs: tuple[Ingested, ...]
    table: pa.Table | None = None


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


def read_all(paths, fmt: str | None = None, unique_stems: bool = True) -> list[Ingested]:
    """Read every input (nothing written); raise on the first bad one or a stem clash.

    Raises
    ------
    TraceError
        Bad input (file, line, reason), or two inputs whose outputs would share a name.
    """
    done: list[Ingested] = []
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
        done.append(Ingested(path, stem, read_one(path, fmt)))
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


def _profiles_only(inputs: list[Ingested]) -> None:
    for item in inputs:
        if not isinstance(item.result, ProfileResult):
            raise TraceError(item.path, f"{item.result.meta.get('source_format')} is a request trace; "
                             "--out FILE.parquet takes operator profiles only (give a directory)")  # fmt: skip


def ingest(settings: IngestSettings) -> IngestResult:
    """Read every input of ``settings``, then write their canonical tables.

    Raises
    ------
    TraceError
        Bad input (nothing is written then), a stem clash, or a request trace when the
        output is one ``FILE.parquet``.
    """
    out = Path(settings.out)
    inputs = read_all(settings.paths, settings.fmt, unique_stems=not settings.to_file)
    if settings.to_file:
        _profiles_only(inputs)
        table = concat_profiles([item.result.table for item in inputs])
        write_table(table, out)
        return IngestResult(tuple(inputs), table)
    written = [Ingested(i.path, i.stem, i.result, tuple(write_outputs(out, i.stem, i.result)))
               for i in inputs]  # fmt: skip
    return IngestResult(tuple(written))


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
