"""Replay every shared real vLLM run through `mist validate` and print its errors.

    python bench/fidelity.py              # print per-run errors (%)
    python bench/fidelity.py --update     # also rewrite bench/baselines.json

The numbers come from the library behind `mist validate` (:func:`mist.validate.run.validate_run`),
run in-process, on data we did not make (../shared/data); nothing here is typed in by hand.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from runs import RUNS, SHARED, validate_settings  # noqa: E402

from mist.validate.run import validate_run  # noqa: E402

BASELINES = Path(__file__).resolve().parent / "baselines.json"


def run_one(name: str) -> dict:
    """``mist validate --json``'s summary of run ``name``."""
    return validate_run(validate_settings(name)).summary()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--update", action="store_true", help="rewrite bench/baselines.json")
    args = parser.parse_args()
    if not SHARED.is_dir():
        print(f"shared data not found at {SHARED}", file=sys.stderr)
        return 2
    results = {}
    print(f"{'run':28s} {'metric':6s} {'MAPE%':>7s} {'P50err%':>8s} {'P90err%':>8s} {'P99err%':>8s} {'wall s':>7s}")
    for name in RUNS:
        summary = run_one(name)
        results[name] = summary["metrics"]
        for metric, m in sorted(summary["metrics"].items()):  # as in the key-sorted --json file
            print(f"{name:28s} {metric:6s} {m['mape']:7.2f} {m['p50_error']:+8.2f} {m['p90_error']:+8.2f} "
                  f"{m['p99_error']:+8.2f} {summary['replay_wall_s']:7.3f}")
    if args.update:
        from mist.validate.baseline import update

        update(BASELINES, results)
        print(f"wrote {BASELINES}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
