"""Profile this machine's CPU operators and vLLM step overhead into a layer-profile bundle.

Times one decoder layer's operators of the model in CONFIG_JSON (a Llama-style
Hugging Face config; weights are random, latency does not depend on them) with
vLLM's own CPU kernels, and runs the real vLLM engine in-process on controlled
batches to measure the per-step host overhead. Writes BUNDLE_DIR:

  meta.yaml               versions, CPU, engine settings, grids, kernels, speed probes
  tp1/dense.csv           layer,tokens,time_us,spread_us,samples
  tp1/per_sequence.csv    layer,sequences,time_us,spread_us,samples
  tp1/attention.csv       prefill_chunk,kv_prefill,n_decode,kv_decode,time_us,...
  tp1/step_overhead.csv   sequences,tokens,time_us,spread_us,samples,step_us,model_us

time_us is the median over repeats, spread_us the p90 - p10 spread (µs). The bundle
appears all at once (written to a temporary folder, then renamed); a non-empty
BUNDLE_DIR is refused unless --force. Needs torch (CPU) and vllm, the [record] extra.
Run nothing else heavy meanwhile: the profile measures the machine.

Afterwards the engine's measured model time of its pure-decode steps is compared
with the operators composed as the replay composes them (printed, and stored in
meta.yaml as forward_check): a ratio near 1 says the tables account for the forward.

example:
  mist profile --model ../shared/data/vllm-bench-cpu/tiny-llama-rate1.5-run2/config.json \\
      --out out/profiles/cpu/tiny-llama/fp32 --max-num-batched-tokens 512 --max-num-seqs 64
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from mist.traces.errors import TraceError
from mist.validate.cli.argtypes import positive_int

HELP = "measure CPU operator latencies and vLLM step overhead into a profile bundle"


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Declare ``--model CONFIG_JSON --out BUNDLE_DIR`` and the measurement options."""
    p.add_argument("--model", required=True, type=Path, metavar="CONFIG_JSON", help="Hugging Face config.json")
    p.add_argument("--out", required=True, type=Path, metavar="BUNDLE_DIR", help="bundle folder to create")
    p.add_argument("--name", default="", help="model name in meta.yaml (default: from the config)")
    p.add_argument("--max-num-batched-tokens", type=positive_int, default=512, metavar="N",
                   help="engine token budget per step; dense grid maximum (default 512)")
    p.add_argument("--max-num-seqs", type=positive_int, default=64, metavar="N",
                   help="engine sequence limit; per-sequence grid maximum (default 64)")
    p.add_argument("--max-kv", type=positive_int, default=2048, metavar="N",
                   help="largest KV length of the attention grid, the engine's max_model_len (default 2048)")
    p.add_argument("--repeats", type=positive_int, default=5, metavar="R",
                   help="timed samples per grid point (default 5; --quick caps it at 3)")
    p.add_argument("--threads-bind", default="0", metavar="CPUS",
                   help='CPUs to run on, VLLM_CPU_OMP_THREADS_BIND syntax (default "0": one thread)')
    p.add_argument("--temperature", type=float, default=0.0,
                   help="sampling temperature (default 0: greedy, as mist record; vLLM's server default is 1.0)")
    p.add_argument("--enable-prefix-caching", action="store_true",
                   help="engine prefix caching on (default off, as mist record)")
    p.add_argument("--block-size", type=positive_int, default=128, help="KV block size (default 128, vLLM CPU)")
    p.add_argument("--flush-mb", type=int, default=64, metavar="MB",
                   help="cache-evicting buffer read before every sample; GEMMs rotate over 2x this much weight (default 64; 0: warm caches)")
    p.add_argument("--quick", action="store_true", help="coarse grids, few repeats (about 30 s; for tests)")
    p.add_argument("--serving-steps", action="store_true",
                   help="also log the engine steps of a synthetic stream served like `mist record` "
                   "(about 90 s more; tp1/serving_steps.csv, a diagnostic the replay does not use)")
    p.add_argument("--force", action="store_true", help="replace a non-empty BUNDLE_DIR")


