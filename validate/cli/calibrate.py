"""Calibrate per-operator latency models from a layer-profile bundle.

Reads BUNDLE_DIR (``meta.yaml``, ``tp<N>/*.csv``), fits one latency model per
operator at each tensor-parallel degree (every degree in the bundle, or those given
with ``--tp``), cross-validates each with k-fold CV and writes the artifact to DIR:

``grids.parquet``  the fitted grids (load with ``mist.calibrate.calibration.load_artifact``)
``report.json``    per-operator CV errors, measured ranges and point counts, bundle summary,
                   and per tp how well the KV-skew corrections reproduce ``skew.csv``
                   (``skew``: the mean KV alone, one alpha, per-bucket alphas; in-sample)
``report.md``      the same as Markdown tables, one per tp
``cv.png``         bar chart of per-operator CV MAPE per tp

Everything is computed before anything is written; the same inputs give
byte-identical files.

Example::

    mist calibrate \\
        --profiles ../shared/data/profiles/llmservingsim/RTXPRO6000/meta-llama/Llama-3.1-8B/bf16 \\
        --out out/calib-llama
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from mist.validate.cli.argtypes import seed

HELP = "fit and cross-validate per-operator latency models from a profile bundle"


def _folds(text: str) -> int:
    k = int(text)
    if k < 2:
        raise argparse.ArgumentTypeError(f"need at least 2 folds, got {k}")
    return k


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--profiles", required=True, type=Path, help="layer-profile bundle root (holds meta.yaml, tp<N>/)")
    p.add_argument("--out", required=True, type=Path, help="artifact folder (grids.parquet, report.json, report.md, cv.png)")
    p.add_argument("--tp", type=int, nargs="+", help="tensor-parallel degrees to fit (default: all in the bundle)")
    p.add_argument("--folds", type=_folds, default=5, help="cross-validation folds (default 5)")
    p.add_argument("--seed", type=seed, default=0, help="seed of the fold shuffle (default 0)")


def run(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from mist.calibrate.bundle_job import CalibrateSettings, calibrate_profiles, write_calibration
    from mist.traces.io import write_staged

    def progress(tasks: list):
        return tqdm(tasks, desc="calibrate", unit="op", disable=not sys.stderr.isatty())

    settings = CalibrateSettings(profiles=args.profiles, tps=None if args.tp is None else tuple(args.tp),
                                 folds=args.folds, seed=args.seed)
    result = calibrate_profiles(settings, progress=progress)
    write_staged(args.out, lambda folder: write_calibration(result, folder))  # an earlier --out replaced whole
    print(result.markdown(), end="")
    print(f"artifact: {args.out}")
    for tp, missing in result.missing_required().items():
        print(f"mist calibrate: warning: tp={tp} lacks operator(s) {', '.join(missing)} "
              "that a dense decoder needs; `mist replay` and `mist validate` will refuse this bundle",
              file=sys.stderr)
    return 0
