"""A replay in bounded memory (mist.replay.stream): requests made as the clock reaches
them, steps streamed to Parquet in row groups; the same tables as the replay in memory."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import mist.replay.engine as engine
import mist.replay.stream as stream
from mist.replay.run import ReplaySettings, replay_trace, simulate
from mist.traces.io import parquet_bytes

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO / "traces/samples/cpu-tiny-llama"
SETTINGS = ReplaySettings(trace=SAMPLE, profiles=REPO / "profiles/samples/cpu-tiny-llama/fp32",
                          model=SAMPLE / "model_config.json", engine=SAMPLE / "meta.json")


@pytest.fixture(scope="module")
def in_memory():
    return replay_trace(SETTINGS)


def test_streamed_steps_file_is_the_table_written_whole(in_memory, tmp_path):
    """The shipped sample's replay with its steps streamed: the same requests table, and
    the steps file byte for byte what writing the in-memory steps table gives."""
    streamed = replay_trace(SETTINGS, out=tmp_path)
    assert streamed.steps is None and streamed.num_steps == in_memory.num_steps == in_memory.steps.num_rows > 1000
    assert streamed.requests.equals(in_memory.requests, check_metadata=True)
    assert (tmp_path / "simulated.steps.parquet").read_bytes() == parquet_bytes(in_memory.steps)
    assert streamed.summary()["latency_s"] == in_memory.summary()["latency_s"]
    assert streamed.steps_frame(["start_s"]).equals(in_memory.steps_frame(["start_s"]))
    assert [p.name for p in tmp_path.iterdir()] == ["simulated.steps.parquet"]  # no temporary file left


def test_steps_stream_in_row_groups_of_the_declared_size(in_memory, tmp_path, monkeypatch):
    """With small chunks (the engine hands over 300 steps at a time, row groups of 1,000
    rows) the file holds ceil(steps / 1000) row groups, and is what pyarrow writes for
    the whole table with that row-group size."""
    monkeypatch.setattr(engine, "STEP_CHUNK", 300)
    monkeypatch.setattr(stream, "ROW_GROUP_ROWS", 1000)
    streamed = replay_trace(SETTINGS, out=tmp_path)
    meta = pq.ParquetFile(tmp_path / "simulated.steps.parquet").metadata
    n = in_memory.steps.num_rows
    assert streamed.num_steps == n and meta.num_row_groups == -(-n // 1000)
    assert [meta.row_group(i).num_rows for i in range(meta.num_row_groups)][:-1] == [1000] * (n // 1000)
    sink = pa.BufferOutputStream()
    pq.write_table(in_memory.steps, sink, compression="zstd", row_group_size=1000)
    assert (tmp_path / "simulated.steps.parquet").read_bytes() == sink.getvalue().to_pybytes()


def test_requests_are_made_only_as_the_clock_reaches_them(monkeypatch):
    """When a request finishes, the replay has made no request arriving later than the
    next one (the stream is read one arrival ahead), whatever the chunk of rows read."""
    from mist.replay.run import load_deployment, prepare
    from mist.traces.formats import read_trace
    from mist.traces.readers.vllm_run import read_run_meta

    requests = read_trace(SAMPLE).requests
    cfg, cost, _ = prepare(read_run_meta(SAMPLE), *load_deployment(SETTINGS.profiles, SETTINGS.model))
    made, seen = [], []
    inner, record = stream.request_stream, stream.Recorder.on_finish

    def counted(*args):
        for req in inner(*args):
            made.append(req.arrival_s)
            yield req

    def on_finish(self, req, now):
        seen.append(sum(t > now for t in made))
        return record(self, req, now)

    monkeypatch.setattr("mist.replay.run.request_stream", counted)
    monkeypatch.setattr(stream.Recorder, "on_finish", on_finish)
    sim, _, _ = simulate(requests, cfg, cost, arrival="client")
    assert len(seen) == len(made) == requests.num_rows == 200
    assert max(seen) <= 1 and min(seen) == 0
    assert sim.column("finished_s").null_count == 0


def test_a_replay_failing_midway_leaves_no_steps_file(tmp_path, monkeypatch):
    """A replay that fails after its first steps were written leaves nothing in its
    folder (the partial file is dropped), and the error is the replay's own."""
    monkeypatch.setattr(engine, "STEP_CHUNK", 300)
    flush = engine.Replay.flush_steps

    def flush_then_fail(self):
        flush(self)
        if self.flushed > 600:
            raise RuntimeError("disk gone")

    monkeypatch.setattr(engine.Replay, "flush_steps", flush_then_fail)
    with pytest.raises(RuntimeError, match="disk gone"):
        replay_trace(SETTINGS, out=tmp_path)
    assert list(tmp_path.iterdir()) == []
