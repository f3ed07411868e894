"""`mist record`: run-directory layout, all-or-nothing output, checks; one real vLLM run (slow)."""

from __future__ import annotations

import importlib
import json
import sys
from pathlib import Path

import pytest

import mist.profiles.measure.recording as recording
from mist.profiles.measure.recorder import (
    EngineUnavailable,
    check_results,
    engine_kwargs,
    engine_versions,
    warmup_prompts,
)
from mist.profiles.measure.run_writer import timeseries_csv
from mist.profiles.measure.settings import RecordSettings, VllmSettings
from mist.traces.errors import TraceError
from mist.traces.readers.vllm_run import read_vllm_run
from mist.traces.workload_gen import generate, write_workload
from mist.validate.cli import build_parser, main

CONFIG = {"model_type": "llama", "vocab_size": 100, "hidden_size": 64, "intermediate_size": 128,
          "num_hidden_layers": 1, "num_attention_heads": 2, "num_key_value_heads": 1,
          "max_position_embeddings": 512, "dtype": "float32"}  # fmt: skip
SAMPLE_RUN = Path(__file__).resolve().parents[1] / "traces" / "samples" / "cpu-tiny-llama"
OFFSET = 1.7e9
PROBE = {"version": 1, "matmul_s": 0.01, "python_s": 0.04, "score_s": 0.02}  # a fixed speed probe  # epoch s = engine monotonic s + OFFSET in the fake engine


def _fake_results(requests, short=None):
    """What a well-behaved engine returns for ``requests`` (``short``: one token fewer)."""
    out = []
    for r in requests:
        n = r["output_toks"] - (r["request_id"] == short)
        q = 100.0 + r["arrival_s"] + 0.001
        out.append({"request_id": r["request_id"], "finished": True, "num_generation_tokens": n,
                    "token_times": [OFFSET + q + 0.05 + 0.01 * k for k in range(n)],
                    "arrival_time": OFFSET + 100.0 + r["arrival_s"], "queued_ts": q,
                    "scheduled_ts": q + 0.001, "first_token_ts": q + 0.05,
                    "last_token_ts": q + 0.05 + 0.01 * (n - 1)})  # fmt: skip
    return out


def _fake_record(short=None, interrupt=False):
    def fake(config, requests, settings, model_dir, before_stream=None, progress=None):
        if interrupt:
            raise KeyboardInterrupt
        kw = engine_kwargs(settings, model_dir, "float32", 64)
        probe = before_stream()  # as the engine does, after warm-up
        for _ in requests:
            progress()
        return {"results": _fake_results(requests, short), "engine_kwargs": kw,
                "engine_effective": {"block_size": 128, "num_gpu_blocks": 10},
                "probe": probe, "monotonic_to_epoch_s": OFFSET,
                "stats": [], "stream_start_mono_s": 0.0, "stream_end_mono_s": 1.0}  # fmt: skip

    return fake


@pytest.fixture
def fake_env(tmp_path, monkeypatch):
    versions = {"vllm_version": "test", "torch_version": "test", "transformers_version": "test"}
    monkeypatch.setattr(recording, "engine_versions", lambda: versions)
    # the speed probe takes a second; tests/test_drift.py checks it
    monkeypatch.setattr(recording, "run_probe", lambda cpus=None: dict(PROBE))
    (tmp_path / "cfg.json").write_text(json.dumps(CONFIG))
    return tmp_path


def _argv(tmp_path, *extra):
    return ["record", "--model", str(tmp_path / "cfg.json"), "--out", str(tmp_path / "run"),
            "--generate", "poisson:n=6,rate=5,in=12,out=3,prefix=4", *extra]  # fmt: skip


def test_recorded_run_reads_as_a_vllm_run(fake_env, monkeypatch):
    monkeypatch.setattr(recording, "record", _fake_record())
    assert main(_argv(fake_env, "--enable-prefix-caching")) == 0
    run = fake_env / "run"
    names = {p.name for p in run.iterdir()}
    assert names == {"requests.jsonl", "tokens.jsonl", "meta.json", "timeseries.csv",
                     "model_config.json", "workload.jsonl"}  # fmt: skip
    r = read_vllm_run(run)
    assert r.requests.num_rows == 6 and r.meta["engine_kwargs"]["enable_prefix_caching"] is True
    assert r.meta["clock_offset_s"] == pytest.approx(-OFFSET + 0.001, abs=1e-6)
    meta = json.loads((run / "meta.json").read_text())
    assert meta["engine_kwargs"]["model"] == "cfg" and meta["num_requests"] == 6
    assert meta["dataset_path"] == str(run / "workload.jsonl") and len(meta["dataset_hash"]) == 64
    assert meta["hardware"]["kind"] == "cpu" and meta["speed_probe"]["version"] == 1
    tokens = [json.loads(line) for line in (run / "tokens.jsonl").read_text().splitlines()]
    assert [len(t["token_times"]) for t in tokens] == [3] * 6
    assert meta["speed_probe"] == meta["speed_probe_end"] == PROBE
    assert not [p for p in fake_env.iterdir() if p.name.startswith(".run.")]


