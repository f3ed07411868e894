"""Killing a command at any moment leaves either the complete previous output or the
complete new one (issue 25): real commands in a subprocess, SIGKILLed at moments spread
over their run, into an ``--out`` that holds a complete earlier output; after each kill
``--out`` must be exactly the old output or exactly the new one (file set and bytes;
JSON wall-clock fields aside), and the next run clears what the killed one left beside it.

The default suite kills ``mist ingest`` (the fastest command) at four moments: while
it starts, as its staging folder appears, as its first file lands there, and as the
new folder has just replaced the old one (before the old one is deleted).
The slow sweep kills ``mist replay`` and ``mist validate --out --json`` at eight delays
spread over their measured run time and at the same four moments of their writing.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from mist.validate.cli import main

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO / "traces" / "samples" / "cpu-tiny-llama"
REPEAT = REPO / "traces" / "samples" / "cpu-tiny-llama-repeat"
BUNDLE = REPO / "profiles" / "samples" / "cpu-tiny-llama" / "fp32"


def _normalised(name: str, data: bytes):
    """A file's bytes, or for JSON its object without wall-clock fields (they differ run to run)."""
    if not name.endswith(".json"):
        return data

    def drop(obj):
        if isinstance(obj, dict):
            return {k: drop(v) for k, v in obj.items() if "wall" not in k}
        return [drop(v) for v in obj] if isinstance(obj, list) else obj

    return drop(json.loads(data))


def _state(path: Path):
    """What a target holds: None when absent; a file's normalised bytes; a folder's
    {name: normalised bytes} (entries that are not regular files shown as such)."""
    if not os.path.lexists(path):
        return None
    if path.is_file():
        return _normalised(path.name, path.read_bytes())
    return {p.name: _normalised(p.name, p.read_bytes()) if p.is_file() and not p.is_symlink() else "not a file"
            for p in sorted(path.iterdir())}


def _leftovers(target: Path) -> list[str]:
    return sorted(p.name for p in target.parent.iterdir() if p.name.startswith(f".{target.name}."))


def _staged(target: Path, before: set) -> int | None:
    """None while no new staging folder is beside ``target`` (``before``: the stale ones),
    else how many files (not hidden temporaries) the new ones hold."""
    fresh = [target.parent / n for n in _leftovers(target) if n not in before]
    fresh = [p for p in fresh if p.is_dir()]
    try:
        return sum(len([f for f in p.iterdir() if not f.name.startswith(".")]) for p in fresh) if fresh else None
    except FileNotFoundError:  # renamed into place meanwhile
        return None


def _inode(path: Path):
    try:
        return os.stat(path).st_ino
    except FileNotFoundError:
        return None


def _reached(moment: tuple, out: Path, before: tuple) -> bool:
    if moment[0] == "replaced":  # the new folder renamed into place (the old one not yet deleted)
        return _inode(out) != before[1]
    staged = _staged(out, before[0])
    return staged is not None and staged >= moment[1]


def _kill(cmd: list[str], moment, out: Path, timeout: float = 120.0) -> bool:
    """Run ``cmd`` and SIGKILL it at ``moment``: seconds after its start; ``("staged", n)``:
    as soon as a new staging folder beside ``out`` holds ``n`` files (n = 0: as soon as it
    exists); ``("replaced",)``: as soon as ``out`` is another folder. Returns whether it
    was killed (False: it ended first)."""
    before = set(_leftovers(out)), _inode(out)
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    start = time.monotonic()
    try:
        if isinstance(moment, (int, float)):
            while proc.poll() is None and time.monotonic() - start < moment:
                time.sleep(0.002)
        else:
            while proc.poll() is None and time.monotonic() - start < timeout and not _reached(moment, out, before):
                time.sleep(0.0005)
        killed = proc.poll() is None
        if killed:
            proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait(timeout=timeout)  # reaped: its pid is gone, so its leftovers count as stale
    return killed


def _command(*args) -> list[str]:
    return [sys.executable, "-m", "mist", *map(str, args)]


