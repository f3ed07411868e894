"""Calibrate a new accelerator from K measured batches and predict its other batches.

Reads offline batch benchmarks (LLM-Inference-Bench ``All_results.csv``,
``TP_PP_Results.csv`` or ``all_results_TTFT_ITL.csv``) and treats accelerator NAME as
new: the other accelerators' rows and the datasheets (``profiles/hardware.yaml``, plus
any ``--hardware FILE`` of your own) give a
prior over a physical batch-latency model (prompt FLOPs and memory traffic under a
roofline, per-pass and per-sequence overheads, tensor-parallel all-reduces, KV-cache
capacity); K randomly drawn rows of NAME calibrate it; every other row of NAME is
predicted and its batch latency compared with the measurement. How far NAME may stray
from the other accelerators is itself chosen from its K rows: the prior's spread is
widened (x1 to x32) as far as the rows' evidence asks (``prior_scale`` in the JSON; 1 for
an accelerator like the others, more for one unlike any of them).

Exactly K rows of NAME are drawn in all, at random (seeded) within strata
(``--sampling stratified``, the default): every framework of NAME gets 2 rows when K
allows and the rest of K in proportion to its rows, drawn at random within the
framework. ``--sampling random`` draws K of all rows uniformly instead.  The frameworks are
calibrated together, sharing the accelerator's deviation from the prior.
``--sampling per-framework`` (or ``--points-per-framework``; opt-in, not the K-rows
contract) draws K rows of *each* framework and calibrates each alone.  The JSON's
``sampling``, ``strata`` (points by framework and one/multi-device) and ``points_used`` say what was
drawn and how many target rows were fitted on. Rows that cannot be modelled (no datasheet,
unknown model, more tokens than the model's context, a latency below the datasheet
bound) are counted by reason under "skipped", never guessed.

The JSON holds ``target, points, rows_predicted, mape, median_ape`` (percent), plus
``points_used``, ``sampling``, ``strata``, ``p90_ape``, ``skipped`` {reason: rows}, ``frameworks`` {name: points, rows_predicted,
mape, median_ape, p90_ape}, ``training``, ``prior_scale`` and the sampling settings. Same inputs and
seed give the same file.

Example::

    mist calibrate-accelerator \\
        --bench ../shared/data/benchmarks/llm-inference-bench/All_results.csv \\
        --target "Nvidia H100 GPU" --points 10 --seed 0 --json out/h100.json
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from mist.validate.cli.argtypes import positive_int, seed

#: mist.calibrate.sampling.SAMPLINGS, repeated so that ``mist --help`` imports no numpy
#: (tests/test_calibrate_accelerator.py checks the two agree)
SAMPLINGS = ("stratified", "random", "per-framework")

HELP = "calibrate a new accelerator from K benchmark rows and predict the rest"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--bench", required=True, type=Path, nargs="+", metavar="CSV",
                   help="LLM-Inference-Bench CSV file(s), read and concatenated")
    p.add_argument("--target", required=True, metavar="NAME",
                   help='accelerator to treat as new: a Hardware value ("Nvidia H100 GPU") or catalogue name/alias (h100_sxm)')
    p.add_argument("--points", required=True, type=positive_int, metavar="K",
                   help="calibration rows of NAME drawn at random, in all (see --points-per-framework)")
    p.add_argument("--seed", type=seed, default=0, help="seed of the draw (default 0)")
    p.add_argument("--json", required=True, type=Path, metavar="FILE", help="where to write the report")
    p.add_argument("--sampling", choices=SAMPLINGS, default="stratified",
                   help="how the K rows are drawn: stratified (default: random within each "
                        "framework, >= 2 rows per framework when K allows, the rest in "
                        "proportion), random (uniform over all rows), per-framework (opt-in: K rows of "
                        "each framework, more than K in all, each framework calibrated alone)")
    p.add_argument("--points-per-framework", action="store_const", dest="sampling",
                   const="per-framework", help="same as --sampling per-framework")
    p.add_argument("--models", type=Path, metavar="DIR",
                   help="folder of Hugging Face config.json files (<org>--<name>_config.json) for models the catalogue lacks")
    p.add_argument("--hardware", type=Path, action="append", default=[], metavar="FILE",
                   help="extra hardware catalog (YAML 'devices:' entries in the format of "
                        "profiles/hardware.yaml, each figure with its source) for an accelerator "
                        "the packaged catalog lacks or whose figures you know better; repeatable")
    p.add_argument("--rows", type=Path, metavar="FILE", help="also write the target's rows with predictions (CSV)")


def run(args: argparse.Namespace) -> int:
    from mist.calibrate.accelerator import AcceleratorSettings, calibrate_accelerator
    from mist.traces.io import atomic_write_json, staged_outputs

    start = time.perf_counter()
    settings = AcceleratorSettings(bench=tuple(args.bench), target=args.target, points=args.points,
                                   seed=args.seed, sampling=args.sampling, models_dir=args.models,
                                   hardware=tuple(args.hardware))
    result = calibrate_accelerator(settings)
    with staged_outputs() as outputs:  # both staged beside their targets, then renamed together
        atomic_write_json(outputs.path(args.json), result.report)
        if args.rows:
            outputs.file(args.rows, result.rows.to_csv(index=False).encode("utf-8"))
    print(result.summary(), end="")
    print(f"report: {args.json} ({time.perf_counter() - start:.1f} s)")
    return 0