def _layout(run) -> dict:
    """File names, the keys of meta.json (two levels) and of the JSONL rows, the CSV header."""
    meta = json.loads((run / "meta.json").read_text())
    first = {name: json.loads((run / name).read_text().splitlines()[0])
             for name in ("requests.jsonl", "tokens.jsonl")}
    return {"files": sorted(p.name for p in run.iterdir()), "meta": sorted(meta),
            **{f"meta.{k}": sorted(meta[k]) for k in ("hardware", "engine_kwargs", "speed_probe")},
            **{name: list(row) for name, row in first.items()},
            "timeseries.csv": (run / "timeseries.csv").read_text().splitlines()[0]}


def test_recorded_run_has_the_shipped_sample_layout(fake_env, monkeypatch):
    """What mist record writes keeps the layout of the shipped recording (made by mist record)."""
    monkeypatch.setattr(recording, "record", _fake_record())
    assert main(_argv(fake_env)) == 0
    assert _layout(fake_env / "run") == _layout(SAMPLE_RUN)


@pytest.mark.parametrize("fake,status", [(_fake_record(short="2"), 2), (_fake_record(interrupt=True), 130)])
def test_failure_or_interrupt_leaves_nothing(fake_env, monkeypatch, capsys, fake, status):
    monkeypatch.setattr(recording, "record", fake)
    assert main(_argv(fake_env)) == status
    assert sorted(p.name for p in fake_env.iterdir()) == ["cfg.json"]
    if status == 2:
        assert "request '2': 2 tokens streamed, 3 requested" in capsys.readouterr().err


def test_existing_run_needs_force(fake_env, monkeypatch):
    monkeypatch.setattr(recording, "record", _fake_record())
    (fake_env / "run").mkdir()
    (fake_env / "run" / "old.txt").write_text("keep")
    assert main(_argv(fake_env)) == 2
    assert (fake_env / "run" / "old.txt").is_file()
    assert main(_argv(fake_env, "--force")) == 0
    assert not (fake_env / "run" / "old.txt").exists() and (fake_env / "run" / "meta.json").is_file()
    assert sorted(p.name for p in fake_env.iterdir()) == ["cfg.json", "run"]


def test_missing_vllm_gives_install_hint(fake_env, monkeypatch, capsys):
    def broken():
        raise EngineUnavailable("No module named 'vllm'")

    monkeypatch.setattr(recording, "engine_versions", broken)
    assert main(_argv(fake_env)) == 2
    assert "pip install -e '.[record]'" in capsys.readouterr().err


def test_cli_does_not_import_vllm():
    before = "vllm" in sys.modules
    build_parser().parse_args(["record", "--model", "m.json", "--out", "o", "--workload", "w.jsonl"])
    assert ("vllm" in sys.modules) == before


def test_record_run_is_a_library_job(fake_env, monkeypatch):
    monkeypatch.setattr(recording, "record", _fake_record())
    ticks = []

    def progress(total, description):
        ticks.append((total, description))
        return lambda n=1: ticks.append(n)

    settings = RecordSettings(model_config=fake_env / "cfg.json", out=fake_env / "run",
                              generate="poisson:n=4,rate=5,in=12,out=3",
                              engine=VllmSettings(warmup=2, threads_bind="auto"))
    done = recording.record_run(settings, progress)
    assert done.out == fake_env / "run" and done.num_requests == 4
    assert ticks == [(4, "record"), 1, 1, 1, 1]
    assert done.meta == json.loads((fake_env / "run" / "meta.json").read_text())
    assert done.meta["warmup_requests"] == 2 and done.meta["hardware"]["omp_threads_bind"] == "auto"
    assert done.meta["generate_spec"] == "poisson:n=4,rate=5,in=12,out=3"
    # a stream file is replayed as given and kept where it lies
    again = RecordSettings(model_config=fake_env / "cfg.json", out=fake_env / "run2",
                           workload=fake_env / "run" / "workload.jsonl")
    meta = recording.record_run(again).meta
    assert meta["dataset_path"] == str((fake_env / "run" / "workload.jsonl").resolve())
    assert meta["dataset_hash"] == done.meta["dataset_hash"] and meta["generate_spec"] is None


def test_record_settings_need_exactly_one_stream(tmp_path):
    with pytest.raises(ValueError, match="exactly one"):
        RecordSettings(model_config=tmp_path / "m.json", out=tmp_path / "run")
    with pytest.raises(ValueError, match="exactly one"):
        RecordSettings(model_config=tmp_path / "m.json", out=tmp_path / "run",
                       workload=tmp_path / "w.jsonl", generate="poisson:n=1,rate=1,in=1,out=1")


