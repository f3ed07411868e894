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
    from mist.validate.report import MAX_PLOTTED_STEPS, _for_plot, write_replay_report

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
