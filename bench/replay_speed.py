"""Replay speed: wall time per 300-request run, simulated seconds per wall second, and
the 19,366-request Azure conversation trace (Vidur's processed copy) through the
Llama-3.1-8B RTX PRO 6000 profile with that run's engine settings.

    python bench/replay_speed.py [--repeats 5]

Times only the replay (the event loop over the run's requests), after the profile
is fitted, with the best of ``--repeats`` runs reported (the machine is shared and
noisy). Also prints steps per wall second, the per-step cost, and the wall time of the
whole ``mist replay`` job on the Azure trace (:func:`mist.replay.run.replay_trace`:
reading the trace, fitting the profile, the replay, and writing its tables; one run).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from runs import RUNS, SHARED, replay_inputs  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    from mist.replay.run import simulate

    print(f"{'run':28s} {'requests':>8s} {'steps':>6s} {'wall s':>7s} {'sim s':>7s} {'sim s/wall s':>12s} {'us/step':>8s} {'prepare s':>9s}")
    for name in RUNS:
        t0 = time.perf_counter()
        requests, cfg, cost = replay_inputs(name)
        prep = time.perf_counter() - t0
        if name.endswith("Llama-3.1-8B"):
            cfg_llama, cost_llama = cfg, cost
        best = float("inf")
        for _ in range(args.repeats):
            sim, steps, wall = simulate(requests, cfg, cost)
            best = min(best, wall)
        span = max(sim.column("finished_s").to_pylist()) - min(sim.column("arrival_s").to_pylist())
        print(f"{name:28s} {sim.num_rows:8d} {steps.num_rows:6d} {best:7.3f} {span:7.1f} {span / best:12.0f} "
              f"{best / steps.num_rows * 1e6:8.1f} {prep:9.2f}")
    # the large replay-only case: a production arrival trace, no measured timings
    from mist.traces.formats import read_trace

    trace = read_trace(SHARED / "arrivals/vidur/splitwise_conv.csv").requests
    best = float("inf")
    for _ in range(max(1, args.repeats // 2)):
        sim, steps, wall = simulate(trace, cfg_llama, cost_llama, arrival="client")
        best = min(best, wall)
    span = max(sim.column("finished_s").to_pylist())
    print(f"{'azure-conv (Llama-3.1-8B)':28s} {sim.num_rows:8d} {steps.num_rows:6d} {best:7.3f} {span:7.1f} "
          f"{span / best:12.0f} {best / steps.num_rows * 1e6:8.1f} {'':>9s}")
    print(f"azure-conv: {sim.num_rows / best:.0f} simulated requests per wall second")
    # the whole job a user runs (imports aside): reading the trace, profile fitting, the
    # replay and writing its tables (the report's plots aside)
    from mist.replay.run import ReplaySettings, replay_trace
    from mist.traces.io import write_table

    run_dir, bundle, model, _ = RUNS["RTXPRO6000/Llama-3.1-8B"]
    settings = ReplaySettings(trace=SHARED / "arrivals/vidur/splitwise_conv.csv", profiles=SHARED / bundle,
                              model=SHARED / model, engine=SHARED / run_dir / "meta.json")
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        result = replay_trace(settings)
        write_table(result.requests, Path(tmp) / "simulated.requests.parquet")
        write_table(result.steps, Path(tmp) / "simulated.steps.parquet")
        print(f"azure-conv: the whole `mist replay` job took {time.perf_counter() - t0:.2f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
