"""The validation report: every file written, byte-identical across runs."""

from __future__ import annotations

import numpy as np
import pandas as pd

from mist.validate.align import align
from mist.validate.metrics import summarize
from mist.validate.report import write_report


def _aligned():
    rng = np.random.default_rng(0)
    n = 40
    arrival = np.sort(rng.uniform(0, 10, n))
    first = arrival + rng.uniform(0.05, 2.0, n)
    out = rng.integers(1, 200, n)
    finished = first + out * 0.02
    ids = [f"r{i:03d}" for i in range(n)]
    meas = pd.DataFrame(
        {
            "request_id": ids,
            "arrival_s": arrival,
            "input_tokens": 64,
            "output_tokens": out,
            "scheduled_s": arrival + 0.01,
            "first_token_s": first,
            "finished_s": finished,
        }
    )
    sim_first = arrival + (first - arrival) * 1.1
    sim = meas.assign(first_token_s=sim_first, finished_s=sim_first + out * 0.021).iloc[:-2]
    return align(meas, sim)


def _steps():
    t = np.arange(0.0, 10.0, 0.5)
    return pd.DataFrame(
        {
            "step_id": np.arange(2 * t.size),
            "replica": np.repeat([0, 1], t.size),
            "start_s": np.concatenate([t, t + 0.25]),
            "duration_s": 0.1,
            "num_running": np.arange(2 * t.size) % 7,
            "num_waiting": np.arange(2 * t.size) % 3,
            "kv_blocks_used": np.arange(2 * t.size) % 50,
        }
    )


def _for_plot(series: pd.Series) -> pd.Series:
    """The sampling the report drew a step series with before it streamed the steps
    (the reference its streamed series must equal): at MAX_PLOTTED_STEPS evenly spaced
    instants (the value holding at each) when it is longer."""
    from mist.validate.report import MAX_PLOTTED_STEPS

    if len(series) <= MAX_PLOTTED_STEPS:
        return series
    t = np.linspace(series.index[0], series.index[-1], MAX_PLOTTED_STEPS)
    at = np.searchsorted(series.index.to_numpy(), t, side="right") - 1
    return pd.Series(series.to_numpy()[at], index=t)


def _timeseries():
    t = np.arange(1.0, 11.0)
    return pd.DataFrame({"t": t, "running": (t * 3) % 11, "waiting": t % 4, "kv_cache_pct": 3 * t})


def _write(out_dir, **kwargs):
    aligned = _aligned()
    return write_report(
        out_dir,
        aligned,
        summarize(aligned),
        title="Synthetic run",
        notes=["scheduler: fcfs"],
        **kwargs,
    )


def test_report_writes_all_files_deterministically(tmp_path):
    # two replicas' steps and a measured KV gauge: the queue plot with its KV panel
    paths = [_write(tmp_path / d, steps=_steps(), timeseries=_timeseries(), kv_capacity=200) for d in ("a", "b")]
    names = sorted(p.name for p in paths[0].parent.iterdir())
    assert names == [
        "ape_vs_arrival.png",
        "cdf.png",
        "queue.png",
        "report.md",
        "scatter.png",
    ]
    for name in names:
        assert (paths[0].parent / name).read_bytes() == (paths[1].parent / name).read_bytes(), name
    text = paths[0].read_text()
    assert text.startswith("# Synthetic run\n")
    assert "- matched (compared): 38" in text and "`r038`, `r039`" in text
    assert "| ttft" in text and "scheduler: fcfs" in text
    assert "Queue depth and KV cache over time" in text
    for name in names:
        if name.endswith(".png"):
            assert f"]({name})" in text


def test_report_without_queue_data_skips_queue_plot(tmp_path):
    path = _write(tmp_path)
    assert not (tmp_path / "queue.png").exists()
    assert "queue.png" not in path.read_text()


def test_report_with_real_timeseries(shared):
    # the queue plot is the report's only use of the timeseries: drawn alone
    from mist.validate.report import _png, plot_queue

    ts = pd.read_csv(shared.llama_run / "timeseries.csv")
    assert len(_png(plot_queue(None, ts))) > 1000


def test_kv_panel_sums_replicas_over_their_capacity():
    """The KV panel's simulated line is the blocks held by all replicas over all their
    blocks (each replica holding its last value between its steps); a timeseries whose
    kv_cache_pct is 0 at every tick counts as not recorded."""
    from mist.validate.report import kv_usage_pct, measured_kv_pct, plot_queue
    from mist.validate.run import kv_note

    steps = pd.DataFrame({"replica": [0, 1, 0, 1], "start_s": [0.0, 0.5, 1.0, 1.5],
                          "num_running": 1, "num_waiting": 0, "kv_blocks_used": [10, 30, 50, 20]})
    pct = kv_usage_pct(steps, 200)  # two replicas of 100 blocks
    assert pct.to_dict() == {0.0: 5.0, 0.5: 20.0, 1.0: 40.0, 1.5: 35.0}
    ts = pd.DataFrame({"t": [1.0, 2.0], "running": [1, 1], "waiting": [0, 0], "kv_cache_pct": [0.0, 0.0]})
    assert measured_kv_pct(ts) is None and measured_kv_pct(ts.drop(columns="kv_cache_pct")) is None
    assert kv_note(steps, ts, 100, 2).startswith("KV cache (100 blocks per engine x 2): simulated peak 40.0 %; "
                                                 "measured: not recorded")
    ts["kv_cache_pct"] = [12.5, 30.0]
    assert measured_kv_pct(ts).tolist() == [12.5, 30.0]
    assert kv_note(steps, ts, 100, 2).endswith("measured peak 30.0 % (timeseries kv_cache_pct).")
    assert len(plot_queue(steps, ts, 200).axes) == 3 and len(plot_queue(steps, ts).axes) == 2