def forward_check(meta: dict, tables: dict) -> list[dict]:
    """Operator-composed model time against the engine's, for its pure-decode steps.

    The composition is the replay's (``mist.calibrate.features``): per-token ops at
    T = S, ``num_layers`` times per layer, attention of S decodes at the measured
    mean KV length, ``lm_head`` and ``sampler`` at S. A ratio far from 1 means the
    operator tables miss work the forward pass does (or time it differently).
    """
    import numpy as np

    from mist.calibrate.estimator import LatencyModel
    from mist.calibrate.features import CALLS_PER_LAYER, OPERATORS

    layers = int(meta["model_shape"]["num_layers"])
    fits = {}
    for name, feature in (("dense", "tokens"), ("per_sequence", "sequences")):
        ops = sorted({r["layer"] for r in tables[name]})
        for op in ops:
            rows = [r for r in tables[name] if r["layer"] == op]
            fits[op] = LatencyModel().fit([[r[feature]] for r in rows], [r["time_us"] for r in rows])
    cols = ("prefill_chunk", "kv_prefill", "n_decode", "kv_decode")
    attn = LatencyModel().fit([[r[c] for c in cols] for r in tables["attention"]],
                              [r["time_us"] for r in tables["attention"]])
    out = []
    for step in meta.get("engine_decode_steps", []):
        S, kv = step["sequences"], step["kv_decode"]
        parts = {"forward_us": layers * float(attn.predict(np.array([[0, 0, S, kv]]))[0]),
                 "logits_us": 0.0, "sampler_us": 0.0}
        for op, model in fits.items():
            _, scope = OPERATORS.get(op, (None, "model"))
            times = layers * CALLS_PER_LAYER.get(op, 1) if scope == "layer" else 1
            key = {"lm_head": "logits_us", "sampler": "sampler_us"}.get(op, "forward_us")
            parts[key] += times * float(model.predict(np.array([[S]]))[0])
        total = sum(parts.values())
        row = {"sequences": S, "kv_decode": round(kv, 1), "engine_model_us": round(step["model_us"], 1),
               "ops_model_us": round(total, 1), "ratio": round(step["model_us"] / total, 3)}
        for key, value in parts.items():  # per part: engine / operators
            if key in step:
                row[f"{key.removesuffix('_us')}_ratio"] = round(step[key] / value, 3)
        out.append(row)
    return out


def settings_from(args: argparse.Namespace):
    """The :class:`~mist.profiles.measure.settings.ProfileSettings` of parsed arguments."""
    from mist.profiles.measure.settings import ProfileSettings

    try:
        return ProfileSettings(
            model_config=str(args.model), max_num_batched_tokens=args.max_num_batched_tokens,
            max_num_seqs=args.max_num_seqs, max_kv=args.max_kv, repeats=args.repeats,
            threads_bind=args.threads_bind, quick=args.quick, temperature=args.temperature,
            block_size=args.block_size, flush_mb=args.flush_mb, name=args.name,
            enable_prefix_caching=args.enable_prefix_caching, serving_steps=args.serving_steps)
    except ValueError as exc:
        raise TraceError(args.model, str(exc)) from None


def run(args: argparse.Namespace) -> int:
    from mist.profiles.measure.bundle_writer import occupied
    from mist.profiles.measure.profiler import profile_machine, write_profile
    from mist.profiles.measure.progress import terminal_bars
    from mist.profiles.measure.recorder import INSTALL

    if occupied(args.out) and not args.force:
        raise TraceError(args.out, "exists and is not empty (use --force to replace it)")
    settings = settings_from(args)
    try:
        with terminal_bars("pt", leave=False) as progress:
            result = profile_machine(settings, progress, forward_check)
    except ValueError as exc:
        raise TraceError(args.model, str(exc)) from None
    except ImportError as exc:  # no torch or vLLM, or a broken install of them
        print(f"mist profile: error: cannot import vLLM ({exc}); profiling needs torch (CPU build) "
              f"and vllm: {INSTALL}", file=sys.stderr)
        return 2
    write_profile(result, args.out, force=args.force)
    meta, tables = result.meta, result.tables
    sizes = ", ".join(f"{name} {len(rows)}" for name, rows in tables.items())
    print(f"profiled {meta['model']} ({meta['variant']}) on {meta['device']} in "
          f"{result.seconds:.1f} s: {sizes} rows")
    for row in meta["forward_check"]:
        print(f"  decode S={row['sequences']:>3}: engine model {row['engine_model_us'] / 1e3:7.2f} ms, "
              f"operators {row['ops_model_us'] / 1e3:7.2f} ms (ratio {row['ratio']:.2f}; "
              f"forward {row.get('forward_ratio', 0):.2f}, lm_head {row.get('logits_ratio', 0):.2f}, "
              f"sampler {row.get('sampler_ratio', 0):.2f})")
    print(f"bundle: {args.out}")
    return 0
