"""Predict measured deployments of one system from its kernel database.

Reads a silicon CSV (measured TTFT/TPOT of real deployments at fixed concurrency),
keeps the rows of ``--system`` and ``--backend``, and predicts each from the
system's kernel measurements (``--kernels``: one aiconfigurator system folder):
GEMMs, attention and all-reduces are composed into the model's engine steps per
tensor-parallel rank, the KV cache is sized from the datasheet, and a closed loop
of ``batch_size`` users runs through the simulated vLLM scheduler. Rows whose
model config is not in ``--models`` (``<org>--<name>_config.json``) or that the
composition cannot model (MLA, attention data parallelism, MoE sharded other than
over the TP ranks, disaggregated, pipeline parallel, a GEMM dtype the database
lacks) are skipped with a reason, never guessed. Each row reads the kernel tables
measured nearest its own engine version (``backend_version``); rows that name none
read those nearest the rows' most common version.

Writes JSON ``{"rows": {"total", "predicted", "skipped": {reason: count}},
"ttft": E, "tpot": E, ...}`` with ``E = {"mape", "median_ape", "p90_ape", "bias"}``
in percent, plus where the kernel latencies came from (measured, filled holes,
extrapolated, roofline) and the kernels' cross-validated errors.

Example::

    mist silicon --silicon ../shared/data/silicon/aiconfigurator_silicon_sample.csv \\
        --kernels ../shared/data/profiles/aiconfigurator/h100_sxm \\
        --models ../shared/data/models --system h100_sxm --json out/h100.json --out out/h100
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from traces.errors import TraceError
from traces.io import atomic_write_json

HELP = "predict measured deployments (silicon CSV) from a system's kernel database"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--silicon", required=True, type=Path, help="silicon CSV of measured deployments")
    p.add_argument("--kernels", required=True, type=Path,
                   help="one system's kernel-database folder (e.g. .../aiconfigurator/h100_sxm)")
    p.add_argument("--models", required=True, type=Path,
                   help="folder of Hugging Face configs named <org>--<name>_config.json")
    p.add_argument("--system", required=True, help="system name in the CSV's 'system' column (e.g. h100_sxm)")
    p.add_argument("--backend", default="vllm", help="serving engine rows to predict (default: vllm)")
    p.add_argument("--json", type=Path, help="write the error summary here")
    p.add_argument("--out", type=Path, help="folder for per-row predictions (CSV) and a scatter plot")
    p.add_argument("--arrivals", choices=("staggered", "burst"), default="staggered",
                   help="closed-loop start: users spread over one request lifetime (steady state, "
                        "default) or all at t=0")
    p.add_argument("--requests-per-user", type=int, default=4,
                   help="requests each simulated user sends (default 4; the first wave and the "
                        "cool-down are excluded from the means)")
    p.add_argument("--include-warmup", action="store_true",
                   help="average over every request, warm-up wave included (for benchmarks that "
                        "report whole-run means, e.g. --requests-per-user 10 for a 10 x concurrency run)")


def _datasheet(kernels: Path, system: str):
    from calibrate.kernels import Datasheet
    from profiles.hardware import get_hardware
    from traces.readers.aiconfigurator import read_system_yaml

    sheet = read_system_yaml(kernels)
    if sheet is not None:
        return Datasheet.from_aiconfigurator(system, sheet), f"{kernels.name}.yaml beside the kernels"
    try:
        hw = get_hardware(system)
    except KeyError:
        raise TraceError(kernels, f"no datasheet: neither {kernels.name}.yaml beside the folder "
                                  f"nor a catalogued device named {system!r}") from None
    flops = {("bfloat16" if k == "bf16" else k): v for k, v in hw.peak_flops.items()}
    return Datasheet(name=system, mem_bw_bytes_s=hw.memory_bw_bytes_s, peak_flops=flops,
                     link_bw_bytes_s=hw.interconnect_bw_bytes_s or 64e9,
                     memory_bytes=hw.memory_bytes), f"hardware catalog: {hw.name}"


def _plot(df, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4.5))
    for ax, metric in zip(axes, ("ttft", "tpot")):
        x, y = df[f"{metric}_ms"], df[f"pred_{metric}_ms"]
        ax.loglog(x, y, "o", ms=4, alpha=0.7)
        lo, hi = min(x.min(), y.min()), max(x.max(), y.max())
        ax.plot([lo, hi], [lo, hi], "k--", lw=1)
        ax.set_xlabel(f"measured {metric.upper()} (ms)")
        ax.set_ylabel(f"predicted {metric.upper()} (ms)")
        ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def run(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from calibrate.kernels import cross_validate_kernels
    from replay.silicon import KernelVersions, predict_silicon
    from traces.readers.aiconfigurator import read_kernel_db
    from traces.readers.silicon import read_silicon

    if args.requests_per_user < 1:
        raise TraceError(args.silicon, "--requests-per-user must be at least 1")
    if not args.models.is_dir():
        raise TraceError(args.models, "models folder not found")
    rows = read_silicon(args.silicon)
    rows = rows[(rows["system"] == args.system) & (rows["backend"] == args.backend)]
    if not len(rows):
        raise TraceError(args.silicon, f"no rows for system {args.system!r} and backend {args.backend!r}")
    versions = rows.get("backend_version")
    version = None
    if versions is not None and (versions != "").any():
        version = versions[versions != ""].mode().iloc[0]
    sheet, sheet_source = _datasheet(args.kernels, args.system)
    kernels = KernelVersions(args.kernels, sheet, hardware=args.system, framework=args.backend, default=version)
    profile = read_kernel_db(args.kernels, version=version, hardware=args.system, framework=args.backend)
    df, summary = predict_silicon(rows, kernels, args.models, args.requests_per_user,
                                  progress=lambda it, total: tqdm(it, total=total, desc="rows", file=sys.stderr,
                                                                  disable=None),
                                  arrivals=args.arrivals, exclude_warmup=not args.include_warmup)
    cv = cross_validate_kernels(profile)
    summary["kernel_sources"] = kernels.tally()
    summary["kernel_cv"] = {f"{r.kernel}/{r.variant}": {"mape": round(r.mape, 2), "median_ape": round(r.median_ape, 2),
                                                        "held_out": int(r.held_out)} for r in cv.itertuples()}
    summary["settings"] = {"system": args.system, "backend": args.backend, "kernel_version_preferred": version,
                           "kernel_tables": "nearest each row's backend_version (rows without one: "
                                            "kernel_version_preferred); kernel_cv on the latter",
                           "datasheet": sheet_source, "arrivals": args.arrivals,
                           "requests_per_user": args.requests_per_user,
                           "warmup_excluded": not args.include_warmup}
    r = summary["rows"]
    print(f"{args.system}/{args.backend}: {r['predicted']} of {r['total']} rows predicted; skipped: {r['skipped'] or 'none'}")
    for metric in ("ttft", "tpot"):
        e = summary[metric]
        if e["mape"] is not None:
            print(f"  {metric}: MAPE {e['mape']:.1f} %, median APE {e['median_ape']:.1f} %, "
                  f"P90 APE {e['p90_ape']:.1f} %, bias {e['bias']:+.1f} %")
    print("  kernel latencies by source: " + "; ".join(
        f"{fam} " + ", ".join(f"{s} {c}" for s, c in srcs.items()) for fam, srcs in summary["kernel_sources"].items()))
    if args.json:
        atomic_write_json(args.json, summary)
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        tmp = args.out / ".predictions.csv.tmp"
        df.to_csv(tmp, index=False)
        tmp.replace(args.out / "predictions.csv")
        ok = df[df["pred_ttft_ms"].notna()]
        if len(ok):
            _plot(ok, args.out / "scatter.png")
        cv.round(3).to_csv(args.out / "kernel_cv.csv", index=False)
        print(f"wrote {args.out}/predictions.csv, scatter.png, kernel_cv.csv")
    return 0
