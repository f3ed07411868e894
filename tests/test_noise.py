"""`mist noise`: two recordings of one stream compared with the simulator's metrics."""

from __future__ import annotations

import json

from mist.validate.cli import main


def test_a_recording_against_itself_has_zero_error(shared_data, tmp_path):
    run = shared_data / "vllm-bench-cpu" / "tiny-llama-rate1.5"
    out = tmp_path / "self.json"
    assert main(["noise", "--a", str(run), "--b", str(run), "--json", str(out)]) == 0
    s = json.loads(out.read_text())
    assert s["requests"]["matched"] == 60
    for m in s["metrics"].values():
        assert all(v == 0 for v in m.values())


def test_two_real_cpu_recordings_differ_and_are_matched(shared_data, tmp_path):
    a = shared_data / "vllm-bench-cpu" / "tiny-llama-rate1.5"
    b = shared_data / "vllm-bench-cpu" / "tiny-llama-rate1.5-run2"
    out = tmp_path / "noise.json"
    assert main(["noise", "--a", str(a), "--b", str(b), "--json", str(out), "--out", str(tmp_path / "r")]) == 0
    s = json.loads(out.read_text())
    assert s["requests"] == {"a": 60, "b": 60, "matched": 60}
    # the real engine does vary between identical runs on this machine
    assert s["metrics"]["e2e"]["mape"] > 0.5
    assert (tmp_path / "r" / "report.md").is_file()
