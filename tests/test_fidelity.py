"""Fidelity gate: `mist validate` on the shared real vLLM runs, against measured data.

Two checks per run, both on measured requests the simulator never saw:
- the issue's acceptance bounds (E2E and TPOT MAPE <= 5 %, TTFT MAPE <= 20 %);
- no regression beyond the tolerance recorded in ``bench/baselines.json``
  (made by ``python bench/fidelity.py --update`` through the same library job).

The runs are replayed by :func:`mist.validate.run.validate_run`, the job behind
`mist validate` (whose ``--json`` is :meth:`ValidationResult.summary`).
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from mist.validate.baseline import check, load_baselines
from mist.validate.run import validate_run

BENCH = Path(__file__).resolve().parents[1] / "bench"
sys.path.insert(0, str(BENCH))
from runs import RUNS, validate_settings  # noqa: E402


@pytest.fixture(scope="module")
def summaries(shared):
    return {name: validate_run(validate_settings(name, shared.root)).summary() for name in RUNS}


@pytest.mark.parametrize("name", list(RUNS))
def test_acceptance_bounds(summaries, name):
    s = summaries[name]
    assert s["requests"]["matched"] == s["requests"]["measured"] == 300
    m = s["metrics"]
    assert m["e2e"]["mape"] <= 5.0
    assert m["tpot"]["mape"] <= 5.0
    assert m["ttft"]["mape"] <= 20.0


def test_no_regression_against_baselines(summaries):
    baselines = load_baselines(BENCH / "baselines.json")
    current = {name: s["metrics"] for name, s in summaries.items()}
    assert check(current, baselines) == []


def test_the_summary_names_the_arrival_rule_the_replay_applied(summaries, shared):
    # by default the engine's stamps as they are; aligned when asked on an async run with
    # a stamp on every request
    assert {s["arrival"] for s in summaries.values()} == {"engine"}
    name = next(iter(RUNS))
    aligned = validate_run(validate_settings(name, shared.root, arrival="engine-aligned"))
    assert aligned.summary()["arrival"] == aligned.arrival == "engine-aligned"
    # without async scheduling there are no in-flight plans to join: not aligned
    planned = validate_run(validate_settings(name, shared.root, arrival="engine-aligned", async_scheduling=False))
    assert planned.summary()["arrival"] == "engine"
