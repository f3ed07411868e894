"""Pure-decode step time by batch: each shared run's throughput log against its replay.

    python bench/decode_steps.py

In the drain at the end of a run no prompt is processed, so a 1 s tick of the run's
``timeseries.csv`` with ``prompt_throughput`` 0 gives the real decode step:
(mean of this and the previous tick's ``running``) / ``gen_throughput``. The replay's
own decode steps come from the library behind `mist validate` (the ``steps`` table of
:func:`mist.validate.run.validate_run`, steps after the last prefill), averaged in bins of running requests. Prints one table per
run (ms); the figures quoted in docs/replay.md come from here.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))
from runs import RUNS, SHARED, validate_settings  # noqa: E402

from mist.validate.run import validate_run  # noqa: E402

BINS = (1, 2, 5, 9, 13, 20, 28, 36, 44, 52, 60, 70, 80, 90, 100, 110, 120, 128)


def measured_steps(run_dir: Path) -> pd.DataFrame:
    """Decode step (ms) per drain tick of the run's throughput log, with its mean batch."""
    ts = pd.read_csv(run_dir / "timeseries.csv")
    ts["batch"] = (ts["running"] + ts["running"].shift(1)) / 2
    drain = ts[(ts["prompt_throughput"] == 0) & (ts["batch"] >= 1) & (ts["gen_throughput"] > 0)]
    return pd.DataFrame({"batch": drain["batch"], "step_ms": 1e3 * drain["batch"] / drain["gen_throughput"]})


def replayed_steps(steps: pd.DataFrame) -> pd.DataFrame:
    """The replay's pure-decode steps after its last prefill: batch and duration (ms)."""
    last_prefill = steps.loc[steps["prefill_tokens"] > 0, "start_s"].max()
    tail = steps[(steps["prefill_tokens"] == 0) & (steps["start_s"] > last_prefill)]
    return pd.DataFrame({"batch": tail["num_decode_seqs"], "step_ms": 1e3 * tail["duration_s"]})


def table(measured: pd.DataFrame, replayed: pd.DataFrame) -> pd.DataFrame:
    edges = np.array(BINS, dtype=float)
    rows = []
    for lo, hi in zip(edges[:-1], edges[1:]):
        m = measured[(measured["batch"] >= lo) & (measured["batch"] < hi)]
        r = replayed[(replayed["batch"] >= lo) & (replayed["batch"] < hi)]
        if len(m) and len(r):
            rows.append({"running": f"{lo:.0f}-{hi - 1:.0f}", "ticks": len(m), "real_ms": m["step_ms"].mean(),
                         "replayed_ms": r["step_ms"].mean(),
                         "error_pct": 100 * (r["step_ms"].mean() / m["step_ms"].mean() - 1)})
    return pd.DataFrame(rows)


def main() -> int:
    if not SHARED.is_dir():
        print(f"shared data not found at {SHARED}", file=sys.stderr)
        return 2
    for name in RUNS:
        steps = validate_run(validate_settings(name)).steps.to_pandas()
        run_dir = SHARED / RUNS[name][0]
        print(f"\n{name}: pure-decode step, drain of the run (real) vs the replay")
        print(table(measured_steps(run_dir), replayed_steps(steps)).round(2).to_string(index=False))
    return 0


if __name__ == "__main__":
    sys.exit(main())
