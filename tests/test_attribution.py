"""Error attribution: queueing vs service, on a hand-made pair of requests."""

from __future__ import annotations

import pandas as pd
import pytest

from mist.validate.align import align
from mist.validate.attribution import attribute, to_markdown


def _req(rid, sched, first, fin):
    return {"request_id": rid, "arrival_s": 0.0, "input_tokens": 10, "output_tokens": 3,
            "scheduled_s": sched, "first_token_s": first, "finished_s": fin}


def test_queue_and_service_errors_split_at_scheduling():
    meas = pd.DataFrame([_req("a", 1.0, 1.5, 3.0), _req("b", 2.0, 2.2, 4.0)])
    # a: admitted 0.5 s late, own prefill 0.1 s fast; b: queue exact, prefill 0.3 s slow
    sim = pd.DataFrame([_req("a", 1.5, 1.9, 3.4), _req("b", 2.0, 2.5, 4.3)])
    t = attribute(align(meas, sim)).set_index("metric")
    # TTFT: queue errors (0.5, 0) -> mean 0.25; service errors (-0.1, +0.3) -> mean 0.1
    assert t.loc["ttft", "queue_mean_err_s"] == pytest.approx(0.25)
    assert t.loc["ttft", "service_mean_err_s"] == pytest.approx(0.1)
    assert t.loc["ttft", "service_mean_abs_err_s"] == pytest.approx(0.2)
    # share = 0.5 / (0.5 + 0.4)
    assert t.loc["ttft", "queue_share"] == pytest.approx(0.5 / 0.9)
    # E2E: total errors (0.4, 0.3) -> service (-0.1, 0.3)
    assert t.loc["e2e", "service_mean_err_s"] == pytest.approx(0.1)
    assert "| ttft | 2 |" in to_markdown(t.reset_index())
