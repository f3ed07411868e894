"""`mist noise`: two recordings of one stream compared with the simulator's metrics."""

from __future__ import annotations

import json

from mist.validate.cli import main
from mist.validate.noise import NoiseSettings, noise_floor


def test_a_recording_against_itself_has_zero_error(shared):
    run = shared.vllm_bench_cpu / "tiny-llama-rate1.5"
    s = noise_floor(NoiseSettings(a=run, b=run)).summary()
    assert s["requests"]["matched"] == 60
    for m in s["metrics"].values():
        assert all(v == 0 for v in m.values())


def test_two_real_cpu_recordings_differ_and_are_matched(shared, tmp_path):
    a = shared.vllm_bench_cpu / "tiny-llama-rate1.5"
    b = shared.vllm_bench_cpu / "tiny-llama-rate1.5-run2"
    out = tmp_path / "noise.json"
    assert main(["noise", "--a", str(a), "--b", str(b), "--json", str(out), "--out", str(tmp_path / "r")]) == 0
    s = json.loads(out.read_text())
    assert s["requests"] == {"a": 60, "b": 60, "matched": 60}
    # the real engine does vary between identical runs on this machine
    assert s["metrics"]["e2e"]["mape"] > 0.5
    assert (tmp_path / "r" / "report.md").is_file()
    # the command line writes what the library returns
    assert s == json.loads(json.dumps(noise_floor(NoiseSettings(a=a, b=b)).summary()))


def test_a_request_only_one_recording_has_is_named_and_left_out(tmp_path, capsys):
    """A request id the other recording lacks is excluded from the comparison and named
    on stderr (was: only the matched count fell by one, silently)."""
    import shutil
    from pathlib import Path

    sample = Path(__file__).resolve().parents[1] / "traces/samples/cpu-tiny-llama"
    b = tmp_path / "b"
    shutil.copytree(sample, b)
    lines = (b / "requests.jsonl").read_text().splitlines()
    rec = json.loads(lines[10])
    rec["request_id"] = "renamed"
    lines[10] = json.dumps(rec)
    (b / "requests.jsonl").write_text("\n".join(lines) + "\n")
    assert main(["noise", "--a", str(sample), "--b", str(b)]) == 0
    out, err = capsys.readouterr()
    assert "199 requests matched" in out
    assert f"1 request(s) only in {sample}, excluded from the comparison: {rec_id(sample, 10)}" in err
    assert f"1 request(s) only in {b}, excluded from the comparison: renamed" in err


def rec_id(run, index: int) -> str:
    return json.loads((run / "requests.jsonl").read_text().splitlines()[index])["request_id"]
