"""Alignment and error metrics, checked against hand-computed answers."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from mist.validate.align import align
from mist.validate.metrics import (
    SUMMARY_KEYS,
    error_summary,
    excluded,
    format_table,
    rounded,
    summarize,
)


def _requests(ids, arrival, first, finished, out_tokens, scheduled=None):
    """A minimal ``requests`` frame (times in s)."""
    df = pd.DataFrame(
        {
            "request_id": ids,
            "arrival_s": np.asarray(arrival, dtype=float),
            "input_tokens": [100] * len(ids),
            "output_tokens": out_tokens,
            "first_token_s": np.asarray(first, dtype=float),
            "finished_s": np.asarray(finished, dtype=float),
        }
    )
    if scheduled is not None:
        df["scheduled_s"] = np.asarray(scheduled, dtype=float)
    return df


def test_error_summary_hand_computed():
    s = error_summary(np.array([1.0, 2.0, 4.0]), np.array([1.1, 1.8, 4.0]))
    assert tuple(s) == SUMMARY_KEYS
    # APEs 10, 10, 0; signed +10, -10, 0
    assert s["mape"] == pytest.approx(20 / 3)
    assert s["median_ape"] == pytest.approx(10.0)
    assert s["p90_ape"] == pytest.approx(10.0)  # sorted [0, 10, 10], rank 1.8
    assert s["bias"] == pytest.approx(0.0, abs=1e-12)
    assert s["mean_error"] == pytest.approx((6.9 - 7.0) / 7.0 * 100)
    assert s["p50_error"] == pytest.approx((1.8 - 2.0) / 2.0 * 100)
    # linear percentile at rank 0.9*2 = 1.8: sim 1.8+0.8*2.2, meas 2+0.8*2
    assert s["p90_error"] == pytest.approx((3.56 - 3.6) / 3.6 * 100)
    assert s["p99_error"] == pytest.approx((3.956 - 3.96) / 3.96 * 100)


def test_error_summary_uneven_apes():
    s = error_summary([1.0, 2.0, 4.0, 5.0], [1.1, 1.8, 4.0, 6.0])
    # APEs sorted [0, 10, 10, 20]; rank 0.9*3 = 2.7 -> 10 + 0.7*10
    assert s["mape"] == pytest.approx(10.0)
    assert s["median_ape"] == pytest.approx(10.0)
    assert s["p90_ape"] == pytest.approx(17.0)
    assert s["bias"] == pytest.approx(5.0)  # (10 - 10 + 0 + 20) / 4


def test_error_summary_excludes_nan_and_nonpositive():
    meas = np.array([2.0, np.nan, 0.0, 2.0, -1.0, 4.0])
    sim = np.array([3.0, 1.0, 1.0, np.nan, 1.0, 4.0])
    s = error_summary(meas, sim)
    assert s["mape"] == pytest.approx(25.0)  # rows 0 and 5: APE 50 and 0
    assert s["bias"] == pytest.approx(25.0)


def test_error_summary_all_invalid_is_nan():
    s = error_summary([np.nan, 0.0], [1.0, 1.0])
    assert all(math.isnan(v) for v in s.values())
    assert rounded(s) == dict.fromkeys(SUMMARY_KEYS)


def test_align_counts_unmatched_and_derives_latencies():
    meas = _requests(
        ["a", "b", "c"], [0, 1, 2], [0.5, 1.2, 2.4], [2.5, 3.2, 2.4], [5, 3, 1], [0.1, 1.0, 2.2]
    )
    sim = _requests(["d", "c", "b"], [0, 2, 1], [1, 2.2, 1.3], [2, 3.0, 3.3], [5, 1, 3])
    res = align(meas, sim)
    assert (res.measured, res.simulated, res.matched) == (3, 3, 2)
    assert res.only_measured == ("a",) and res.only_simulated == ("d",)
    f = res.frame
    assert list(f["request_id"]) == ["b", "c"]  # sorted by arrival
    assert f["ttft_meas"].tolist() == pytest.approx([0.2, 0.4])
    assert f["ttft_sim"].tolist() == pytest.approx([0.3, 0.2])
    assert f["tpot_meas"].iloc[0] == pytest.approx(1.0)  # (3.2-1.2)/(3-1)
    assert math.isnan(f["tpot_meas"].iloc[1])  # one output token
    assert f["e2e_sim"].tolist() == pytest.approx([2.3, 1.0])
    assert f["queue_meas"].tolist() == pytest.approx([0.0, 0.2])
    assert f["queue_sim"].isna().all()  # simulated side has no scheduled_s
    assert excluded(res) == {"ttft": 0, "tpot": 1, "e2e": 0}
    m = summarize(res)
    assert m["ttft"]["mape"] == pytest.approx((50 + 50) / 2)
    assert m["tpot"]["mape"] == pytest.approx(0.0)


def test_align_rejects_duplicate_ids():
    meas = _requests(["a", "a"], [0, 1], [1, 2], [2, 3], [2, 2])
    with pytest.raises(ValueError, match="duplicate"):
        align(meas, meas.iloc[:1])


def test_format_table_plain_and_markdown():
    s = error_summary([1.0, 2.0, 4.0], [1.1, 1.8, 4.0])
    metrics = {"ttft": s, "tpot": dict.fromkeys(SUMMARY_KEYS, float("nan")), "e2e": s}
    text = format_table(metrics)
    lines = text.splitlines()
    assert len(lines) == 5 and len({len(line) for line in lines}) == 1  # fixed width
    assert lines[0].split()[0] == "metric" and "MAPE" in lines[0]
    assert lines[2].split()[:2] == ["ttft", "6.67"]
    assert "n/a" in lines[3] and "-10.00" in lines[2]
    md = format_table(metrics, markdown=True).splitlines()
    assert md[0].startswith("| metric") and set(md[1]) <= set("|-: ")


def test_rounded_nested():
    assert rounded({"a": {"b": 1.234567, "c": [np.float64(2.000049), 3]}}) == {
        "a": {"b": 1.2346, "c": [2.0, 3]}
    }
