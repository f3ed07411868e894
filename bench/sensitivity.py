"""How far the replay moves itself: the error floor a per-request comparison can reach.

    python bench/sensitivity.py

For every shared real run, replays it as `mist validate` does (these GPU runs carry no
speed probe, so there is no drift correction to apply), then again with every
step's modelled duration changed by a small factor (0.1 % and 1 %, both ways), and
prints the per-request MAPE (%) of each perturbed replay against the unperturbed one,
beside the unperturbed replay's error against the measured run.

A 0.1 % change is far below what any profile can claim, yet it moves the step
boundaries, so every later arrival meets its step at another phase, and where requests
queue it reorders who is admitted when. The MAPE it causes is therefore a floor: a model
whose step costs are right to 0.1 % still lands about that far from a replay with
exactly right costs, and so, by the same mechanism, from the real engine. The 1 % rows
show how strongly a systematic step-cost error of that size shows through. Nothing here
is fitted; the comparison is replay against replay.
"""

from __future__ import annotations

import sys
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from runs import RUNS, SHARED, replay_inputs  # noqa: E402

#: factors applied to every step's modelled duration
FACTORS = (0.999, 1.001, 0.99, 1.01)


def replays(name: str) -> tuple[dict, dict]:
    """(error of the replay against the run, {factor: error of the perturbed replay
    against the replay}), each ``{metric: MAPE %}``."""
    from mist.replay.run import simulate
    from mist.validate.align import align
    from mist.validate.metrics import summarize

    def mape(reference, sim) -> dict:
        return {m: v["mape"] for m, v in summarize(align(reference, sim)).items()}

    requests, cfg, cost = replay_inputs(name)
    base = simulate(requests, cfg, cost)[0].to_pandas()
    moved = {f: mape(base, simulate(requests, cfg, replace(cost, scale=cost.scale * f))[0].to_pandas())
             for f in FACTORS}
    return mape(requests.to_pandas(), base), moved


def main() -> int:
    if not SHARED.is_dir():
        print(f"shared data not found at {SHARED}", file=sys.stderr)
        return 2
    print(f"{'run':28s} {'comparison':34s} {'TTFT %':>7s} {'TPOT %':>7s} {'E2E %':>7s}")
    for name in RUNS:
        real, moved = replays(name)
        print(f"{name:28s} {'replay vs measured':34s} {real['ttft']:7.2f} {real['tpot']:7.2f} {real['e2e']:7.2f}")
        for f, m in moved.items():
            label = f"steps x{f:g} vs replay"
            print(f"{name:28s} {label:34s} {m['ttft']:7.2f} {m['tpot']:7.2f} {m['e2e']:7.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
