"""The ``mist`` command line.

Each sub-command lives in its own module (``mist.validate.cli.<name>``) exposing
``HELP`` (one line), ``add_arguments(parser)`` and ``run(args) -> int``; ``run`` only
parses the arguments into a library job's settings, calls the job, prints and writes.
Adding a command touches the :data:`COMMANDS` table and one new file. A command
module imports the library inside ``run``, so ``mist --help`` stays fast.
``python -m mist`` and ``python -m mist.validate.cli`` are ``mist``.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import os
import sys
import warnings
from pathlib import Path

from mist.traces.errors import InputWarning, ReplayError, TraceError

#: sub-command -> the module that holds it
COMMANDS = {
    "ingest": "mist.validate.cli.ingest",
    "validate": "mist.validate.cli.validate",
    "noise": "mist.validate.cli.noise",
    "replay": "mist.validate.cli.replay",
    "calibrate": "mist.validate.cli.calibrate",
    "calibrate-accelerator": "mist.validate.cli.calibrate_accelerator",
    "profile": "mist.validate.cli.profile",
    "record": "mist.validate.cli.record",
    "silicon": "mist.validate.cli.silicon",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mist",
        description="Replay recorded LLM-serving traces through a calibrated simulator "
        "and measure how far it is from what the real engine measured.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, module_name in COMMANDS.items():
        module = importlib.import_module(module_name)
        p = sub.add_parser(
            name,
            help=module.HELP,
            description=(module.__doc__ or module.HELP).strip(),
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        module.add_arguments(p)
        p.set_defaults(_run=module.run)
    return parser


#: argument -> whether it names an output folder (True) or file (False); checked before a
#: command runs, so a bad output path fails at once and nothing is half-written
OUTPUTS = {"out": True, "json": False, "rows": False, "fit_step_overhead": False, "fit_moe_efficiency": False}


#: commands whose ``--out`` folder is written all or nothing and replaces an earlier one whole
REPLACED = {"validate", "replay", "silicon", "calibrate", "ingest", "noise"}


def _inside(path, folder) -> bool:
    """Whether ``path`` is ``folder`` or lies inside it (links resolved)."""
    path, folder = Path(os.path.realpath(path)), Path(os.path.realpath(folder))
    return path == folder or folder in path.parents


def _check_replaced(args: argparse.Namespace, out: Path) -> None:
    """``out`` may be replaced whole: no input, and no output the library writes itself, is in it."""
    from mist.traces.io import check_replaceable

    check_replaceable(out)
    for name, value in sorted(vars(args).items()):
        for item in value if isinstance(value, list) else [value]:
            is_path = isinstance(item, Path) or (name == "paths" and isinstance(item, str))  # ingest's PATHs
            if name not in ("out", "json") and is_path and _inside(item, out):
                what = "an output" if name in OUTPUTS else "an input"
                arg = "PATH" if name == "paths" else f"--{name.replace('_', '-')}"
                raise TraceError(out, f"holds {arg} {item}, {what}; --out is "
                                      "replaced whole by this command's files, so give a folder apart")


def _check_outputs(args: argparse.Namespace) -> None:
    from mist.traces.io import check_output

    for name, folder in OUTPUTS.items():
        path = getattr(args, name, None)
        if path is None:
            continue
        if args.command == "ingest" and name == "out" and path.suffix.lower() == ".parquet":
            folder = False  # `mist ingest --out FILE.parquet` gathers profiles in one file
        check_output(path, folder)
        if name == "out" and folder and args.command in REPLACED:
            _check_replaced(args, path)


@contextlib.contextmanager
def _input_warnings_printed(command: str):
    """Inside, an :class:`InputWarning` (input left out or doubted, the job goes on) is
    printed as ``mist <command>: warning: <message>``, every time; other warnings as Python
    shows them."""
    with warnings.catch_warnings():
        shown = warnings.showwarning

        def show(message, category, *rest, **kw):
            if not issubclass(category, InputWarning):
                return shown(message, category, *rest, **kw)
            print(f"mist {command}: warning: {message}", file=sys.stderr)

        warnings.showwarning = show
        warnings.simplefilter("always", InputWarning)
        yield


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``mist`` console script."""
    args = build_parser().parse_args(argv)
    try:
        _check_outputs(args)
        with _input_warnings_printed(args.command):
            return int(args._run(args) or 0)
    except (TraceError, ReplayError) as exc:
        print(f"mist {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # a path the system refuses (a full disk, no permission …)
        where = f"{exc.filename}: " if exc.filename is not None else ""
        print(f"mist {args.command}: error: {where}{exc.strerror or exc}", file=sys.stderr)
        return 2
