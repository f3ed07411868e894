"""Predict measured deployments of one system from its kernel database.

Reads a silicon CSV (measured TTFT/TPOT of real deployments at fixed concurrency),
keeps the rows of ``--system`` and ``--backend``, and predicts each from the
system's kernel measurements (``--kernels``: one aiconfigurator system folder):
GEMMs, attention and all-reduces are composed into the model's engine steps per
tensor-parallel rank, the KV cache is sized from the datasheet, and a closed loop
of ``batch_size`` users runs through the simulated vLLM scheduler (a vLLM row with
attention data parallelism over D ranks: ``batch_size`` users per rank, D x
``batch_size`` in all, as the TP + EP deployment those rows measure like). Rows whose
model config is not in ``--models`` (``<org>--<name>_config.json``) or that the
composition cannot model (MLA, other engines' attention data parallelism, MoE sharded
other than over the TP ranks, disaggregated, pipeline parallel, a GEMM dtype the
database lacks) are skipped with a reason, never guessed. Each row reads the kernel tables
measured nearest its own engine version (``backend_version``); rows that name none
read the newest (as aiconfigurator itself does when no version is given).

A row's TTFT and TPOT are taken to be a fixed-concurrency benchmark's whole-run
means (``--arrivals benchmark``): its first wave of requests sent at once, then a
new request whenever one ends, 10 x concurrency requests in all
(``--requests-per-user``). ``--arrivals staggered`` predicts the steady state alone.
``--arrivals client`` simulates the benchmark client as it runs instead: the request
list behind a semaphore of ``batch_size`` slots, every request counted, each
request's lengths drawn from ``[r x ISL, ISL]`` and ``[r x OSL, OSL]``
(``--length-ratio r``, ``--seed``), as the random dataset of vLLM's legacy
``benchmarks/benchmark_serving.py --random-range-ratio`` draws them (and InferenceX's
fork of it, run with r = 0.8; today's ``vllm bench serve`` draws ``[L(1-r), L(1+r)]``
instead); with fixed lengths (r = 1) identical requests stay in lock-step.

The rows do not record the engine's launch flags: its token budget per step and cap
on running sequences are vLLM's defaults for the GPU unless given
(``--max-num-batched-tokens``, ``--max-num-seqs``; the JSON's ``settings`` say which).

Kernel databases do not time the rest of an engine step (sampling, host-side input
and output handling, launch gaps). The step overhead shipped in
``profiles/silicon_step_overhead.yaml`` adds it (``--step-overhead FILE`` for
another, ``--no-step-overhead`` for none). It was fitted by this command on one
collection of rows and validated on the others:
``--fit-step-overhead OUT --fit-model ORG/NAME`` predicts every row without an
overhead, fits ``per_step + per_sequence x sequences`` to the TPOT of that model's
rows, writes it to OUT and reports every row predicted with it.

MoE layers: a kernel database has no MoE kernel, and a dense GEMM over all
token-expert pairs is far faster than vLLM's fused-MoE kernel at prefill sizes. The
fused-MoE rate shipped in ``profiles/fused_moe_efficiency.yaml`` (share of the
datasheet peak per compute dtype, fitted for H100; it applies to h100_sxm and to
devices of the same compute capability, e.g. H200) corrects that.
``--fit-moe-efficiency OUT --moe-measurements FILE`` fits it on published kernel times
(no silicon row is used), writes OUT and predicts with it; ``--moe-efficiency FILE``
and ``--no-moe-efficiency`` choose another or none.

Writes JSON ``{"rows": {"total", "predicted", "skipped": {reason: count}},
"ttft": E, "tpot": E, ...}`` with ``E = {"mape", "median_ape", "p90_ape", "bias"}``
in percent, plus the same per model (``by_model``), where the kernel latencies came
from (measured, filled holes, extrapolated, roofline), the kernels' cross-validated
errors, the step overhead and, for benchmark means, ``ttft_protocol_range``: where
the measured TTFTs sit between the prediction with de-synchronised clients (0) and
with clients kept in lock-step after the first wave (1) — the benchmark's client
jitter, which the rows do not record, decides between them.

Example::

    mist silicon --silicon ../shared/data/silicon/aiconfigurator_silicon_sample.csv \\
        --kernels ../shared/data/profiles/aiconfigurator/h100_sxm \\
        --models ../shared/data/models --system h100_sxm --json out/h100.json --out out/h100
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from mist.traces.errors import ReplayError, TraceError
from mist.traces.io import atomic_write_json
from mist.validate.cli.argtypes import positive_int, ratio, seed

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
    p.add_argument("--arrivals", choices=("benchmark", "staggered", "burst", "client"), default="benchmark",
                   help="what the rows' means are: a benchmark's whole-run mean, first wave sent at "
                        "once (default); the de-synchronised steady state alone (staggered); a "
                        "loop kept in lock-step from an all-at-once start (burst); or the benchmark "
                        "client simulated as it runs, request lengths drawn per --length-ratio (client)")
    p.add_argument("--requests-per-user", type=int, default=None,
                   help="benchmark/client: its request count over its concurrency (default 10); "
                        "staggered/burst: requests each simulated user sends (default 4)")
    p.add_argument("--length-ratio", type=ratio, default=None,
                   help="client: each request's prompt and output lengths are drawn uniformly from "
                        "[ratio x ISL, ISL] and [ratio x OSL, OSL], as vLLM's legacy benchmark_serving.py "
                        "--random-range-ratio does (InferenceX's fork runs 0.8); default 1: fixed lengths")
    p.add_argument("--seed", type=seed, default=None, help="client: seed of the request lengths (default 0)")
    p.add_argument("--max-num-batched-tokens", type=positive_int, metavar="N",
                   help="the deployment's token budget per engine step, when its launch flags are known "
                        "(the rows do not record it; default: vLLM's for the GPU, 8192 on GPUs of at least "
                        "70 GiB that are not A100s, else 2048)")
    p.add_argument("--max-num-seqs", type=positive_int, metavar="N",
                   help="the deployment's cap on running sequences, when known (default: vLLM's, 1024 or 256, "
                        "raised to each row's concurrency); a cap below a row's concurrency makes the rest wait")
    p.add_argument("--include-warmup", action="store_true",
                   help="staggered/burst: average over every request, first wave included")
    p.add_argument("--step-overhead", type=Path, default=None,
                   help="YAML of the per-step time kernels do not measure (default: "
                        "profiles/silicon_step_overhead.yaml)")
    p.add_argument("--no-step-overhead", action="store_true", help="compose steps from kernels alone")
    p.add_argument("--fit-step-overhead", type=Path, metavar="OUT",
                   help="fit the step overhead on the --fit-model rows, write it here, and report "
                        "every row predicted with it")
    p.add_argument("--fit-model", help="model_path of the rows the overhead is fitted on "
                                       "(e.g. meta-llama/Llama-3.1-70B)")
    p.add_argument("--moe-efficiency", type=Path, default=None,
                   help="YAML of the fused-MoE kernel's rate on a system (default: "
                        "profiles/fused_moe_efficiency.yaml; applied when fitted for --system or "
                        "a device of the same compute capability)")
    p.add_argument("--no-moe-efficiency", action="store_true",
                   help="compose MoE layers from the GEMM table alone")
    p.add_argument("--fit-moe-efficiency", type=Path, metavar="OUT",
                   help="fit the fused-MoE rate on the published kernel times of --moe-measurements "
                        "with this system's GEMM tables, write it here and predict with it")
    p.add_argument("--hardware", type=Path, action="append", default=[], metavar="FILE",
                   help="extra hardware catalog (format of profiles/hardware.yaml) for the datasheet "
                        "of a system whose kernel folder has no <system>.yaml beside it; repeatable")
    p.add_argument("--moe-measurements", type=Path,
                   help="YAML of published fused-MoE kernel times (e.g. profiles/fused_moe_measurements.yaml)")


def _datasheet(kernels: Path, system: str, extra: list | tuple = ()):
    from mist.calibrate.kernels import Datasheet
    from mist.profiles.hardware import get_hardware, load_catalog
    from mist.traces.readers.aiconfigurator import read_system_yaml

    catalog = load_catalog(extra=extra) if extra else None  # read (and checked) even when unused
    sheet = read_system_yaml(kernels)
    if sheet is not None:
        return Datasheet.from_aiconfigurator(system, sheet), f"{kernels.name}.yaml beside the kernels"
    try:
        hw = get_hardware(system, catalog)
    except KeyError:
        raise TraceError(kernels, f"no datasheet: neither {kernels.name}.yaml beside the folder "
                                  f"nor a catalogued device named {system!r} (give one with "
                                  "--hardware FILE)") from None
    flops = {("bfloat16" if k == "bf16" else k): v for k, v in hw.peak_flops.items()}
    return Datasheet(name=system, mem_bw_bytes_s=hw.memory_bw_bytes_s, peak_flops=flops,
                     link_bw_bytes_s=hw.interconnect_bw_bytes_s or 64e9, memory_bytes=hw.memory_bytes,
                     sm_version=hw.sm_version), f"hardware catalog: {hw.name}"


def _plot(df, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.8))
    for ax, metric in zip(axes, ("ttft", "tpot")):
        x, y = df[f"{metric}_ms"], df[f"pred_{metric}_ms"]
        for model, part in df.groupby("model", sort=True):
            ax.loglog(part[f"{metric}_ms"], part[f"pred_{metric}_ms"], "o", ms=4, alpha=0.7, label=str(model))
        lo, hi = min(x.min(), y.min()), max(x.max(), y.max())
        ax.plot([lo, hi], [lo, hi], "k--", lw=1)
        ax.fill_between([lo, hi], [lo * 0.9, hi * 0.9], [lo * 1.1, hi * 1.1], color="k", alpha=0.08, lw=0,
                        label="±10 %")
        ax.set_xlabel(f"measured {metric.upper()} (ms)")
        ax.set_ylabel(f"predicted {metric.upper()} (ms)")
        ax.grid(True, which="both", alpha=0.3)
    axes[1].legend(fontsize=7, loc="upper left")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def run(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from mist.calibrate import fused_moe
    from mist.calibrate.kernels import KernelSet, cross_validate_kernels
    from mist.replay.silicon import (
        DEFAULT_STEP_OVERHEAD,
        KernelVersions,
        StepOverhead,
        default_requests_per_user,
        fit_step_overhead,
        predict_silicon,
    )
    from mist.traces.readers.silicon import read_silicon

    if args.requests_per_user is not None and args.requests_per_user < 1:
        raise TraceError(args.silicon, "--requests-per-user must be at least 1")
    if args.requests_per_user is None:
        args.requests_per_user = default_requests_per_user(args.arrivals)
    if args.arrivals != "client" and (args.length_ratio is not None or args.seed is not None):
        raise ReplayError("--length-ratio and --seed describe the simulated client: they go with "
                          "--arrivals client")
    if args.arrivals == "client" and args.include_warmup:
        raise ReplayError("--arrivals client counts every request already; --include-warmup is for "
                          "staggered/burst")
    args.length_ratio = 1.0 if args.length_ratio is None else args.length_ratio
    args.seed = 0 if args.seed is None else args.seed
    if not args.models.is_dir():
        raise TraceError(args.models, "models folder not found")
    if bool(args.fit_step_overhead) != bool(args.fit_model):
        raise TraceError(args.silicon, "--fit-step-overhead and --fit-model go together")
    if args.fit_step_overhead and (args.step_overhead or args.no_step_overhead):
        raise TraceError(args.silicon, "--fit-step-overhead fits its own overhead: drop --step-overhead "
                                       "and --no-step-overhead")
    overhead, overhead_source = None, "none"
    if args.fit_step_overhead is None and not args.no_step_overhead:
        path = args.step_overhead or DEFAULT_STEP_OVERHEAD
        if args.step_overhead is not None or path.is_file():
            overhead, overhead_source = StepOverhead.load(path), str(path)
    if bool(args.fit_moe_efficiency) != bool(args.moe_measurements):
        raise TraceError(args.silicon, "--fit-moe-efficiency and --moe-measurements go together")
    if args.fit_moe_efficiency and (args.moe_efficiency or args.no_moe_efficiency):
        raise TraceError(args.silicon, "--fit-moe-efficiency fits its own rate: drop --moe-efficiency "
                                       "and --no-moe-efficiency")
    if args.kernels.name.casefold() != args.system.casefold():
        print(f"mist silicon: warning: the kernel folder {args.kernels.name!r} is named for another system "
              f"than --system {args.system!r}; its tables and datasheet are used for every row", file=sys.stderr)
    rows = read_silicon(args.silicon, args.system, args.backend)
    if not len(rows):
        raise TraceError(args.silicon, f"no rows for system {args.system!r} and backend {args.backend!r}")
    if args.fit_model and not (rows["model_path"] == args.fit_model).any():
        raise TraceError(args.silicon, f"no {args.system}/{args.backend} rows of --fit-model {args.fit_model!r}")
    sheet, sheet_source = _datasheet(args.kernels, args.system, args.hardware)
    kernels = KernelVersions(args.kernels, sheet, hardware=args.system, framework=args.backend)
    profile = kernels.for_version(None).profile  # the newest tables (the set unversioned rows read)
    moe_eff, moe_source = None, "none"
    if args.fit_moe_efficiency is not None:
        system, source, series = fused_moe.read_measurements(args.moe_measurements)
        if system.casefold() != args.system.casefold():
            raise TraceError(args.moe_measurements, f"measured on {system!r}, not on --system {args.system!r}")
        # a set of its own, so the fit's lookups stay out of the rows' kernel_sources
        moe_eff = fused_moe.fit_efficiency(KernelSet(profile, sheet), system, source, series, {
            "measurements": args.moe_measurements.name, "gemm_table": kernels.gemm_table(None)})
        moe_eff.save(args.fit_moe_efficiency)
        moe_source = f"fitted here, written to {args.fit_moe_efficiency}"
        print("fused-MoE efficiency fitted on published kernel times: " + ", ".join(
            f"{d} {v:.2f} of peak" for d, v in sorted(moe_eff.efficiency.items()))
            + f", half of it at {moe_eff.tokens_per_expert_half:g} tokens per expert")
    elif not args.no_moe_efficiency:
        path = args.moe_efficiency or fused_moe.DEFAULT_EFFICIENCY
        if args.moe_efficiency is not None or path.is_file():
            moe_eff = fused_moe.for_system(path, args.system, sheet.sm_version)
            if moe_eff is None:
                moe_source = f"none ({path} is for another kind of device)"
            elif moe_eff.system == args.system:
                moe_source = str(path)
            else:
                moe_source = f"{path}, fitted on {moe_eff.system}: same compute capability (SM {sheet.sm_version})"
    moe_rates = None if moe_eff is None else moe_eff.rates()

    def predict(step_overhead, what):
        return predict_silicon(rows, kernels, args.models, args.requests_per_user,
                               progress=lambda it, total: tqdm(it, total=total, desc=what, file=sys.stderr,
                                                               disable=None),
                               arrivals=args.arrivals, exclude_warmup=not args.include_warmup,
                               overhead=step_overhead, moe_efficiency=moe_rates,
                               length_ratio=args.length_ratio, seed=args.seed,
                               max_num_batched_tokens=args.max_num_batched_tokens, max_num_seqs=args.max_num_seqs)

    if args.fit_step_overhead is not None:
        bare, _ = predict(None, "rows (no overhead)")
        overhead = fit_step_overhead(bare, bare["model"] == args.fit_model, {
            "model": args.fit_model, "system": args.system, "backend": args.backend,
            "silicon": args.silicon.name, "arrivals": args.arrivals,
            "requests_per_user": args.requests_per_user,
            **({"length_ratio": args.length_ratio, "seed": args.seed} if args.arrivals == "client" else {})})
        overhead.save(args.fit_step_overhead)
        overhead_source = f"fitted here, written to {args.fit_step_overhead}"
        print(f"step overhead fitted on {overhead.fitted_on['rows']} {args.fit_model} rows: "
              f"{overhead.per_step_s * 1e3:.3f} ms per step + {overhead.per_sequence_s * 1e6:.1f} us per sequence")
    df, summary = predict(overhead, "rows")
    cv = cross_validate_kernels(profile)
    summary["kernel_sources"] = kernels.tally()
    summary["kernel_cv"] = {f"{r.kernel}/{r.variant}": {"mape": round(r.mape, 2), "median_ape": round(r.median_ape, 2),
                                                        "held_out": int(r.held_out)} for r in cv.itertuples()}
    summary["step_overhead"] = None if overhead is None else dict(overhead.to_dict(), source=overhead_source)
    summary["moe_efficiency"] = None if moe_eff is None else dict(moe_eff.to_dict(), source=moe_source)
    summary["settings"] = {"system": args.system, "backend": args.backend,
                           "kernel_tables": "nearest each row's backend_version (rows without one: the "
                                            "newest); kernel_cv on the newest",
                           "datasheet": sheet_source, "arrivals": args.arrivals,
                           "max_num_batched_tokens": args.max_num_batched_tokens or "vLLM default",
                           "max_num_seqs": args.max_num_seqs or "vLLM default",
                           "requests_per_user": args.requests_per_user,
                           "warmup_excluded": args.arrivals == "benchmark" or (
                               args.arrivals != "client" and not args.include_warmup),
                           **({"length_ratio": args.length_ratio, "seed": args.seed}
                              if args.arrivals == "client" else {})}
    r = summary["rows"]
    print(f"{args.system}/{args.backend}: {r['predicted']} of {r['total']} rows predicted; skipped: {r['skipped'] or 'none'}")
    for metric in ("ttft", "tpot"):
        e = summary[metric]
        if e["mape"] is not None:
            print(f"  {metric}: MAPE {e['mape']:.1f} %, median APE {e['median_ape']:.1f} %, "
                  f"P90 APE {e['p90_ape']:.1f} %, bias {e['bias']:+.1f} %")
    for model, part in summary["by_model"].items():
        rng = part.get("ttft_protocol_range") or {}
        where = (f"; measured TTFT inside the de-synchronised..lock-step range for {rng['inside_pct']:.0f} % "
                 f"of rows, at {rng['position']['median']:.2f} of the way" if rng.get("position") else "")
        print(f"  {model} ({part['rows']} rows): TTFT MAPE {part['ttft']['mape']:.1f} / median "
              f"{part['ttft']['median_ape']:.1f} %, TPOT MAPE {part['tpot']['mape']:.1f} / median "
              f"{part['tpot']['median_ape']:.1f} %{where}")
    if overhead is not None:
        print(f"  step overhead: {overhead.per_step_s * 1e3:.3f} ms + {overhead.per_sequence_s * 1e6:.1f} us/sequence "
              f"(fitted on {overhead.fitted_on.get('model', '?')}; {overhead_source})")
    rates = ", ".join(f"{d} {v:.2f} of peak" for d, v in sorted((moe_eff.efficiency if moe_eff else {}).items()))
    if rates and moe_eff.tokens_per_expert_half:
        rates += f", half of it at {moe_eff.tokens_per_expert_half:g} tokens per expert"
    print(f"  fused-MoE efficiency: {rates} ({moe_source})" if rates else f"  fused-MoE efficiency: {moe_source}")
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
        written = ["predictions.csv"]
        if len(ok):
            _plot(ok, args.out / "scatter.png")
            written.append("scatter.png")
        else:  # no stale plot of an earlier run left to be mistaken for this one's
            (args.out / "scatter.png").unlink(missing_ok=True)
        cv.round(3).to_csv(args.out / "kernel_cv.csv", index=False)
        print(f"wrote {args.out}/" + ", ".join([*written, "kernel_cv.csv"]))
    if not summary["rows"]["predicted"]:
        print(f"mist silicon: warning: no row was predicted (skipped: {summary['rows']['skipped']})",
              file=sys.stderr)
    return 0
