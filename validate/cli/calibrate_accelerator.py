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

SAMPLINGS = ("stratified", "random", "per-framework")  # calibrate.accelerator.SAMPLINGS
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


def _pct(x) -> str:
    return "–" if x is None else f"{x:.2f}"


def summary(report: dict) -> str:
    """Markdown table: one line per framework and the total."""
    lines = [f"# mist calibrate-accelerator: {report['target']} ({report['sampling']}, "
             f"K={report['points']}, seed {report['seed']})", "",
             "| framework | points | rows predicted | MAPE % | median APE % | P90 APE % |",
             "|---|---:|---:|---:|---:|---:|"]
    for fw, e in report["frameworks"].items():
        lines.append(f"| {fw} | {e['points']} | {e['rows_predicted']} | {_pct(e['mape'])} | "
                     f"{_pct(e['median_ape'])} | {_pct(e['p90_ape'])} |")
    lines.append(f"| **all** | {report['points_used']} | {report['rows_predicted']} | "
                 f"{_pct(report['mape'])} | {_pct(report['median_ape'])} | {_pct(report['p90_ape'])} |")
    lines.append("")
    for reason, n in report["skipped"].items():
        lines.append(f"skipped {n} row(s): {reason}")
    t = report["training"]
    lines.append(f"prior from {t['rows']} rows of {len(t['accelerators'])} other accelerator(s), "
                 f"{t['groups']} accelerator x framework group(s)"
                 + (f"; its spread x{report['prior_scale']:g}, as the calibration rows' evidence chose"
                    if report.get("prior_scale") is not None else ""))
    return "\n".join(lines) + "\n"


def run(args: argparse.Namespace) -> int:
    import pandas as pd

    from mist.calibrate.accelerator import NoDatasheet, leave_one_accelerator_out
    from mist.profiles.hardware import load_catalog
    from mist.traces.errors import TraceError
    from mist.traces.io import atomic_write_json, atomic_write_text
    from mist.traces.readers.llm_inference_bench import read_llm_inference_bench

    start = time.perf_counter()
    seen: dict = {}
    for path in args.bench:
        key = path.resolve()
        if key in seen:
            raise TraceError(path, f"given twice in --bench (as {seen[key]}): its rows would be both "
                                   "calibration points and predictions")
        seen[key] = path
    if args.models is not None and not args.models.is_dir():
        raise TraceError(args.models, "--models folder not found")
    table = pd.concat([read_llm_inference_bench(p).to_pandas() for p in args.bench],
                      ignore_index=True)
    catalog = load_catalog(extra=args.hardware)
    try:
        report, rows = leave_one_accelerator_out(table, args.target, args.points, args.seed,
                                                 sampling=args.sampling, catalog=catalog,
                                                 configs_dir=args.models)
    except NoDatasheet as exc:
        raise TraceError(args.bench[0], f"{exc}; give its datasheet figures with --hardware FILE "
                                        "(format: profiles/hardware.yaml)") from exc
    except ValueError as exc:
        raise TraceError(args.bench[0], str(exc)) from exc
    if not report["rows_predicted"]:
        why = "; ".join(f"{n} {reason}" for reason, n in report["skipped"].items())
        raise TraceError(args.bench[0], f"no row of {args.target!r} left to predict with --points "
                                        f"{args.points} (skipped: {why})")
    report["bench"] = [str(p) for p in args.bench]
    rows_csv = rows.to_csv(index=False) if args.rows else None
    atomic_write_json(args.json, report)
    if rows_csv is not None:
        atomic_write_text(args.rows, rows_csv)
    print(summary(report), end="")
    print(f"report: {args.json} ({time.perf_counter() - start:.1f} s)")
    return 0
