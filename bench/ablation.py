"""Ablation: each modelled vLLM behaviour switched off in turn, and the error it costs.

    python bench/ablation.py

Replays every shared real run (and the shipped CPU sample) through the library behind
`mist validate` (:func:`mist.validate.run.validate_run`, in-process) once as is and once
per switch, and prints per-request MAPE of TTFT, TPOT and E2E (%).
"""

from __future__ import annotations

import sys
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from runs import REPO, RUNS, SHARED, validate_settings  # noqa: E402

from mist.traces.errors import ReplayError, TraceError  # noqa: E402
from mist.validate.run import ValidateSettings, validate_run  # noqa: E402

#: label -> the settings changed (the `mist validate` flag in a comment)
SWITCHES = {
    "as modelled": {},
    "no prefix caching": {"prefix_caching": False},  # --no-prefix-caching
    "no async scheduling": {"async_scheduling": False},  # --no-async-scheduling
    "no KV-skew correction": {"skew": "off"},  # --skew off
    "per-bucket skew alphas": {"skew": "buckets"},  # --skew buckets
    "client-side arrivals": {"arrival": "client"},  # --arrival client
    "stamps step-aligned": {"arrival": "engine-aligned"},  # --arrival engine-aligned
    "no drift correction": {"drift": "off"},  # --drift off
}
SAMPLE = ValidateSettings(run_dir=REPO / "traces/samples/cpu-tiny-llama",
                          profiles=REPO / "profiles/samples/cpu-tiny-llama/fp32",
                          model=REPO / "traces/samples/cpu-tiny-llama/model_config.json", timeseries=False)


def mape(settings: ValidateSettings) -> dict | str:
    """MAPE (%) per metric, or why the variant does not apply to this run (e.g. a bundle
    without per-bucket skew tables): the last clause of the error `mist validate` reports."""
    try:
        result = validate_run(settings)
    except (TraceError, ReplayError) as exc:
        return str(exc).strip().splitlines()[-1].split(": ")[-1]
    return {m: v["mape"] for m, v in result.summary()["metrics"].items()}


def main() -> int:
    runs = {"cpu-tiny-llama (shipped)": SAMPLE}
    if SHARED.is_dir():
        runs.update({name: validate_settings(name) for name in RUNS})
    print(f"{'run':28s} {'variant':24s} {'TTFT %':>7s} {'TPOT %':>7s} {'E2E %':>7s}")
    for name, base in runs.items():
        for label, extra in SWITCHES.items():
            m = mape(replace(base, **extra))
            if isinstance(m, str):
                print(f"{name:28s} {label:24s} not applicable: {m}")
                continue
            print(f"{name:28s} {label:24s} {m['ttft']:7.2f} {m['tpot']:7.2f} {m['e2e']:7.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
