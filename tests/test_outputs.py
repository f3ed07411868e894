"""Every command's outputs are all or nothing (issue 25): a folder is written in a
staging folder beside ``--out`` and replaces it whole in one rename; a failure or a
Ctrl-C at any point leaves the earlier output exactly as it was; no write follows a
symbolic link; ``--out`` is never a folder that holds the command's inputs."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import mist.profiles.ingest as ingest_lib
import mist.traces.staging as io
from mist.traces.io import atomic_write_text
from mist.validate.cli import main

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO / "traces" / "samples" / "cpu-tiny-llama"
BUNDLE = REPO / "profiles" / "samples" / "cpu-tiny-llama" / "fp32"


def _snapshot(folder: Path) -> dict:
    """File name -> bytes of every entry in ``folder`` (and nothing else may be there)."""
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def _leftovers(parent: Path, name: str) -> list[str]:
    """Staging or old-output folders a command left beside its ``--out``."""
    return sorted(p.name for p in parent.iterdir() if p.name.startswith(f".{name}."))


def _two_inputs(tmp_path: Path) -> tuple[Path, Path]:
    """Two request traces (the shipped sample run and its repeat) in a folder of their own."""
    src = tmp_path / "inputs"
    src.mkdir()
    a = shutil.copytree(SAMPLE, src / "run-a")
    b = shutil.copytree(REPO / "traces" / "samples" / "cpu-tiny-llama-repeat", src / "run-b")
    return a, b


def _fail_after_first(monkeypatch, exc: BaseException) -> list:
    """Make ingest's writer write the first input's files, then raise ``exc`` on the next."""
    real, written = ingest_lib.write_outputs, []

    def write(out, stem, result):
        if written:
            raise exc
        written.extend(real(out, stem, result))
        return written

    monkeypatch.setattr(ingest_lib, "write_outputs", write)
    return written


@pytest.mark.parametrize("exc", [OSError(28, "No space left on device"), KeyboardInterrupt()])
def test_a_failure_after_the_first_file_leaves_the_previous_output_whole(tmp_path, monkeypatch, capsys, exc):
    a, b = _two_inputs(tmp_path)
    out = tmp_path / "out"
    assert main(["ingest", str(a), "--out", str(out)]) == 0
    before = _snapshot(out)
    assert sorted(before) == ["run-a.meta.json", "run-a.requests.parquet"]
    written = _fail_after_first(monkeypatch, exc)
    if isinstance(exc, KeyboardInterrupt):
        with pytest.raises(KeyboardInterrupt):
            main(["ingest", str(b), str(a), "--out", str(out)])
    else:
        assert main(["ingest", str(b), str(a), "--out", str(out)]) == 2
        assert "No space left on device" in capsys.readouterr().err
    assert [p.name for p in written] == ["run-b.requests.parquet", "run-b.meta.json"]  # really written first
    assert _snapshot(out) == before  # the first file of the failed run is not in --out
    assert _leftovers(tmp_path, "out") == []  # and its staging folder is gone


def test_a_rerun_leaves_exactly_the_new_set_of_files(tmp_path, capsys):
    a, b = _two_inputs(tmp_path)
    out = tmp_path / "out"
    assert main(["ingest", str(a), str(b), "--out", str(out)]) == 0
    assert len(_snapshot(out)) == 4
    assert main(["ingest", str(b), "--out", str(out)]) == 0
    fresh = tmp_path / "fresh"
    assert main(["ingest", str(b), "--out", str(fresh)]) == 0
    assert _snapshot(out) == _snapshot(fresh)  # no file of run-a survives the re-run
    assert f"wrote {out / 'run-b.requests.parquet'}" in capsys.readouterr().out  # the final path, not the staging one
    assert _leftovers(tmp_path, "out") == []


def test_replay_killed_while_writing_leaves_the_earlier_replay(tmp_path, monkeypatch, capsys):
    """The issue's case: a replay killed mid-write into a folder holding an earlier replay."""
    import mist.validate.report as report

    trace = tmp_path / "ten.jsonl"  # ten requests of the sample's stream: a replay in a few ms
    trace.write_text("".join((SAMPLE / "workload.jsonl").read_text().splitlines(keepends=True)[:10]))
    out = tmp_path / "rep"
    argv = ["replay", "--trace", str(trace), "--profiles", str(BUNDLE), "--model", str(SAMPLE / "model_config.json"),
            "--engine", str(SAMPLE / "meta.json"), "--out", str(out)]
    import matplotlib.pyplot as plt

    monkeypatch.setattr(report, "_png", lambda fig: plt.close(fig) or b"png")  # plots' bytes are not tested here
    assert main(argv) == 0
    before = _snapshot(out)
    assert {"simulated.requests.parquet", "simulated.steps.parquet", "summary.json", "report.md"} <= set(before)

    def killed(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(report, "write_replay_report", killed)  # after the tables and summary.json
    with pytest.raises(KeyboardInterrupt):
        main(argv)
    assert _snapshot(out) == before
    assert _leftovers(tmp_path, "rep") == []


def test_a_symlink_at_out_is_refused_and_nothing_is_written_through_it(tmp_path, capsys):
    a, _ = _two_inputs(tmp_path)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (tmp_path / "out").symlink_to(elsewhere, target_is_directory=True)
    assert main(["ingest", str(a), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "is a symbolic link" in err and str(tmp_path / "out") in err
    assert list(elsewhere.iterdir()) == []
    assert (tmp_path / "out").is_symlink()


def test_a_symlink_planted_inside_out_is_refused_and_its_target_untouched(tmp_path, capsys):
    out = tmp_path / "cal"
    out.mkdir()
    victim = tmp_path / "victim.txt"
    victim.write_text("precious\n")
    (out / "report.md").symlink_to(victim)
    assert main(["calibrate", "--profiles", str(BUNDLE), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "'report.md', a symbolic link" in err
    assert victim.read_text() == "precious\n"
    assert sorted(p.name for p in out.iterdir()) == ["report.md"] and (out / "report.md").is_symlink()


def test_a_symlink_at_json_is_refused(tmp_path, capsys):
    victim = tmp_path / "victim.json"
    victim.write_text("{}\n")
    (tmp_path / "noise.json").symlink_to(victim)
    argv = ["noise", "--a", str(SAMPLE), "--b", str(SAMPLE), "--json", str(tmp_path / "noise.json")]
    assert main(argv) == 2
    assert "is a symbolic link" in capsys.readouterr().err
    assert victim.read_text() == "{}\n"


def test_an_out_that_holds_an_input_or_a_subfolder_is_not_replaced(tmp_path, capsys):
    a, b = _two_inputs(tmp_path)
    assert main(["ingest", str(a), "--out", str(a)]) == 2  # would replace the run with its own tables
    assert "holds PATH " in capsys.readouterr().err
    assert main(["ingest", str(a), "--out", str(tmp_path)]) == 2  # holds the inputs' folder
    assert "a subfolder" not in capsys.readouterr().err
    keep = tmp_path / "notes"
    (keep / "sub").mkdir(parents=True)
    assert main(["ingest", str(b), "--out", str(keep)]) == 2  # not an earlier output: may hold anything
    assert "'sub', not a regular file" in capsys.readouterr().err
    assert (keep / "sub").is_dir() and sorted(p.name for p in a.iterdir()) == sorted(p.name for p in SAMPLE.iterdir())


@pytest.mark.parametrize("exchange", [True, False])
def test_staged_dir_replaces_whole_or_not_at_all(tmp_path, monkeypatch, exchange):
    if not exchange:  # systems without an atomic swap: move the old aside, rename, delete
        monkeypatch.setattr(io, "_exchange", lambda a, b: False)
    out = tmp_path / "out"
    with io.staged_dir(out) as stage:
        (stage / "a.txt").write_text("1")
        (stage / "old-only.txt").write_text("x")
    assert _snapshot(out) == {"a.txt": b"1", "old-only.txt": b"x"}
    with pytest.raises(RuntimeError), io.staged_dir(out) as stage:
        (stage / "a.txt").write_text("2")
        raise RuntimeError("late failure")
    assert _snapshot(out) == {"a.txt": b"1", "old-only.txt": b"x"}
    with io.staged_dir(out) as stage:
        (stage / "a.txt").write_text("3")
    assert _snapshot(out) == {"a.txt": b"3"}
    assert oct(out.stat().st_mode & 0o777) == oct(0o755)
    assert _leftovers(tmp_path, "out") == []
    monkeypatch.chdir(out)
    with pytest.raises(io.TraceError, match="is the working folder"), io.staged_dir("."):
        pass
    assert _snapshot(out) == {"a.txt": b"3"}


def test_write_staged_gives_paths_under_out(tmp_path):
    out = tmp_path / "o"
    got = io.write_staged(out, lambda folder: [folder / "x.json", "name"])
    assert got == [out / "x.json", "name"] and out.is_dir()


def test_outputs_of_one_command_are_put_in_place_together_or_not_at_all(tmp_path):
    out, js = tmp_path / "out", tmp_path / "summary.json"
    with io.staged_outputs() as outputs:
        (outputs.folder(out) / "a.txt").write_text("1")
        outputs.file(js, b"old\n")
    with pytest.raises(RuntimeError), io.staged_outputs() as outputs:  # fails after staging both
        (outputs.folder(out) / "a.txt").write_text("2")
        outputs.file(js, b"new\n")
        assert _snapshot(out) == {"a.txt": b"1"} and js.read_bytes() == b"old\n"  # nothing in place yet
        raise RuntimeError("late failure")
    assert _snapshot(out) == {"a.txt": b"1"} and js.read_bytes() == b"old\n"
    assert _leftovers(tmp_path, "out") == [] and _leftovers(tmp_path, "summary.json") == []
    with io.staged_outputs() as outputs:  # a file inside a folder staged before it goes into that folder
        (outputs.folder(out) / "a.txt").write_text("3")
        outputs.file(out / "in.json", b"{}\n")
        outputs.file(js, b"new\n")
    assert _snapshot(out) == {"a.txt": b"3", "in.json": b"{}\n"} and js.read_bytes() == b"new\n"
    assert oct(js.stat().st_mode & 0o777) == oct(0o644)


def test_a_symlink_planted_at_a_file_target_while_the_command_runs_is_not_written_through(tmp_path):
    victim, js = tmp_path / "victim.txt", tmp_path / "summary.json"
    victim.write_text("precious\n")
    with pytest.raises(io.TraceError, match="is a symbolic link"), io.staged_outputs() as outputs:
        out_stage = outputs.folder(tmp_path / "out")
        outputs.file(js, b"new\n")
        js.symlink_to(victim)  # planted after the checks, before the renames
    assert victim.read_text() == "precious\n" and js.is_symlink()
    assert not (tmp_path / "out").exists() and not out_stage.exists()
    assert _leftovers(tmp_path, "summary.json") == []
    with pytest.raises(io.TraceError, match="is a symbolic link"):
        atomic_write_text(js, "new\n")  # the single-file writer refuses a link too
    assert victim.read_text() == "precious\n"


def test_staging_left_by_a_killed_run_is_cleared_by_the_next_and_a_live_runs_is_kept(tmp_path):
    out = tmp_path / "out"
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()  # a pid that no longer runs
    host = io.staging_prefix(out).split("@")[1]
    stale = tmp_path / f".out.{dead.pid}@{host}ab_c1234.tmp"
    (stale / "x.parquet").parent.mkdir()
    (stale / "x.parquet").write_bytes(b"half")
    stale_file = tmp_path / f".out.{dead.pid}@{host}zz9_abcd.old"
    stale_file.write_bytes(b"")
    live = tmp_path / f".out.{os.getppid()}@{host}ab_c1234.tmp"
    live.mkdir()
    other = tmp_path / ".out.notes"  # not a staging entry's name: never touched
    other.write_text("mine\n")
    with io.staged_dir(out) as stage:
        (stage / "a.txt").write_text("1")
    assert _leftovers(tmp_path, "out") == sorted([live.name, other.name])
    assert _snapshot(out) == {"a.txt": b"1"}


def test_a_profile_bundle_is_swapped_whole_and_a_killed_runs_staging_is_cleared(tmp_path):
    """`mist profile`'s bundle (a folder with a tp1/ sub-folder) replaces an earlier one
    whole in one exchange; a staging folder of a dead process is deleted; a link at the
    target is refused."""
    from mist.profiles.measure.bundle_writer import write_bundle

    row = {"layer": "mlp", "tokens": 8, "time_us": 1.0, "spread_us": 0.1, "samples": 3}
    out = tmp_path / "bundle"
    write_bundle(out, {"name": "old"}, {"dense": [row]})
    (out / "tp1" / "stray.csv").write_text("x\n")  # not part of the new bundle
    dead = tmp_path / ".bundle.999999999@" f"{io._HOST}.abc_1.tmp"
    dead.mkdir()
    write_bundle(out, {"name": "new"}, {"dense": [row, {**row, "tokens": 16}]}, force=True)
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*")) == ["meta.yaml", "tp1", "tp1/dense.csv"]
    assert "new" in (out / "meta.yaml").read_text() and not dead.exists()
    assert [p.name for p in tmp_path.iterdir()] == ["bundle"]
    link = tmp_path / "link"
    link.symlink_to(out)
    with pytest.raises(ValueError, match="symbolic link"):
        write_bundle(link, {"name": "x"}, {"dense": [row]}, force=True)
