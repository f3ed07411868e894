"""Replay at scale: peak memory and wall time of the whole `mist replay` job as the
trace grows (issue 25, "bounded memory at any trace length").

    python bench/scale.py [--requests 19366 100000] [--million] [--no-report]

The trace is the Azure conversation trace (Vidur's processed copy,
``arrivals/vidur/splitwise_conv.csv``, 19,366 requests) repeated back to back into a
temporary ``vidur-csv`` file: copy ``k`` is shifted by ``k`` times one copy's span
(its last arrival plus its mean inter-arrival gap, so copies neither overlap nor share
an instant), and the rows are cut after ``--requests`` of them. The reader numbers the
rows, so request ids are unique across copies. Each size is replayed through the
Llama-3.1-8B RTX PRO 6000 profile with that run's engine settings (one replica), in a
child process of its own (multiprocessing, ``spawn``) that does what the command does,
in-process: :func:`mist.validate.cli.replay.write_replay` (the function `mist replay`
calls) in a staging folder (:func:`mist.traces.io.write_staged`) writes the streamed
steps, the requests table, ``summary.json`` and the report with its plots (with
``--no-report``: :func:`mist.replay.run.replay_trace` and the tables alone). The peak
resident set size (``getrusage(RUSAGE_CHILDREN).ru_maxrss``, read after each child
ends; children run one at a time and the largest so far is the figure, so sizes go in
increasing order) is that job's alone. Prints requests, steps, wall seconds (the whole
job in the child: reading, fitting, replay, writing) and peak RSS (MB, 2**20 bytes).

Measured on this machine (2 CPUs, shared: wall times vary with the load):

=========  =========  ========================  ======================  =====================  =====================
requests   steps      before (all in memory)    steps streamed,         the whole command      faster replay, leaner
                                                report aside            (report included)      steps buffer and CDFs
=========  =========  ========================  ======================  =====================  =====================
19,366     188,722    7.3 s, 356 MB             355 MB                  355 MB                 315 MB
100,000    980,066    41.9 s, 822 MB            489 MB                  487 MB                 22.9 s, 435 MB
1,000,000  9,726,910  1177 s (loaded), 6111 MB  568 s (loaded), 849 MB  299 s, 1097 MB         212 s, 687 MB
=========  =========  ========================  ======================  =====================  =====================

(the streamed job's wall times were taken at a load average of 8 on 2 CPUs, the whole
command's at 1 (1,000,000) and 2 (the others); the CPU time per replay is the same as
before.) The report's queue plot reads the steps file a batch at a time and keeps only
the 4,000 instants it draws: it adds nothing measurable. matplotlib is loaded after the
replay. At 1,000,000 requests the replay peaked at 888 MB (RSS sampled by phase) and the
peak of the whole command was the latency CDFs (``latency.png``: three step lines of
1,000,000 points, drawn and rendered), 1048 MB in that run. The last column: the
latency CDFs are drawn from 10,000 evenly spaced ranks when a line has over 20,000
points (:mod:`mist.validate.cdf`), the steps of a row group are buffered as columns
and put together one column at a time, the requests' source columns stay Arrow, and
the replay is faster (KV blocks taken and freed a slice at a time, decode-only step
costs read from per-batch-size terms, a decode fast path in the scheduler): the replay
alone took 0.64 x the time of the previous code on the 19,366-request trace (three
runs of each, alternated, at a load average of 12 on 2 CPUs, which also makes that
column's wall times meaningless, 277 s for 100,000 requests: the 1,000,000 run was
stopped unfinished).
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from runs import RUNS, SHARED  # noqa: E402

TRACE = SHARED / "arrivals/vidur/splitwise_conv.csv"
RUN = "RTXPRO6000/Llama-3.1-8B"


def repeated_trace(n: int, out: Path, source: Path = TRACE) -> Path:
    """Write the first ``n`` rows of ``source`` repeated back to back to ``out`` (vidur-csv)."""
    import pandas as pd

    df = pd.read_csv(source)
    t = df["arrived_at"].to_numpy(float)
    span = t[-1] - t[0] + float(np.diff(t).mean())
    copies = -(-n // len(df))
    shifts = np.repeat(np.arange(copies) * span, len(df))[:n]
    big = pd.concat([df] * copies, ignore_index=True).iloc[:n].copy()
    big["arrived_at"] = big["arrived_at"].to_numpy(float) + shifts
    big.to_csv(out, index=False, float_format="%.6f")
    return out


def _job(trace: Path, out: Path, queue, report: bool) -> None:
    """The child: the whole `mist replay` job (with ``report``) as the command runs it,
    through :func:`mist.validate.cli.replay.write_replay` in a staging folder renamed to
    ``out``: the replay with its steps streamed, the requests table, summary.json and
    the report with its plots; without ``report``, the replay and its tables alone."""
    from mist.replay.run import ReplaySettings, replay_trace
    from mist.traces.io import atomic_write_json, write_staged, write_table
    from mist.validate.cli.replay import write_replay

    run_dir, bundle, model, _ = RUNS[RUN]
    settings = ReplaySettings(trace=trace, profiles=SHARED / bundle, model=SHARED / model,
                              engine=SHARED / run_dir / "meta.json")
    t0 = time.perf_counter()
    if report:
        done = []
        write_staged(out, lambda folder: done.append(write_replay(settings, folder, f"mist replay: {trace.name}"))
                     or done[0][1])
        result = done[0][0]
    else:
        out.mkdir()
        result = replay_trace(settings, out=out)  # (steps streamed)
        write_table(result.requests, out / "simulated.requests.parquet")
        atomic_write_json(out / "summary.json", result.summary())
    summary = result.summary()
    queue.put((summary["requests"], summary["steps"], time.perf_counter() - t0, result.wall_s))


def measure(n: int, tmp: Path, report: bool = True) -> tuple[int, int, float, float, float]:
    """``(requests, steps, job wall s, replay wall s, peak RSS MB)`` of replaying ``n``
    requests (the whole `mist replay` job, or without ``report`` the replay and tables)."""
    trace = repeated_trace(n, tmp / f"conv-{n}.csv")
    out = tmp / f"out-{n}"
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=_job, args=(trace, out, queue, report))
    proc.start()
    got = queue.get()
    proc.join()
    if proc.exitcode:
        raise SystemExit(f"the replay of {n} requests failed (exit code {proc.exitcode})")
    peak_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024  # (Linux: KiB)
    trace.unlink()
    return (*got, peak_mb)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, nargs="+", default=[19366, 100000],
                        help="trace sizes to replay (default: 19366 100000)")
    parser.add_argument("--million", action="store_true", help="also replay 1,000,000 requests (minutes)")
    parser.add_argument("--no-report", dest="report", action="store_false",
                        help="measure the replay and its tables alone, not the report")
    args = parser.parse_args()
    sizes = sorted(set(args.requests) | ({1_000_000} if args.million else set()))
    print(f"{'requests':>9s} {'steps':>9s} {'job wall s':>10s} {'replay s':>9s} {'peak RSS MB':>11s}", flush=True)
    with tempfile.TemporaryDirectory(prefix="mist-scale-") as tmp:
        for n in sizes:
            reqs, steps, wall, replay_s, peak = measure(n, Path(tmp), args.report)
            print(f"{reqs:9d} {steps:9d} {wall:10.1f} {replay_s:9.1f} {peak:11.0f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
