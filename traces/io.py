"""Parquet, JSON and YAML I/O with atomic writes (write to a temporary file, then rename)."""

from __future__ import annotations

import contextlib
import ctypes
import json
import math
import os
import shutil
import tempfile
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import yaml

from mist.traces.errors import TraceError
from mist.traces.schema import SCHEMAS


def check_output(path, folder: bool) -> None:
    """Raise TraceError now, before any work, if ``path`` cannot become the output file
    (``folder=False``) or folder (``folder=True``) it is meant to be: a folder where a
    file goes or the reverse, or a file where a parent folder would have to be."""
    path = Path(path)
    if path.is_symlink():
        raise TraceError(path, "is a symbolic link; mist writes no output through a link (give the real path)")
    if path.exists() and path.is_dir() != folder:
        raise TraceError(path, f"exists and is {'a file' if folder else 'a folder'}; "
                               f"an output {'folder' if folder else 'file'} is needed here")
    for parent in path.parents:
        if parent.exists():
            if not parent.is_dir():
                raise TraceError(path, f"cannot be created: {parent} is a file, not a folder")
            break


def check_replaceable(out) -> None:
    """Raise TraceError unless ``out`` may be replaced whole by a command's new output
    folder: absent, or a real folder (not a symbolic link) holding regular files only.
    A folder with a link or a sub-folder in it is no earlier output of a ``mist``
    command (their outputs are flat), and replacing it could delete what is not ours."""
    out = Path(out)
    check_output(out, folder=True)
    if not out.exists():
        return
    for entry in sorted(out.iterdir()):
        if entry.is_symlink() or not entry.is_file():
            what = "a symbolic link" if entry.is_symlink() else "not a regular file"
            raise TraceError(out, f"holds {entry.name!r}, {what}; an output folder is replaced whole, "
                                  "so it must be new or hold only the files of an earlier output")


def _exchange(a: Path, b: Path) -> bool:
    """Swap the two paths in one atomic step (Linux renameat2 RENAME_EXCHANGE); False
    where the system cannot."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    at_fdcwd, rename_exchange = -100, 2
    if renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0:
        return True
    errno = ctypes.get_errno()
    if errno in (22, 38, 95):  # EINVAL, ENOSYS, EOPNOTSUPP: not supported here
        return False
    raise OSError(errno, os.strerror(errno), str(b))


def _put_in_place(new: Path, out: Path) -> None:
    """Make folder ``new`` be ``out``; an existing ``out`` is replaced whole, then deleted."""
    if not os.path.lexists(out):
        os.rename(new, out)
        return
    if _exchange(new, out):
        shutil.rmtree(new)  # now the old output
        return
    old = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.", suffix=".old"))
    os.rename(out, old / "previous")
    try:
        os.rename(new, out)
    except BaseException:
        os.rename(old / "previous", out)
        raise
    shutil.rmtree(old)


@contextlib.contextmanager
def staged_dir(out):
    """Yield an empty staging folder beside ``out`` (same file system); when the block
    ends without an exception, the staging folder becomes ``out`` in one rename (an
    existing ``out`` is replaced whole, never mixed). On any exception, KeyboardInterrupt
    included, the staging folder is removed and ``out`` is left as it was.

    Raises
    ------
    TraceError
        ``out`` cannot be replaced (see :func:`check_replaceable`).
    """
    out = Path(os.path.abspath(out))
    if out == Path.cwd() or out in Path.cwd().parents:
        raise TraceError(out, "is the working folder or holds it; an output folder is replaced whole")
    check_replaceable(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.", suffix=".tmp"))
    try:
        yield tmp
        check_replaceable(out)  # nothing planted in it while the command ran
        os.chmod(tmp, 0o755)  # mkdtemp makes 0700; an output is an ordinary shared folder
        _put_in_place(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def write_staged(out, write):
    """Call ``write(folder)`` inside :func:`staged_dir` of ``out`` and return what it
    returns, with a path inside the staging folder (or a list of them) given as under ``out``."""
    with staged_dir(out) as tmp:
        got = write(tmp)

    def moved(p):
        return Path(out) / Path(p).relative_to(tmp) if isinstance(p, Path) and p.is_relative_to(tmp) else p

    return [moved(p) for p in got] if isinstance(got, (list, tuple)) else moved(got)


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
        raise TraceError(path, f"cannot read {what}: not valid YAML ({exc})",
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
