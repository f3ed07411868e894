"""Leave-one-accelerator-out on LLM-Inference-Bench: calibrate each accelerator from K rows.

    python bench/accelerators.py                          # K = 10 rows in all, seeds 0 1 2
    python bench/accelerators.py --seeds 0 1 2 3 4 --points 5
    python bench/accelerators.py --sampling random        # K of all rows, unstratified
    python bench/accelerators.py --sampling per-framework # K rows of each framework (opt-in)
    python bench/accelerators.py --only-framework vLLM    # target keeps only its vLLM rows

For every accelerator in ``All_results.csv`` and every seed it runs the job behind
``mist calibrate-accelerator`` (:func:`mist.calibrate.accelerator.calibrate_accelerator`,
in-process), and prints per accelerator the
rows predicted and the errors (%) over all frameworks and over vLLM rows alone: mean over
seeds of MAPE and of the median APE, the worst seed's median APE, and the prior scale each
seed's K rows chose (1: the target is like the training accelerators). Nothing is typed in.

``--only-framework vLLM`` simulates an accelerator measured with one framework only (say
AMD MI300X with vLLM rows and nothing else): before each run, the target's rows of other
frameworks are dropped from a copy of the CSV (other accelerators keep all theirs), so
all K points and every prediction come from the target's vLLM rows.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from mist.calibrate.accelerator import AcceleratorSettings, calibrate_accelerator
from mist.calibrate.sampling import SAMPLINGS
from mist.traces.readers.llm_inference_bench import read_llm_inference_bench

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT.parent / "shared" / "data" / "benchmarks" / "llm-inference-bench" / "All_results.csv"


def only_framework(csv: Path, target: str, framework: str, folder: Path) -> Path:
    """A copy of ``csv`` without the rows of ``target`` run by frameworks other than ``framework``."""
    import pandas as pd

    raw = pd.read_csv(csv)
    other = (raw["Hardware"] == target) & (raw["Framework"].str.casefold() != framework.casefold())
    out = folder / csv.name
    raw[~other].to_csv(out, index=False)
    return out


def run_one(csv: Path, target: str, k: int, seed: int, sampling: str) -> tuple[dict, float]:
    """The report of one calibration and its wall time (s)."""
    start = time.perf_counter()
    result = calibrate_accelerator(AcceleratorSettings(bench=(csv,), target=target, points=k, seed=seed,
                                                       sampling=sampling))
    return result.report, time.perf_counter() - start


def _mean(values) -> str:
    values = [v for v in values if v is not None]
    return f"{np.mean(values):.1f}" if values else "–"


def _worst(values) -> str:
    values = [v for v in values if v is not None]
    return f"{max(values):.1f}" if values else "–"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bench", type=Path, default=BENCH, help="All_results.csv")
    parser.add_argument("--points", type=int, default=10)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--sampling", default="stratified", choices=SAMPLINGS)
    parser.add_argument("--only-framework", metavar="FW",
                        help="drop the target's rows of other frameworks (an accelerator measured with FW only)")
    args = parser.parse_args()
    if not args.bench.is_file():
        print(f"benchmark table not found at {args.bench}", file=sys.stderr)
        return 2
    bench = read_llm_inference_bench(args.bench)
    raw_hw = np.array(bench.column("hardware").to_pylist())
    raw_fw = np.array([f.casefold() for f in bench.column("framework").to_pylist()])
    targets = sorted(set(raw_hw))
    mode = "K rows per framework" if args.sampling == "per-framework" else f"K rows in all, {args.sampling}"
    if args.only_framework:
        mode += f"; target keeps only its {args.only_framework} rows"
    print(f"K = {args.points} ({mode}), seeds {' '.join(map(str, args.seeds))}; errors in %: "
          "mean over seeds, and the worst seed's median APE; the prior scale each seed chose\n")
    print("| accelerator | frameworks | points used | rows predicted | MAPE | median APE | worst median "
          "| vLLM rows | vLLM MAPE | vLLM median APE | vLLM worst median | prior scales | s/run |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for target in targets:
        with tempfile.TemporaryDirectory() as tmp:
            csv = args.bench
            if args.only_framework:
                if not (raw_fw[raw_hw == target] == args.only_framework.casefold()).any():
                    continue
                csv = only_framework(args.bench, target, args.only_framework, Path(tmp))
            reports, walls = zip(*(run_one(csv, target, args.points, s, args.sampling) for s in args.seeds))
        vllm = [r["frameworks"].get("vLLM") for r in reports]
        has_vllm = all(v is not None for v in vllm)
        v = vllm if has_vllm else [{}] * len(reports)
        fws = ", ".join(reports[0]["frameworks"])
        print(f"| {target} | {fws} | {reports[0]['points_used']} | {reports[0]['rows_predicted']} "
              f"| {_mean(r['mape'] for r in reports)} | {_mean(r['median_ape'] for r in reports)} "
              f"| {_worst(r['median_ape'] for r in reports)} "
              f"| {v[0].get('rows_predicted', '–')} | {_mean(x.get('mape') for x in v)} "
              f"| {_mean(x.get('median_ape') for x in v)} | {_worst(x.get('median_ape') for x in v)} "
              f"| {' '.join(format(r.get('prior_scale', 1), 'g') for r in reports)} "
              f"| {np.mean(walls):.1f} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
