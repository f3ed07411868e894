"""A fuzz campaign over mist's inputs: damage each input kind in every way a file can be
damaged, run the command that reads it, and sort what happened (issue 25).

    python bench/fuzz_campaign.py [--kind NAME ...] [--list] [--timeout S] [--show]
                                  [--jobs N] [--sample K]

Each *kind* (declared in ``fuzz_kinds_*.py`` beside this file) names a clean set of
inputs copied into a scratch folder, the one file to damage, its format (JSONL, JSON,
CSV, YAML, Parquet) and fields, and the ``mist`` command line that reads it. The
damages are generic: the file truncated, made non-UTF-8, emptied, replaced by a
directory or by a symlink loop; per field: removed, a wrong type (``"abc"``, ``null``),
NaN, infinity, negative, huge (1e300) and too big for 64 bits (2^64); and per table: a
row duplicated, rows in reverse order. Only one record (the middle one) is damaged, the
subtle case. Every command runs in a child ``python -m mist`` with a time limit and a
6 GiB address-space limit, and its outcome is one of

- ``error``: exit code 2 and ``mist <cmd>: error: <file>…`` on stderr (the wanted end);
- ``skip``: exit 0 and a skip or exclusion reported that the clean run did not report;
- ``same``: exit 0 and an output identical to the clean run's (a damage the command
  does not read, or one it may ignore, such as rows reordered);
- ``CHANGED``: exit 0, a different output and nothing reported (a silent wrong result,
  unless the damage is a legitimate new value: the campaign cannot tell, a person
  reviews each one);
- ``TRACEBACK`` (any other exit code, or a traceback), ``HANG`` (over the time
  limit) and ``MEMORY`` (killed or MemoryError under the limit).

Prints one line per damaged input that did not end in ``error`` (``--show``: every
one) and a table of counts per kind; exits 1 when any ``CHANGED``, ``TRACEBACK``,
``HANG`` or ``MEMORY`` remains.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import math
import os
import random
import re
import resource
import shutil
import subprocess
import sys
import tempfile
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHARED = (ROOT.parent / "shared" / "data").resolve()
BAD_OUTCOMES = ("CHANGED", "TRACEBACK", "HANG", "MEMORY")
VOLATILE = re.compile(r"wall|elapsed|seconds_taken|created|started|finished_at|date|host|python|version",
                      re.IGNORECASE)


@dataclass(frozen=True)
class Kind:
    """One input kind: ``setup(work)`` copies its clean inputs into ``work``; ``target`` is
    the file (relative to ``work``) the campaign damages, read as ``fmt`` (``jsonl``,
    ``json``, ``csv``, ``yaml``, ``parquet`` or ``text``); ``fields`` are the keys or
    columns damaged one at a time (``a.b`` for nested JSON/YAML keys; where a key holds a
    list, its middle element is damaged); ``argv(work, out)`` is the command after
    ``python -m mist``, writing its JSON summary to ``out/summary.json`` when it has one,
    its other outputs under ``out``."""

    name: str
    setup: Callable[[Path], None]
    target: str
    fmt: str
    fields: tuple[str, ...]
    argv: Callable[[Path, Path], list[str]]
    table: bool = True  # rows/records that can be duplicated or reversed
    timeout_s: float = 120.0
    notes: str = ""


@dataclass
class Outcome:
    kind: str
    damage: str
    outcome: str
    message: str = ""
    argv: list = field(default_factory=list)


# ---------------------------------------------------------------- damages
BAD_VALUES: dict[str, object] = {
    "string": "abc", "null": None, "nan": float("nan"), "inf": float("inf"),
    "negative": -1, "huge": 1e300, "int2^64": 2**64,
}


def _records_jsonl(path: Path) -> list:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _write_jsonl(path: Path, records: list) -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))


def _read_csv(path: Path) -> tuple[list[str], list[list[str]]]:
    rows = list(csv.reader(io.StringIO(path.read_text())))
    return rows[0], rows[1:]


def _write_csv(path: Path, header: list[str], rows: list[list[str]]) -> None:
    buf = io.StringIO()
    csv.writer(buf, lineterminator="\n").writerows([header, *rows])
    path.write_text(buf.getvalue())


def _csv_cell(value) -> str:
    if value is None:
        return ""
    if isinstance(value, float) and not math.isfinite(value):
        return "nan" if math.isnan(value) else "inf"
    return str(value)


def _set_path(doc, dotted: str, value, delete: bool = False) -> bool:
    """Set (or delete) ``dotted`` in a JSON/YAML document; a list on the way (or at the
    end) is entered at its middle element. False when the path is not there."""
    keys = dotted.split(".")
    node = doc
    for i, key in enumerate(keys):
        while isinstance(node, list):
            if not node:
                return False
            if i == len(keys) and not delete:
                break
            node = node[len(node) // 2]
        if not isinstance(node, dict) or key not in node:
            return False
        if i == len(keys) - 1:
            if isinstance(node[key], list) and node[key] and not delete:
                node[key][len(node[key]) // 2] = value
            elif delete:
                del node[key]
            else:
                node[key] = value
            return True
        node = node[key]
    return False


def _load_doc(path: Path, fmt: str):
    import yaml

    text = path.read_text()
    return yaml.safe_load(text) if fmt == "yaml" else json.loads(text)


def _dump_doc(path: Path, fmt: str, doc) -> None:
    import yaml

    path.write_text(yaml.safe_dump(doc, sort_keys=False) if fmt == "yaml" else json.dumps(doc, indent=1))


def _field_damage(path: Path, fmt: str, name: str, value, delete: bool) -> bool:
    """Damage field ``name`` of ``path`` in place; False when it has no such field."""
    if fmt == "jsonl":
        records = _records_jsonl(path)
        mid = records[len(records) // 2]
        if not _set_path(mid, name, value, delete):
            return False
        _write_jsonl(path, records)
    elif fmt in ("json", "yaml"):
        doc = _load_doc(path, fmt)
        if not _set_path(doc, name, value, delete):
            return False
        _dump_doc(path, fmt, doc)
    elif fmt == "csv":
        header, rows = _read_csv(path)
        if name not in header:
            return False
        col = header.index(name)
        if delete:
            header = header[:col] + header[col + 1:]
            rows = [r[:col] + r[col + 1:] for r in rows]
        else:
            rows[len(rows) // 2][col] = _csv_cell(value)
        _write_csv(path, header, rows)
    elif fmt == "parquet":
        import pandas as pd

        df = pd.read_parquet(path)
        if name not in df.columns:
            return False
        if delete:
            df = df.drop(columns=[name])
        else:
            df[name] = df[name].astype(object)
            df.loc[df.index[len(df) // 2], name] = value
            if isinstance(value, int) and value > 2**63:
                df[name] = df[name].astype(str)
        try:
            df.to_parquet(path, index=False)
        except (ValueError, TypeError, OverflowError):  # pyarrow's ArrowInvalid/ArrowTypeError too
            df[name] = df[name].astype(str)  # a mixed column: written as text
            df.to_parquet(path, index=False)
    else:
        return False
    return True


def _table_damage(path: Path, fmt: str, how: str) -> bool:
    """Duplicate the middle row/record (``duplicate``) or reverse the rows (``reversed``)."""
    if fmt == "jsonl":
        records = _records_jsonl(path)
        _write_jsonl(path, records[::-1] if how == "reversed" else
                     records[: len(records) // 2 + 1] + records[len(records) // 2:])
    elif fmt == "csv":
        header, rows = _read_csv(path)
        _write_csv(path, header, rows[::-1] if how == "reversed" else
                   rows[: len(rows) // 2 + 1] + rows[len(rows) // 2:])
    elif fmt == "parquet":
        import pandas as pd

        df = pd.read_parquet(path)
        mid = len(df) // 2
        df = df.iloc[::-1] if how == "reversed" else pd.concat([df.iloc[: mid + 1], df.iloc[mid:]])
        df.to_parquet(path, index=False)
    else:
        return False
    return True


def _file_damage(path: Path, how: str) -> None:
    data = path.read_bytes()
    path.unlink()
    if how == "truncated":
        path.write_bytes(data[: max(1, int(len(data) * 0.6))])
    elif how == "non-utf8":
        mid = len(data) // 2
        path.write_bytes(data[:mid] + b"\xff\xfe\xc3" + data[mid:])
    elif how == "empty":
        path.write_bytes(b"")
    elif how == "directory":
        path.mkdir()
    elif how == "symlink-loop":
        os.symlink(path.name, path)


def damages(kind: Kind) -> list[tuple[str, Callable[[Path], bool]]]:
    """``(label, damage(path) -> applied)`` for every damage of ``kind``."""
    out: list[tuple[str, Callable[[Path], bool]]] = []
    for how in ("truncated", "non-utf8", "empty", "directory", "symlink-loop"):
        out.append((how, lambda p, how=how: (_file_damage(p, how), True)[1]))
    if kind.table and kind.fmt in ("jsonl", "csv", "parquet"):
        for how in ("duplicate", "reversed"):
            out.append((how, lambda p, how=how: _table_damage(p, kind.fmt, how)))
    for name in kind.fields:
        out.append((f"{name}:missing", lambda p, n=name: _field_damage(p, kind.fmt, n, None, True)))
        for label, value in BAD_VALUES.items():
            out.append((f"{name}:{label}", lambda p, n=name, v=value: _field_damage(p, kind.fmt, n, v, False)))
    return out


# ---------------------------------------------------------------- running
def _limit() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (6 << 30, 6 << 30))
    os.setsid()


def run_mist(argv: list[str], timeout_s: float, cwd: Path) -> tuple[int | None, str, str]:
    """``(exit code or None on timeout, stdout, stderr)`` of ``python -m mist argv``."""
    env = dict(os.environ, OMP_NUM_THREADS="1", MPLBACKEND="Agg")
    proc = subprocess.Popen([sys.executable, "-m", "mist", *argv], cwd=cwd, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, preexec_fn=_limit,
                            errors="replace")
    try:
        out, err = proc.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, 9)
        out, err = proc.communicate()
        return None, out, err
    return proc.returncode, out, err


def _scrub(doc):
    if isinstance(doc, dict):
        return {k: _scrub(v) for k, v in doc.items() if not VOLATILE.search(str(k))}
    if isinstance(doc, list):
        return [_scrub(v) for v in doc]
    return doc


def _masked(text: str, work: Path, out: Path) -> str:
    """``text`` with the scratch folders named generically and durations masked, so a
    damaged run's text compares with the clean run's."""
    text = text.replace(str(out), "<out>").replace(str(work), "<work>")
    return re.sub(r"\d+(\.\d+)? ?(s\b|requests/s|MB\b|MiB\b)", "<t>", text)


def fingerprint(work: Path, out: Path, stdout: str) -> str:
    """What a run produced, wall-clock fields and scratch paths aside: its stdout, and
    every file it wrote under ``out`` (JSON without wall-clock keys, Parquet as data
    without schema metadata, text files as text; images left out)."""
    import pyarrow.parquet as pq

    parts = [_masked(stdout, work, out)]
    for path in sorted(p for p in out.rglob("*") if p.is_file()) if out.is_dir() else ():
        rel = path.relative_to(out).as_posix()
        if path.suffix == ".json":
            body = json.dumps(_scrub(json.loads(path.read_text())), sort_keys=True)
        elif path.suffix == ".parquet":
            body = repr(pq.read_table(path).replace_schema_metadata(None).to_pydict())
        elif path.suffix in (".csv", ".md", ".yaml", ".txt", ".jsonl"):
            body = path.read_text(errors="replace")
        else:
            continue
        parts.append(f"{rel}\n{_masked(body, work, out)}")
    return "\n".join(parts)


def reports_skip(text: str) -> bool:
    return bool(re.search(r"(?<!nothing )skip|exclud|dropp|ignor", text, re.IGNORECASE))


def classify(code, out_text: str, err: str, fp: str, clean_fp: str, clean_text: str) -> tuple[str, str]:
    last = (err.strip().splitlines() or [""])[-1][:300]
    if code is None:
        return "HANG", last
    if "Traceback (most recent call last)" in err or code not in (0, 2):
        if "MemoryError" in err or code in (-9, 137):
            return "MEMORY", last
        return "TRACEBACK", last
    if code == 2:
        said = [ln for ln in err.splitlines() if re.match(r"mist [\w-]+: error: ", ln)]
        return ("error", said[0][:300]) if said else ("TRACEBACK", last)
    if fp == clean_fp:
        return "same", ""
    before = {ln for ln in clean_text.splitlines() if reports_skip(ln)}
    new = [ln for ln in (out_text + err).splitlines() if reports_skip(ln) and ln not in before]
    return ("skip", new[0][:300]) if new else ("CHANGED", "")


def _one(kind: Kind, label: str, damage, tmp: Path, i: int, timeout_s: float, clean) -> Outcome | None:
    """Damage a copy of the clean inputs with ``damage``, run the command, classify."""
    clean_work, clean_fp, clean_text = clean
    work, out = tmp / f"work-{i}", tmp / f"out-{i}"
    shutil.copytree(clean_work, work, symlinks=True)
    try:
        try:
            applied = damage(work / kind.target)
        except Exception as exc:  # a damage this format cannot hold (the harness's limit)
            print(f"{kind.name:24s} {label:28s} not applied: {type(exc).__name__}: {exc}"[:300], flush=True)
            return None
        if not applied:
            return None
        argv = kind.argv(work, out)
        code, out_text, err = run_mist(argv, timeout_s, work)
        fp = fingerprint(work, out, out_text) if code == 0 else ""
        outcome, message = classify(code, _masked(out_text, work, out), _masked(err, work, out),
                                    fp, clean_fp, clean_text)
        return Outcome(kind.name, label, outcome, message, argv)
    finally:
        shutil.rmtree(work, ignore_errors=True)
        shutil.rmtree(out, ignore_errors=True)


def chosen_damages(kind: Kind, sample: int | None) -> list:
    """Every damage of ``kind``, or with ``sample`` the file and table damages and
    ``sample`` field damages drawn at random (seeded by the kind's name)."""
    every = damages(kind)
    if sample is None:
        return every
    whole = [d for d in every if ":" not in d[0]]
    fields = [d for d in every if ":" in d[0]]
    picked = sorted(random.Random(kind.name).sample(range(len(fields)), min(sample, len(fields))))
    return whole + [fields[i] for i in picked]


def campaign(kinds: list[Kind], timeout_s: float | None, show: bool, jobs: int = 1,
             sample: int | None = None) -> list[Outcome]:
    """Run every chosen damage of every kind (``jobs`` commands at a time)."""
    results: list[Outcome] = []
    for kind in kinds:
        limit = timeout_s or kind.timeout_s
        with tempfile.TemporaryDirectory(prefix=f"mist-fuzz-{kind.name}-") as tmp:
            tmp = Path(tmp)
            clean_work, clean_out = tmp / "clean", tmp / "clean-out"
            clean_work.mkdir()
            kind.setup(clean_work)
            argv = kind.argv(clean_work, clean_out)
            code, out_text, err = run_mist(argv, limit, clean_work)
            if code != 0:
                print(f"{kind.name}: the CLEAN run failed (exit {code}): {err.strip()[-400:]}", flush=True)
                results.append(Outcome(kind.name, "clean", "TRACEBACK", err.strip()[-300:], argv))
                continue
            clean = (clean_work, fingerprint(clean_work, clean_out, out_text),
                     _masked(out_text + err, clean_work, clean_out))
            with ThreadPoolExecutor(max_workers=jobs) as pool:
                futures = [pool.submit(_one, kind, label, damage, tmp, i, limit, clean)
                           for i, (label, damage) in enumerate(chosen_damages(kind, sample))]
                for future in futures:
                    got = future.result()
                    if got is None:
                        continue
                    results.append(got)
                    if show or got.outcome != "error":
                        print(f"{kind.name:24s} {got.damage:28s} {got.outcome:9s} {got.message}", flush=True)
    return results


def all_kinds() -> dict[str, Kind]:
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    kinds: dict[str, Kind] = {}
    for module in sorted(Path(__file__).resolve().parent.glob("fuzz_kinds_*.py")):
        mod = __import__(module.stem)
        for kind in mod.KINDS:
            kinds[kind.name] = kind
    return kinds


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--kind", nargs="+", help="kinds to damage (default: all)")
    parser.add_argument("--list", action="store_true", help="list the kinds and exit")
    parser.add_argument("--timeout", type=float, help="seconds per command (default: each kind's)")
    parser.add_argument("--show", action="store_true", help="print every outcome, errors too")
    parser.add_argument("--jobs", type=int, default=1, help="commands run at a time (default 1)")
    parser.add_argument("--sample", type=int, metavar="K",
                        help="per kind, every file and table damage but only K field damages, drawn "
                             "at random (seeded by the kind's name; default: every damage)")
    args = parser.parse_args()
    kinds = all_kinds()
    if args.list:
        for kind in kinds.values():
            print(f"{kind.name:24s} {kind.target} ({kind.fmt}): {len(damages(kind))} damages {kind.notes}")
        return 0
    chosen = [kinds[k] for k in args.kind] if args.kind else list(kinds.values())
    results = campaign(chosen, args.timeout, args.show, args.jobs, args.sample)
    counts: dict[str, Counter] = {}
    for r in results:
        counts.setdefault(r.kind, Counter())[r.outcome] += 1
    names = ("error", "skip", "same", *BAD_OUTCOMES)
    print(f"\n{'kind':24s} " + " ".join(f"{n:>9s}" for n in names))
    total = Counter()
    for kind, c in counts.items():
        total.update(c)
        print(f"{kind:24s} " + " ".join(f"{c[n]:9d}" for n in names))
    print(f"{'all':24s} " + " ".join(f"{total[n]:9d}" for n in names))
    return 1 if any(total[n] for n in BAD_OUTCOMES) else 0


if __name__ == "__main__":
    sys.exit(main())