def test_replay_report_is_deterministic_and_long_series_are_sampled(tmp_path):
    """``mist replay``'s report: the same files byte for byte, and a long step series
    drawn at MAX_PLOTTED_STEPS instants, each the value holding then."""
    from mist.validate.report import MAX_PLOTTED_STEPS, write_replay_report

    n = 3 * MAX_PLOTTED_STEPS
    steps = pd.DataFrame({"replica": 0, "start_s": np.arange(n) * 0.01, "num_running": np.arange(n) % 50,
                          "num_waiting": 0, "kv_blocks_used": np.arange(n) % 50})
    rng = np.random.default_rng(0)
    lat = pd.DataFrame({"ttft": rng.uniform(0.05, 2, 200), "tpot": rng.uniform(0.01, 0.03, 200),
                        "e2e": rng.uniform(1, 9, 200)})
    paths = [write_replay_report(tmp_path / d, lat, steps, 100, title="t", summary_md="s") for d in "ab"]
    for name in ("report.md", "latency.png", "queue.png"):
        assert (paths[0].parent / name).read_bytes() == (paths[1].parent / name).read_bytes(), name
    series = pd.Series(np.arange(n, dtype=float), index=np.arange(n) * 0.01)
    drawn = _for_plot(series)
    assert len(drawn) == MAX_PLOTTED_STEPS and drawn.iloc[0] == 0 and drawn.iloc[-1] == n - 1
    # each drawn value is the one holding at its instant (the last step started by then)
    assert np.all(drawn.to_numpy() == np.floor(np.round(drawn.index.to_numpy() / 0.01, 6)))


def _replicas_steps(n: int, seed: int) -> pd.DataFrame:
    """``n`` steps of three replicas in shuffled row order, on a coarse clock (steps of
    one replica and of different replicas share instants)."""
    rng = np.random.default_rng(seed)
    return pd.DataFrame({"replica": rng.integers(0, 3, n).astype(np.int32),
                         "start_s": rng.integers(0, max(n // 3, 2), n) * 0.25 + 1.5,
                         "num_running": rng.integers(0, 60, n), "num_waiting": rng.integers(0, 9, n),
                         "kv_blocks_used": rng.integers(0, 5000, n)})


def test_streamed_queue_series_are_the_drawn_ones(tmp_path, monkeypatch):
    """The queue plot reads a steps file a batch at a time and keeps only the drawn
    instants: the same instants and values as the whole-table pivot sampled by
    _for_plot, for few steps (every instant drawn) and many (sampled), from a
    DataFrame or a Parquet file read in batches that split equal instants."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from mist.validate import report
    from mist.validate.report import MAX_PLOTTED_STEPS, _plotted, _replica_total

    monkeypatch.setattr(report, "STEP_BATCH_ROWS", 1000)
    columns = ["num_running", "num_waiting", "kv_blocks_used"]
    for n in (900, 5 * MAX_PLOTTED_STEPS):
        steps = _replicas_steps(n, seed=n)
        path = tmp_path / f"steps-{n}.parquet"
        pq.write_table(pa.Table.from_pandas(steps, preserve_index=False), path)
        expected = {c: _for_plot(_replica_total(steps, c)) for c in columns}
        assert (len(expected["num_running"]) == MAX_PLOTTED_STEPS) == (n > MAX_PLOTTED_STEPS)
        for source in (steps, path):
            t, totals = _plotted(source, columns)
            for c in columns:
                assert np.array_equal(t, expected[c].index.to_numpy()), (n, c)
                assert np.array_equal(totals[c], expected[c].to_numpy()), (n, c)
        # the report drawn from the file is the one drawn from the table, byte for byte
        lat = pd.DataFrame({"ttft": [0.1, 0.2], "tpot": [0.01, 0.02], "e2e": [1.0, 2.0]})
        a = report.write_replay_report(tmp_path / f"a{n}", lat, steps, 3 * 5000, title="t", summary_md="s")
        b = report.write_replay_report(tmp_path / f"b{n}", lat, path, 3 * 5000, title="t", summary_md="s")
        for name in ("report.md", "latency.png", "queue.png"):
            assert (a.parent / name).read_bytes() == (b.parent / name).read_bytes(), (n, name)
