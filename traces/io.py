"""Parquet, JSON and YAML I/O with atomic writes (write to a temporary file, then rename)."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import yaml

from traces.errors import TraceError
from traces.schema import SCHEMAS


def atomic_write_bytes(path, data: bytes) -> None:
    """Write ``data`` to ``path`` so that readers see the old file or the whole new one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
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


def atomic_write_json(path, obj) -> None:
    """Atomically write ``obj`` as indented, key-sorted JSON (byte-stable)."""
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


def write_table(table: pa.Table, path) -> None:
    """Write ``table`` to Parquet at ``path`` atomically."""
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink, compression="zstd")
    atomic_write_bytes(path, sink.getvalue().to_pybytes())


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
        raise TraceError(path, f"cannot read {what}: not valid YAML ({exc})",
                         mark.line + 1 if mark else None) from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise TraceError(path, f"cannot read {what}: {exc}") from exc
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
