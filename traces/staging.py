"""All-or-nothing outputs: every target of a command is staged beside itself, then put
in place together.

A command computes everything first, then writes each output (a folder or a file) into
a staging entry beside its target (same file system), then renames every staged entry
into place back to back (:class:`Outputs`). A kill before the renames leaves every
earlier output as it was; a kill between two renames (microseconds: no file is written
then) leaves each target either whole and old or whole and new, never mixed. An
existing folder is swapped with its replacement in one atomic step (Linux
``renameat2(RENAME_EXCHANGE)``) and the old one deleted after every rename.

No write follows a symbolic link: a link at a target is refused (before the work and
again just before the renames), ``os.replace``/``rename`` replace names and never follow
them, and a folder is only replaced when it holds regular files alone. Staging entries
are hidden (``.<name>.<pid>@<host>.<random>.tmp``); one left by a killed run is deleted
by the next command that stages beside the same target, once its process is gone.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import os
import re
import shutil
import socket
import tempfile
from pathlib import Path

from mist.traces.errors import TraceError

_HOST = re.sub(r"[^A-Za-z0-9-]", "-", socket.gethostname())[:32] or "host"
#: the part of a staging entry's name after ``.<target name>.``: pid, host, random part
_STAGED = re.compile(r"(\d+)@([A-Za-z0-9-]+)\.[A-Za-z0-9_]+\.(tmp|old)")


def check_output(path, folder: bool) -> None:
    """Raise TraceError now, before any work, if ``path`` cannot become the output file
    (``folder=False``) or folder (``folder=True``) it is meant to be: a symbolic link, a
    folder where a file goes or the reverse, or a file where a parent folder would have to be."""
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


def staging_prefix(target: Path) -> str:
    """The name prefix of this process's staging entries beside ``target``."""
    return f".{target.name}.{os.getpid()}@{_HOST}."


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # PermissionError: another user's live process
        return True
    return True


def sweep_stale(target: Path) -> None:
    """Delete the staging entries beside ``target`` that a killed run of this host left
    (their process is gone); a live run's are kept."""
    head = f".{Path(target).name}."
    try:
        entries = [e for e in Path(target).parent.iterdir() if e.name.startswith(head)]
    except OSError:
        return
    for entry in entries:
        m = _STAGED.fullmatch(entry.name[len(head):])
        if m is None or m.group(2) != _HOST or _alive(int(m.group(1))):
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            with contextlib.suppress(OSError):
                entry.unlink()


@functools.cache
def _renameat2():
    """libc's renameat2, or None where there is none (loaded once, before any rename)."""
    try:
        return ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):
        return None


def _exchange(a: Path, b: Path) -> bool:
    """Swap the two paths in one atomic step (Linux renameat2 RENAME_EXCHANGE); False
    where the system cannot."""
    renameat2 = _renameat2()
    if renameat2 is None:
        return False
    at_fdcwd, rename_exchange = -100, 2
    if renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0:
        return True
    errno = ctypes.get_errno()
    if errno in (22, 38, 95):  # EINVAL, ENOSYS, EOPNOTSUPP: not supported here
        return False
    raise OSError(errno, os.strerror(errno), str(b))


def _put_in_place(new: Path, out: Path) -> Path | None:
    """Make folder ``new`` be ``out``; return the old ``out`` (renamed aside) for the
    caller to delete once every output is in place, or None."""
    if not os.path.lexists(out):
        os.rename(new, out)
        return None
    if _exchange(new, out):
        return new  # now the old output
    old = Path(tempfile.mkdtemp(dir=out.parent, prefix=staging_prefix(out), suffix=".old"))
    os.rename(out, old / "previous")
    try:
        os.rename(new, out)
    except BaseException:
        os.rename(old / "previous", out)
        raise
    return old


def replace_folder(new: Path, out: Path) -> None:
    """Make the complete folder ``new`` (staged beside ``out`` with
    :func:`staging_prefix`) be ``out`` in one atomic exchange where the system has one,
    then delete the old ``out``. For outputs with sub-folders (a profile bundle), which
    :meth:`Outputs.folder` refuses to replace; ``out`` must not be a symbolic link."""
    check_output(out, folder=True)
    old = _put_in_place(Path(new), Path(out))
    if old is not None:
        _remove(old)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(OSError):
            path.unlink()


