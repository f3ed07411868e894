"""Ablation: each modelled vLLM behaviour switched off in turn, and the error it costs.

    python bench/ablation.py

Runs `mist validate` on every shared real run (and the shipped CPU sample) once as
is and once per switch, and prints per-request MAPE of TTFT, TPOT and E2E (%).
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from runs import REPO, RUNS, SHARED, validate_args  # noqa: E402

SWITCHES = {
    "as modelled": [],
    "no prefix caching": ["--no-prefix-caching"],
    "no async scheduling": ["--no-async-scheduling"],
    "no KV-skew correction": ["--skew", "off"],
    "per-bucket skew alphas": ["--skew", "buckets"],
    "client-side arrivals": ["--arrival", "client"],
    "stamps step-aligned": ["--arrival", "engine-aligned"],
    "no drift correction": ["--drift", "off"],
}
SAMPLE = ["validate", "--run", str(REPO / "traces/samples/cpu-tiny-llama"),
          "--profiles", str(REPO / "profiles/samples/cpu-tiny-llama/fp32"),
          "--model", str(REPO / "traces/samples/cpu-tiny-llama/model_config.json")]


def mape(args: list[str]) -> dict | str:
    """MAPE (%) per metric, or why the variant does not apply to this run (e.g. a bundle
    without per-bucket skew tables)."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "s.json"
        done = subprocess.run([sys.executable, "-m", "mist.validate.cli", *args, "--json", str(out)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        if done.returncode == 2:
            return done.stderr.strip().splitlines()[-1].split(": ")[-1]
        done.check_returncode()
        return {m: v["mape"] for m, v in json.loads(out.read_text())["metrics"].items()}


def main() -> int:
    runs = {"cpu-tiny-llama (shipped)": SAMPLE}
    if SHARED.is_dir():
        runs.update({name: validate_args(name) for name in RUNS})
    print(f"{'run':28s} {'variant':24s} {'TTFT %':>7s} {'TPOT %':>7s} {'E2E %':>7s}")
    for name, base in runs.items():
        for label, extra in SWITCHES.items():
            m = mape(base + extra)
            if isinstance(m, str):
                print(f"{name:28s} {label:24s} not applicable: {m}")
                continue
            print(f"{name:28s} {label:24s} {m['ttft']:7.2f} {m['tpot']:7.2f} {m['e2e']:7.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
