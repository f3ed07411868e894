"""Replay speed: wall time per 300-request run and simulated seconds per wall second.

    python bench/replay_speed.py [--repeats 5]

Times only the replay (the event loop over the run's requests), after the profile
is fitted, with the best of ``--repeats`` runs reported (the machine is shared and
noisy). Also prints steps per wall second and the per-step cost.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from runs import RUNS, SHARED  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    from profiles.bundle import read_bundle
    from profiles.hardware import get_hardware
    from profiles.model import load_model_config
    from replay.run import prepare, simulate
    from traces.readers.vllm_run import attach_workload, read_vllm_run

    print(f"{'run':28s} {'requests':>8s} {'steps':>6s} {'wall s':>7s} {'sim s':>7s} {'sim s/wall s':>12s} {'us/step':>8s} {'prepare s':>9s}")
    for name, (run, bundle, model, workload) in RUNS.items():
        t0 = time.perf_counter()
        measured = read_vllm_run(SHARED / run)
        requests = attach_workload(measured.requests, SHARED / workload)
        b = read_bundle(SHARED / bundle)
        cfg, cost, _ = prepare(measured.meta, b, load_model_config(SHARED / model), get_hardware(b.hardware))
        prep = time.perf_counter() - t0
        best = float("inf")
        for _ in range(args.repeats):
            sim, steps, wall = simulate(requests, cfg, cost)
            best = min(best, wall)
        span = max(sim.column("finished_s").to_pylist()) - min(sim.column("arrival_s").to_pylist())
        print(f"{name:28s} {sim.num_rows:8d} {steps.num_rows:6d} {best:7.3f} {span:7.1f} {span / best:12.0f} "
              f"{best / steps.num_rows * 1e6:8.1f} {prep:9.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
