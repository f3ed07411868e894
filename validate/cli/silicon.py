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

from mist.traces.io import atomic_write_json, staged_outputs, write_staged
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


def _settings(args: argparse.Namespace):
    from mist.replay.silicon import SiliconSettings

    return SiliconSettings(
        silicon=args.silicon, kernels=args.kernels, models=args.models, system=args.system, backend=args.backend,
        arrivals=args.arrivals, requests_per_user=args.requests_per_user, length_ratio=args.length_ratio,
        seed=args.seed, max_num_batched_tokens=args.max_num_batched_tokens, max_num_seqs=args.max_num_seqs,
        include_warmup=args.include_warmup, step_overhead=args.step_overhead, no_step_overhead=args.no_step_overhead,
        fit_step_overhead=args.fit_step_overhead, fit_model=args.fit_model, moe_efficiency=args.moe_efficiency,
        no_moe_efficiency=args.no_moe_efficiency, fit_moe_efficiency=args.fit_moe_efficiency,
        moe_measurements=args.moe_measurements, hardware=tuple(args.hardware))


def _print_fits(result) -> None:
    """What the run fitted, in the order it fitted it."""
    s, moe, overhead = result.settings, result.moe_efficiency, result.step_overhead
    if s.fit_moe_efficiency is not None:
        print("fused-MoE efficiency fitted on published kernel times: " + ", ".join(
            f"{d} {v:.2f} of peak" for d, v in sorted(moe.efficiency.items()))
            + f", half of it at {moe.tokens_per_expert_half:g} tokens per expert")
    if s.fit_step_overhead is not None:
        print(f"step overhead fitted on {overhead.fitted_on['rows']} {s.fit_model} rows: "
              f"{overhead.per_step_s * 1e3:.3f} ms per step + {overhead.per_sequence_s * 1e6:.1f} us per sequence")


def _print_summary(result) -> None:
    s, summary = result.settings, result.summary
    r = summary["rows"]
    print(f"{s.system}/{s.backend}: {r['predicted']} of {r['total']} rows predicted; skipped: {r['skipped'] or 'none'}")
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


def _print_corrections(result) -> None:
    overhead, moe_eff, moe_source = result.step_overhead, result.moe_efficiency, result.moe_source
    if overhead is not None:
        print(f"  step overhead: {overhead.per_step_s * 1e3:.3f} ms + {overhead.per_sequence_s * 1e6:.1f} us/sequence "
              f"(fitted on {overhead.fitted_on.get('model', '?')}; {result.step_overhead_source})")
    rates = ", ".join(f"{d} {v:.2f} of peak" for d, v in sorted((moe_eff.efficiency if moe_eff else {}).items()))
    if rates and moe_eff.tokens_per_expert_half:
        rates += f", half of it at {moe_eff.tokens_per_expert_half:g} tokens per expert"
    print(f"  fused-MoE efficiency: {rates} ({moe_source})" if rates else f"  fused-MoE efficiency: {moe_source}")
    print("  kernel latencies by source: " + "; ".join(
        f"{fam} " + ", ".join(f"{s} {c}" for s, c in srcs.items())
        for fam, srcs in result.summary["kernel_sources"].items()))


def _write_outputs(result, out: Path) -> list[str]:
    """``predictions.csv``, ``scatter.png`` (when a row was predicted) and ``kernel_cv.csv``
    into folder ``out`` (a fresh staging folder); returns the names written."""
    df = result.predictions
    df.to_csv(out / "predictions.csv", index=False)
    ok = df[df["pred_ttft_ms"].notna()]
    written = ["predictions.csv"]
    if len(ok):
        _plot(ok, out / "scatter.png")
        written.append("scatter.png")
    result.kernel_cv.round(3).to_csv(out / "kernel_cv.csv", index=False)
    return [*written, "kernel_cv.csv"]


def run(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from mist.replay.silicon import predict_deployments, save_fits

    result = predict_deployments(_settings(args), progress=lambda it, total, what: tqdm(
        it, total=total, desc=what, file=sys.stderr, disable=None))
    for warning in result.warnings:
        print(f"mist silicon: warning: {warning}", file=sys.stderr)
    _print_fits(result)
    _print_summary(result)
    _print_corrections(result)
    # every output staged beside its target, then all put in place together: the fitted
    # YAMLs, --out (replaced whole, a --json inside it too) and --json
    with staged_outputs() as outputs:
        written = write_staged(args.out, lambda folder: _write_outputs(result, folder), outputs) if args.out else []
        save_fits(result, outputs.path)
        if args.json:
            atomic_write_json(outputs.path(args.json), result.summary)
    if args.out:
        print(f"wrote {args.out}/" + ", ".join(written))
    if not result.summary["rows"]["predicted"]:
        print(f"mist silicon: warning: no row was predicted (skipped: {result.summary['rows']['skipped']})",
              file=sys.stderr)
    return 0