class Outputs:
    """The outputs of one command, staged then put in place together (see the module).

    :meth:`folder` gives a staging folder for a target folder, :meth:`path` a
    staging file for a target file (:meth:`file` writes bytes there); :meth:`commit` puts every one in place, :meth:`discard` removes them.
    A file whose target lies inside a folder staged before it is written into that
    staging folder (``--json`` inside ``--out``)."""

    def __init__(self):
        self._folders: list[tuple[Path, Path]] = []  # (staging, target)
        self._files: list[tuple[Path, Path]] = []

    def folder(self, out) -> Path:
        """An empty staging folder that becomes ``out`` (replacing it whole) on commit.

        Raises
        ------
        TraceError
            ``out`` cannot be replaced (:func:`check_replaceable`), or holds the working folder.
        """
        out = Path(os.path.abspath(out))
        if out == Path.cwd() or out in Path.cwd().parents:
            raise TraceError(out, "is the working folder or holds it; an output folder is replaced whole")
        check_replaceable(out)
        out.parent.mkdir(parents=True, exist_ok=True)
        sweep_stale(out)
        tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=staging_prefix(out), suffix=".tmp"))
        self._folders.append((tmp, out))
        return tmp

    def path(self, target) -> Path:
        """A staging file, to be written by the caller, that becomes file ``target`` on commit."""
        target = Path(os.path.abspath(target))
        for tmp, out in self._folders:
            if out in target.parents:
                inside = tmp / target.relative_to(out)
                inside.parent.mkdir(parents=True, exist_ok=True)
                return inside
        check_output(target, folder=False)
        target.parent.mkdir(parents=True, exist_ok=True)
        sweep_stale(target)
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=staging_prefix(target), suffix=".tmp")
        os.close(fd)
        self._files.append((Path(tmp), target))
        os.chmod(tmp, 0o644)  # mkstemp creates 0600; outputs are ordinary shared files
        return Path(tmp)

    def file(self, target, data: bytes) -> None:
        """Stage ``data`` to become file ``target`` on commit."""
        self.path(target).write_bytes(data)

    def commit(self) -> None:
        """Check every target again (nothing planted while the command ran), then rename
        every staged entry into place back to back, then delete the replaced folders."""
        for _, out in self._folders:
            check_replaceable(out)
        for _, path in self._files:
            check_output(path, folder=False)
        for tmp, _ in self._folders:
            os.chmod(tmp, 0o755)  # mkdtemp makes 0700; an output is an ordinary shared folder
        trash, _ = [], _renameat2()
        try:
            while self._files:
                tmp, path = self._files[0]
                os.replace(tmp, path)  # replaces the name; never follows a link
                self._files.pop(0)
            while self._folders:
                old = _put_in_place(*self._folders[0])
                self._folders.pop(0)
                trash += [old] if old is not None else []
        finally:
            for old in trash:
                _remove(old)

    def discard(self) -> None:
        """Remove every staged entry not yet in place."""
        for tmp, _ in self._folders + self._files:
            _remove(tmp)
        self._folders, self._files = [], []


@contextlib.contextmanager
def staged_outputs():
    """Yield an :class:`Outputs`; commit it when the block ends without an exception,
    discard it on any exception (KeyboardInterrupt included), leaving every target as it was."""
    outputs = Outputs()
    try:
        yield outputs
        outputs.commit()
    except BaseException:
        outputs.discard()
        raise


@contextlib.contextmanager
def staged_dir(out):
    """Yield an empty staging folder beside ``out``; when the block ends without an
    exception, the staging folder becomes ``out`` in one rename (an existing ``out`` is
    replaced whole, never mixed). On any exception, KeyboardInterrupt included, the
    staging folder is removed and ``out`` is left as it was.

    Raises
    ------
    TraceError
        ``out`` cannot be replaced (see :func:`check_replaceable`).
    """
    with staged_outputs() as outputs:
        yield outputs.folder(out)


def write_staged(out, write, outputs: Outputs | None = None):
    """Call ``write(folder)`` in a staging folder of ``out`` and return what it returns,
    with a path inside the staging folder (or a list of them) given as under ``out``.
    Without ``outputs`` the folder is put in place at once (:func:`staged_dir`); with
    it, when ``outputs`` is committed."""
    if outputs is None:
        with staged_dir(out) as tmp:
            got = write(tmp)
    else:
        tmp = outputs.folder(out)
        got = write(tmp)

    def moved(p):
        return Path(out) / Path(p).relative_to(tmp) if isinstance(p, Path) and p.is_relative_to(tmp) else p

    return [moved(p) for p in got] if isinstance(got, (list, tuple)) else moved(got)
