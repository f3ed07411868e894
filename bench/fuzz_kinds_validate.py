"""Fuzz-campaign kinds (:mod:`fuzz_campaign`) of `mist validate`'s and `mist noise`'s inputs:
a run folder (requests, meta, timeseries, tokens), the workload, the model config and the
profile bundle, on the shipped CPU sample."""

from __future__ import annotations

import shutil
from pathlib import Path

from fuzz_campaign import ROOT, Kind

SAMPLE = ROOT / "traces/samples/cpu-tiny-llama"
BUNDLE = ROOT / "profiles/samples/cpu-tiny-llama/fp32"


def _sample(work: Path) -> None:
    shutil.copytree(SAMPLE, work / "run")
    shutil.copytree(BUNDLE, work / "bundle")


def _validate(work: Path, out: Path) -> list[str]:
    return ["validate", "--run", str(work / "run"), "--profiles", str(work / "bundle"),
            "--model", str(work / "run/model_config.json"), "--out", str(out / "report"),
            "--json", str(out / "summary.json")]


KINDS = [
    Kind("run-requests", _sample, "run/requests.jsonl", "jsonl",
         ("request_id", "input_toks", "output_toks", "arrival_time", "queued_ts", "scheduled_ts",
          "first_token_ts", "last_token_ts"), _validate),
]