def test_killing_mist_ingest_leaves_the_old_or_the_new_output(tmp_path):
    out, ref = tmp_path / "out", tmp_path / "ref"
    assert main(["ingest", str(REPEAT), "--out", str(out)]) == 0  # the previous output
    assert main(["ingest", str(SAMPLE), "--out", str(ref)]) == 0  # what the command makes
    old, new = _state(out), _state(ref)
    assert old != new and set(old).isdisjoint(new)  # another input's files: a mix would show
    seen = set()
    for moment in (0.3, ("staged", 0), ("staged", 1), ("replaced",)):
        killed = _kill(_command("ingest", SAMPLE, "--out", out), moment, out)
        now = _state(out)
        assert now in (old, new), f"killed at {moment}: {sorted(now or [])}"
        seen.add((killed, "new" if now == new else "old"))
        if now == new:
            assert main(["ingest", str(REPEAT), "--out", str(out)]) == 0  # back to the old output
    assert {(True, "old"), (True, "new")} <= seen  # kills landed before the rename and after it
    assert main(["ingest", str(SAMPLE), "--out", str(out)]) == 0
    assert _state(out) == new and _leftovers(out) == []  # stale staging of killed runs cleared


def _sweep(cmd_new, cmd_old, targets: list[Path], tmp_path: Path, delays: int = 8) -> dict:
    """Kill ``cmd_new`` at ``delays`` moments spread over its measured run, then as its
    staging folder appears, holds 2 and 4 files, and has just replaced the old output,
    each time over the complete output of ``cmd_old``; returns how many kills left each
    state (per target: old or new)."""
    subprocess.run(cmd_new, cwd=REPO, check=True, capture_output=True)
    new = [_state(t) for t in targets]
    for t in targets:
        os.rename(t, tmp_path / f"ref-{t.name}")
    start = time.monotonic()
    subprocess.run(cmd_old, cwd=REPO, check=True, capture_output=True)
    duration = time.monotonic() - start
    old = [_state(t) for t in targets]
    assert all(o != n for o, n in zip(old, new))
    tally: dict[str, int] = {}
    moments = [duration * (i + 0.5) / delays * 1.1 for i in range(delays)]
    for moment in moments + [("staged", 0), ("staged", 2), ("staged", 4), ("replaced",)]:
        _kill(cmd_new, moment, targets[0])
        now = [_state(t) for t in targets]
        states = ["old" if s == o else "new" if s == n else "MIXED" for s, o, n in zip(now, old, new)]
        assert "MIXED" not in states, f"killed at {moment} (run: {duration:.2f} s): {states}"
        tally[", ".join(states)] = tally.get(", ".join(states), 0) + 1
        if "new" in states:
            subprocess.run(cmd_old, cwd=REPO, check=True, capture_output=True)
    subprocess.run(cmd_new, cwd=REPO, check=True, capture_output=True)
    assert [_state(t) for t in targets] == new
    assert all(_leftovers(t) == [] for t in targets)
    return tally


@pytest.mark.slow
def test_killing_mist_replay_at_eight_moments(tmp_path):
    out = tmp_path / "out"

    def replay(trace):
        return _command("replay", "--trace", trace, "--profiles", BUNDLE, "--model", SAMPLE / "model_config.json",
                        "--engine", SAMPLE / "meta.json", "--out", out)

    tally = _sweep(replay(SAMPLE / "requests.jsonl"), replay(REPEAT / "requests.jsonl"), [out], tmp_path)
    print(tally)
    assert sum(tally.values()) == 12 and tally.get("old") and tally.get("new")


@pytest.mark.slow
def test_killing_mist_validate_with_out_and_json_at_eight_moments(tmp_path):
    out, js = tmp_path / "out", tmp_path / "summary.json"

    def validate(run):
        return _command("validate", "--run", run, "--profiles", BUNDLE, "--model", SAMPLE / "model_config.json",
                        "--out", out, "--json", js)

    tally = _sweep(validate(SAMPLE), validate(REPEAT), [out, js], tmp_path)
    print(tally)
    assert set(tally) <= {"old, old", "new, new"}, tally  # the two renames: no kill fell between them
    assert tally.get("old, old") and tally.get("new, new")
    shutil.rmtree(out)
