"""Predict the shared silicon rows from kernel databases through `mist silicon`.

    python bench/silicon.py               # every system with both kernels and rows
    python bench/silicon.py --arrivals burst

Prints, per system: rows predicted/skipped, TTFT and TPOT MAPE / median APE / bias
(%), where the kernel latencies came from, and the wall time of the command.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from runs import SHARED  # noqa: E402

SILICON = SHARED / "silicon" / "aiconfigurator_silicon_sample.csv"
KERNELS = SHARED / "profiles" / "aiconfigurator"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arrivals", default="staggered", choices=("staggered", "burst"))
    parser.add_argument("--backend", default="vllm")
    args = parser.parse_args()
    if not SILICON.is_file():
        print(f"shared data not found at {SHARED}", file=sys.stderr)
        return 2
    import pandas as pd

    systems = set(pd.read_csv(SILICON, usecols=["system"])["system"])
    print(f"{'system':10s} {'rows':>5s} {'pred':>5s} {'TTFT MAPE':>9s} {'med':>6s} {'bias':>7s} "
          f"{'TPOT MAPE':>9s} {'med':>6s} {'bias':>7s} {'wall s':>7s}")
    for folder in sorted(p for p in KERNELS.iterdir() if p.is_dir()):
        if folder.name not in systems:
            continue
        with tempfile.TemporaryDirectory() as tmp:
            out = Path(tmp) / "s.json"
            t0 = time.perf_counter()
            subprocess.run([sys.executable, "-m", "validate.cli", "silicon", "--silicon", str(SILICON),
                            "--kernels", str(folder), "--models", str(SHARED / "models"),
                            "--system", folder.name, "--backend", args.backend, "--arrivals", args.arrivals,
                            "--json", str(out), "--out", tmp], check=True, stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL)
            wall = time.perf_counter() - t0
            s = json.loads(out.read_text())
            rows = pd.read_csv(Path(tmp) / "predictions.csv")
        r, a, b = s["rows"], s["ttft"], s["tpot"]
        print(f"{folder.name:10s} {r['total']:5d} {r['predicted']:5d} {a['mape']:9.1f} {a['median_ape']:6.1f} "
              f"{a['bias']:+7.1f} {b['mape']:9.1f} {b['median_ape']:6.1f} {b['bias']:+7.1f} {wall:7.1f}")
        print(f"  skipped: {r['skipped']}")
        for model, g in rows[rows["pred_ttft_ms"].notna()].groupby("model"):
            parts = []
            for metric in ("ttft", "tpot"):
                ape = (g[f"pred_{metric}_ms"] / g[f"{metric}_ms"] - 1).abs() * 100
                parts.append(f"{metric.upper()} MAPE {ape.mean():.1f} / median {ape.median():.1f}")
            print(f"  {model} ({len(g)} rows): " + "; ".join(parts))
        print(f"  kernel sources: {s['kernel_sources']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
