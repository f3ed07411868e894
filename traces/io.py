"""Parquet, JSON and YAML I/O with atomic writes (write to a temporary file, then rename);
the all-or-nothing outputs of a command are in :mod:`mist.traces.staging`."""

from __future__ import annotations

import json
import math
import os
import tempfile
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import yaml

from mist.traces.errors import TraceError
from mist.traces.schema import SCHEMAS
from mist.traces.staging import (  # noqa: F401  (re-exported: the all-or-nothing outputs)
    Outputs,
    check_output,
    check_replaceable,
    staged_dir,
    staged_outputs,
    staging_prefix,
    sweep_stale,
    write_staged,
)


def atomic_write_bytes(path, data: bytes) -> None:
    """Write ``data`` to ``path`` so that readers see the old file or the whole new one
    (a temporary file beside it, renamed over it). A symbolic link at ``path`` is refused:
    no write goes through a link.

    Raises
    ------
    TraceError
        ``path`` is a symbolic link or a folder.
    """
    path = Path(path)
    check_output(path, folder=False)
    path.parent.mkdir(parents=True, exist_ok=True)
    sweep_stale(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=staging_prefix(path), suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.chmod(tmp, 0o644)  # mkstemp creates 0600; outputs are ordinary shared files
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path, text: str) -> None:
    """Atomically write UTF-8 ``text`` to ``path``."""
    atomic_write_bytes(path, text.encode("utf-8"))


def _finite(obj):
    """``obj`` with every NaN or infinite float replaced by None (JSON null)."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    return obj


def atomic_write_json(path, obj) -> None:
    """Atomically write ``obj`` as indented, key-sorted JSON (byte-stable). NaN and
    infinities are written as null: strict JSON has no such numbers."""
    atomic_write_text(path, json.dumps(_finite(obj), indent=2, sort_keys=True, allow_nan=False) + "\n")


def parquet_bytes(table: pa.Table) -> bytes:
    """``table`` as the bytes of a zstd-compressed Parquet file (deterministic)."""
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink, compression="zstd")
    return sink.getvalue().to_pybytes()


def write_table(table: pa.Table, path) -> None:
    """Write ``table`` to Parquet at ``path`` atomically."""
    atomic_write_bytes(path, parquet_bytes(table))


def read_json_object(path) -> dict:
    """Parse a JSON file that must hold one object.

    Raises
    ------
    TraceError
        Unreadable file, malformed JSON (with its line), or a non-object top level.
    """
    path = Path(path)
    try:
        obj = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise TraceError(path, f"malformed JSON ({exc.msg})", exc.lineno) from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise TraceError(path, f"cannot read file ({exc})") from exc
    except RecursionError as exc:
        raise TraceError(path, "malformed JSON (nested too deeply)") from exc
    if not isinstance(obj, dict):
        raise TraceError(path, f"expected a JSON object, found {type(obj).__name__}")
    return obj


def write_yaml(path, header: str, doc: dict) -> None:
    """Atomically write ``doc`` as YAML in its own key order, after the comment lines
    of ``header`` (each prefixed ``# ``)."""
    head = "".join(f"# {line}\n" for line in header.splitlines())
    atomic_write_text(path, head + yaml.safe_dump(doc, sort_keys=False))


def read_yaml_object(path, what: str) -> dict:
    """Parse a YAML file that must hold one mapping; ``what`` names it in errors.

    Raises
    ------
    TraceError
        Unreadable file, malformed YAML (with its line), or a non-mapping top level.
    """
    path = Path(path)
    try:
        doc = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        raise TraceError(path, f"cannot read {what}: not valid YAML ({' '.join(str(exc).split())})",
                         mark.line + 1 if mark else None) from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise TraceError(path, f"cannot read {what}: {exc}") from exc
    except RecursionError as exc:
        raise TraceError(path, f"cannot read {what}: YAML nested too deeply") from exc
    if not isinstance(doc, dict):
        raise TraceError(path, f"cannot read {what}: expected a mapping, found {type(doc).__name__}")
    return doc


def read_table(path, expect: str | None = None, columns=None) -> pa.Table:
    """Read a Parquet table; with ``expect``, check it is that kind of table.

    ``expect`` is matched against the ``mist.table`` metadata; the required columns
    are ``columns`` or, for canonical tables, those of its schema.

    Raises
    ------
    TraceError
        When the file is missing, unreadable, or holds another table kind.
    """
    path = Path(path)
    if not path.exists():
        raise TraceError(path, "file not found")
    try:
        table = pq.read_table(path)
    except Exception as exc:  # pyarrow raises several types for corrupt files
        raise TraceError(path, f"not a readable Parquet file ({exc})") from exc
    if expect is not None:
        meta = table.schema.metadata or {}
        kind = meta.get(b"mist.table", b"").decode()
        if kind != expect:
            raise TraceError(path, f"expected a {expect!r} table, found {kind or 'an unlabelled table'!r}")
        required = columns if columns is not None else SCHEMAS[expect].names if expect in SCHEMAS else ()
        missing = set(required) - set(table.schema.names)
        if missing:
            raise TraceError(path, f"missing columns {sorted(missing)}")
    return table
