"""Predict the shared silicon rows from kernel databases (the library job behind `mist silicon`).

    python bench/silicon.py                        # every system with both kernels and rows
    python bench/silicon.py --arrivals staggered   # the steady state alone
    python bench/silicon.py --no-step-overhead     # without the fitted step overhead
    python bench/silicon.py --no-moe-efficiency    # MoE layers from the GEMM table alone
    python bench/silicon.py --arrivals client --length-ratio 0.8   # InferenceX's client, simulated

Prints, per system: rows predicted/skipped, TTFT and TPOT MAPE / median APE / bias
(%), the same per model (marking the model the step overhead was fitted on: the
others are its validation), where the kernel latencies came from, the wall time
of the prediction, a TPOT decomposition, the TTFT residual left per input length and
measured and predicted TTFT in units of the deployment's lone prefill by concurrency.
Before them, from the measurements alone: every attention-DP row against the plain
tensor + expert parallel row of the same deployment at D x its batch (the reading
``mist silicon`` gives attention-DP rows).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from runs import SHARED  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from mist.replay.silicon import SiliconSettings, predict_deployments  # noqa: E402
from mist.validate.cli.argtypes import ratio  # noqa: E402

SILICON = SHARED / "silicon" / "aiconfigurator_silicon_sample.csv"
KERNELS = SHARED / "profiles" / "aiconfigurator"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arrivals", default="benchmark", choices=("benchmark", "staggered", "burst", "client"))
    parser.add_argument("--length-ratio", type=ratio, help="with --arrivals client (mist silicon --length-ratio)")
    parser.add_argument("--backend", default="vllm")
    parser.add_argument("--no-step-overhead", action="store_true")
    parser.add_argument("--no-moe-efficiency", action="store_true")
    args = parser.parse_args()
    if args.length_ratio is not None and args.arrivals != "client":
        parser.error("--length-ratio goes with --arrivals client")
    if not SILICON.is_file():
        print(f"shared data not found at {SHARED}", file=sys.stderr)
        return 2
    import pandas as pd

    systems = set(pd.read_csv(SILICON, usecols=["system"])["system"])
    if args.backend == "vllm":  # the engine whose attention-DP rows mist silicon reads
        attention_dp_pairs(pd.read_csv(SILICON))
    print(f"{'system':10s} {'rows':>5s} {'pred':>5s} {'TTFT MAPE':>9s} {'med':>6s} {'bias':>7s} "
          f"{'TPOT MAPE':>9s} {'med':>6s} {'bias':>7s} {'wall s':>7s}")
    for folder in sorted(p for p in KERNELS.iterdir() if p.is_dir()):
        if folder.name not in systems:
            continue
        t0 = time.perf_counter()
        result = predict_deployments(SiliconSettings(
            silicon=SILICON, kernels=folder, models=SHARED / "models", system=folder.name, backend=args.backend,
            arrivals=args.arrivals, no_step_overhead=args.no_step_overhead,
            no_moe_efficiency=args.no_moe_efficiency, length_ratio=args.length_ratio or None))
        wall = time.perf_counter() - t0
        s, rows = result.summary, result.predictions
        r, a, b = s["rows"], s["ttft"], s["tpot"]
        print(f"{folder.name:10s} {r['total']:5d} {r['predicted']:5d} {a['mape']:9.1f} {a['median_ape']:6.1f} "
              f"{a['bias']:+7.1f} {b['mape']:9.1f} {b['median_ape']:6.1f} {b['bias']:+7.1f} {wall:7.1f}")
        print(f"  skipped: {r['skipped']}")
        fitted_on = (s.get("step_overhead") or {}).get("fitted_on", {}).get("model")
        if s.get("step_overhead"):
            o = s["step_overhead"]
            print(f"  step overhead {o['per_step_ms']:.3f} ms + {o['per_sequence_us']:.1f} us/sequence, "
                  f"fitted on {fitted_on}")
        if s.get("moe_efficiency"):
            m = s["moe_efficiency"]
            half = m.get("tokens_per_expert_half") or 0
            print("  fused-MoE efficiency " + ", ".join(f"{d} {v:.2f}" for d, v in m["efficiency"].items())
                  + " of peak" + (f", half of it at {half:g} tokens per expert" if half else "")
                  + f", fitted on published kernel times ({m['fitted_on'].get('source', '?')})")
        for model, g in rows[rows["pred_ttft_ms"].notna()].groupby("model"):
            parts = []
            for metric in ("ttft", "tpot"):
                ape = (g[f"pred_{metric}_ms"] / g[f"{metric}_ms"] - 1).abs() * 100
                parts.append(f"{metric.upper()} MAPE {ape.mean():.1f} / median {ape.median():.1f}")
            role = " [step overhead fitted here]" if model == fitted_on else ""
            rng = s["by_model"].get(model, {}).get("ttft_protocol_range") or {}
            if rng.get("position"):
                parts.append(f"TTFT in range {rng['inside_pct']:.0f} %, position {rng['position']['median']:.2f}")
            print(f"  {model} ({len(g)} rows){role}: " + "; ".join(parts))
        print(f"  kernel sources: {s['kernel_sources']}")
        decomposition(rows[rows["pred_ttft_ms"].notna()])
        ttft_residual(rows[rows["pred_ttft_ms"].notna()])
        in_prefills(rows[rows["pred_ttft_ms"].notna()])
    return 0


def attention_dp_pairs(table) -> None:
    """Measured TTFT and TPOT of vLLM attention-DP rows (D ranks, ``batch_size`` b) over
    those of the row of the same system, model, precision, GPU count (``tp_size``, as
    vLLM's rows are labelled), lengths and engine version without attention DP, experts
    over the TP ranks, at concurrency D x b. Rows the file holds twice (same keys and
    measurements) are counted once."""

    t = table[(table["backend"] == "vllm") & (table["mode"] == "agg")].copy()
    t["dp"] = t["attention_dp_size"].fillna(1)
    keys = ["system", "model_path", "precision", "tp_size", "isl", "osl", "backend_version"]
    t = t.drop_duplicates(keys + ["dp", "batch_size", "moe_ep_size", "silicon_ttft_ms", "silicon_tpot_ms"])
    dp = t[t["dp"] > 1].assign(conc=lambda d: d["batch_size"] * d["dp"])
    plain = t[(t["dp"] == 1) & (t["moe_ep_size"] == t["tp_size"])].rename(columns={"batch_size": "conc"})
    plain = plain.groupby(keys + ["conc"], dropna=False)[["silicon_ttft_ms", "silicon_tpot_ms"]].median()
    pairs = dp.merge(plain.reset_index(), on=keys + ["conc"], suffixes=("", "_plain"))
    if pairs.empty:
        return
    print("vLLM attention-DP rows against the same deployment without it at D x batch, "
          "measured / measured (distinct rows):")
    for (system, model), g in pairs.groupby(["system", "model_path"]):
        ttft = g["silicon_ttft_ms"] / g["silicon_ttft_ms_plain"]
        tpot = g["silicon_tpot_ms"] / g["silicon_tpot_ms_plain"]
        print(f"  {system} {model}: {len(g)} of {len(dp[(dp.system == system) & (dp.model_path == model)])} "
              f"rows paired; TTFT ratio median {ttft.median():.3f} [P10 {ttft.quantile(0.1):.2f}, "
              f"P90 {ttft.quantile(0.9):.2f}], TPOT ratio median {tpot.median():.3f} "
              f"[P10 {tpot.quantile(0.1):.2f}, P90 {tpot.quantile(0.9):.2f}]")
    print()


def decomposition(rows) -> None:
    """Split TPOT into a decode step and the stall other users' prefills cause.

    In a closed loop of C users a request's TPOT is about ``d + (C - 1) S / (OSL - 1)``:
    ``d`` the pure decode step, ``S`` the extra time of a step that carries one
    prefill (each of the other C - 1 users prefills about once per request
    lifetime). Two rows that differ only in OSL give both, for the measurement and
    for the prediction alike; their ratios say which part of a step the kernels
    miss. (Pairs where preemption or a full KV cache changes the loop are noise.)
    """
    import numpy as np

    out = []
    keys = ["model", "tp", "attention_dp", "concurrency", "isl"]
    for key, g in rows.groupby(keys):
        g = g.sort_values("osl")
        if len(g) < 2:
            continue
        lo, hi = g.iloc[0], g.iloc[-1]
        if lo["osl"] == hi["osl"]:
            continue
        rec = dict(zip(keys, key))
        c = rec["concurrency"] - 1
        x = c / (lo["osl"] - 1) - c / (hi["osl"] - 1)
        for name, col in (("meas", "tpot_ms"), ("sim", "pred_tpot_ms")):
            stall = (lo[col] - hi[col]) / x
            rec[f"{name}_S"], rec[f"{name}_d"] = stall, hi[col] - c * stall / (hi["osl"] - 1)
        out.append(rec)
    if not out:
        return
    import pandas as pd

    df = pd.DataFrame(out)
    df = df[(df["meas_S"] > 0) & (df["sim_S"] > 0)]
    print("  TPOT decomposition from OSL pairs (sim / measured, median over pairs; d = decode step,"
          " S = stall per prefill; d gap in ms by concurrency):")
    for model, g in df.groupby("model"):
        gap = g.assign(gap=g["meas_d"] - g["sim_d"]).groupby("concurrency")["gap"].median()
        print(f"    {model} ({len(g)} pairs): d {np.median(g['sim_d'] / g['meas_d']):.2f}, "
              f"S {np.median(g['sim_S'] / g['meas_S']):.2f}; d gap "
              + ", ".join(f"C{int(k)} {v:+.1f}" for k, v in gap.items()))


def ttft_residual(rows) -> None:
    """TTFT the prediction misses, in units of the row's measured TPOT, by model and ISL.

    How the residual scales — with the prompt, the concurrency, the decode step —
    says what kind of time is missing (docs/kernels.md reads these figures).
    """
    import numpy as np

    ok = rows[rows["ttft_ms"] < 5000]  # KV-bound rows queue for memory, not for steps
    k = (ok["ttft_ms"] - ok["pred_ttft_ms"]) / ok["tpot_ms"]
    print("  TTFT residual in measured TPOTs ((measured - predicted) / TPOT; median [P10, P90] by ISL):")
    for model, g in k.groupby(ok["model"]):
        parts = [f"ISL {int(isl)}: {np.median(v):+.1f} [{np.percentile(v, 10):+.1f}, {np.percentile(v, 90):+.1f}]"
                 for isl, v in g.groupby(ok.loc[g.index, "isl"])]
        print(f"    {model}: " + "; ".join(parts))


def in_prefills(rows) -> None:
    """TTFT over the deployment's lone prefill (``pred_lone_ttft_ms``), measured and
    predicted, median over each model's rows at each concurrency: queueing in units
    that read the same at every TP degree, prompt and output length."""
    import numpy as np

    ok = rows[(rows["ttft_ms"] < 5000) & rows["pred_lone_ttft_ms"].notna()]
    print("  TTFT in lone prefills, measured / predicted (median over rows) by concurrency:")
    for model, g in ok.groupby("model"):
        parts = []
        for c, h in g.groupby("concurrency"):
            meas, pred = h["ttft_ms"] / h["pred_lone_ttft_ms"], h["pred_ttft_ms"] / h["pred_lone_ttft_ms"]
            parts.append(f"C {int(c)}: {np.median(meas):.1f} / {np.median(pred):.1f}")
        print(f"    {model}: " + "; ".join(parts))


if __name__ == "__main__":
    sys.exit(main())