def test_a_torchvision_that_cannot_load_is_reported(tmp_path, monkeypatch, capsys):
    """PyPI's CUDA torchvision beside the CPU torch: transformers would import it and fail."""
    fake = tmp_path / "torchvision"
    fake.mkdir()
    (fake / "__init__.py").write_text('raise RuntimeError("operator torchvision::nms does not exist")\n')
    monkeypatch.syspath_prepend(str(tmp_path))
    for name in ("torch", "transformers", "vllm"):
        monkeypatch.setitem(sys.modules, name, type(sys)(name))
        sys.modules[name].__version__ = "test"
    monkeypatch.delitem(sys.modules, "torchvision", raising=False)
    with pytest.raises(EngineUnavailable, match="torchvision::nms"):
        engine_versions()
    (tmp_path / "cfg.json").write_text(json.dumps(CONFIG))
    assert main(_argv(tmp_path)) == 2
    err = capsys.readouterr().err
    assert "torchvision::nms" in err and "pip uninstall -y torchvision torchaudio torchcodec" in err
    assert not (tmp_path / "run").exists()


def test_check_results_names_the_bad_request():
    reqs = [{"request_id": str(i), "output_toks": 3, "arrival_s": 0.0} for i in range(3)]
    check_results(reqs, _fake_results(reqs))
    bad = _fake_results(reqs)
    bad[1]["finished"] = False
    with pytest.raises(TraceError, match="'1' did not finish"):
        check_results(reqs, bad)
    bad = _fake_results(reqs)
    bad[2]["num_generation_tokens"] = 4
    with pytest.raises(TraceError, match="'2': 4 tokens engine"):
        check_results(reqs, bad)
    bad = _fake_results(reqs)
    bad[0]["queued_ts"] = 0.0
    with pytest.raises(TraceError, match="no engine timestamps"):
        check_results(reqs, bad)


def test_load_requests_rejects_what_it_cannot_replay(tmp_path):
    path = tmp_path / "w.jsonl"
    write_workload(path, generate(3, 1.0, input_len=4, output_len=2, vocab_size=10, seed=0))
    reqs = recording.load_requests(path, vocab_size=10)
    assert [r["request_id"] for r in reqs] == ["0", "1", "2"] and reqs[0]["arrival_s"] == 0.0
    with pytest.raises(TraceError, match="outside the model's vocab"):
        recording.load_requests(path, vocab_size=5)
    lines = path.read_text().splitlines()
    path.write_text(lines[0] + "\n" + json.dumps({"input_toks": 2, "output_toks": 1,
                                                  "arrival_time_ns": 9}) + "\n")  # fmt: skip
    with pytest.raises(TraceError, match="record 2 .* no input_tok_ids"):
        recording.load_requests(path, vocab_size=10)
    path.write_text(lines[0] + "\n" + json.dumps({"input_toks": 0, "output_toks": 1,
                                                  "arrival_time_ns": 9, "input_tok_ids": []}) + "\n")  # fmt: skip
    with pytest.raises(TraceError, match="cannot replay every record"):
        recording.load_requests(path, vocab_size=10)


def test_timeseries_ticks_by_hand():
    # (monotonic s, running, waiting, kv use, prompt tokens, generated tokens)
    samples = [(10.2, 1, 2, 0.10, 64, 1), (10.9, 2, 0, 0.20, 0, 2), (12.5, 0, 0, 0.0, 0, 1)]
    csv = timeseries_csv(samples, 10.0, 12.6).splitlines()
    assert csv[1:] == ["1.0,64.0,3.0,2,0,20.00", "2.0,0.0,0.0,2,0,20.00", "3.0,0.0,1.0,0,0,0.00"]


def test_warmup_prompts_and_prefix_caching_default():
    reqs = [{"input_toks": 5, "output_toks": 40}, {"input_toks": 7, "output_toks": 2}]
    warm = warmup_prompts(reqs, 3, vocab_size=1000, seed=0)
    assert [(len(ids), n) for ids, n in warm] == [(5, 16), (7, 2), (5, 16)]
    assert warm == warmup_prompts(reqs, 3, vocab_size=1000, seed=0)
    kw = engine_kwargs(VllmSettings(), "m", "float32", 64)
    assert kw["enable_prefix_caching"] is False and kw["max_num_seqs"] == 64


def _vllm_missing() -> str | None:
    try:
        importlib.import_module("vllm")
    except Exception as exc:  # ImportError or a broken install
        return f"vLLM not importable here ({exc!r})"
    return None


@pytest.mark.slow
def test_real_recording_of_ten_requests(tmp_path):
    why = _vllm_missing()
    if why:
        pytest.skip(why)
    (tmp_path / "cfg.json").write_text(json.dumps(CONFIG))
    argv = ["record", "--model", str(tmp_path / "cfg.json"), "--out", str(tmp_path / "run"),
            "--generate", "poisson:n=10,rate=4,in=40,out=6", "--warmup", "1",
            "--kv-cache-space-gib", "1"]  # fmt: skip
    assert main(argv) == 0
    r = read_vllm_run(tmp_path / "run")
    assert r.requests.num_rows == 10 and r.requests.column("output_tokens").to_pylist() == [6] * 10
    meta = r.meta
    assert meta["engine_effective"]["enable_prefix_caching"] is False
    assert meta["engine_effective"]["num_gpu_blocks"] > 0
