"""Bucketed skew alphas: the lookup reproduces the bundle's own skew_fit.csv rows, and the
errors of each correction on skew.csv reproduce the profiler's own recorded fit figures."""

from __future__ import annotations

import pandas as pd
import pytest

from mist.calibrate.skew import SkewAlpha, skew_errors, skew_from_bundle
from mist.profiles.bundle import Bundle, read_bundle
from mist.traces.errors import TraceError


def test_bucket_of_a_hand_made_batch(shared):
    bundle = read_bundle(shared.llama_bundle)
    skew = skew_from_bundle(bundle, 1)
    fit = bundle.table(1, "skew_fit")
    # 100 decodes, KV from 200 to 3000 with mean 900: skew rate (900-200)/2800 = 0.25 -> "sr<=40%";
    # n=100 -> "n<=128"; kv max 3000 -> "kvB<=4k"; decode-only -> pc 0, "kp=0"
    row = fit[(fit.pc == 0) & (fit.n_label == "n<=128") & (fit.skew_rate_label == "sr<=40%")
              & (fit.kv_big_label == "kvB<=4k") & (fit.kp_label == "kp=0")]
    assert len(row) == 1
    assert skew(0, 100, 200, 900, 3000, 0) == pytest.approx(float(row.alpha.iloc[0]))
    # a prefill chunk that is not a profiled grid value falls back to the default
    assert skew(100, 100, 200, 900, 3000, 0) == pytest.approx(skew.default)
    assert skew.default == pytest.approx(bundle.meta["skew_fit"]["per_tp"][1]["alpha_default"])


def test_without_buckets_every_batch_gets_the_default(shared):
    skew = skew_from_bundle(read_bundle(shared.llama_bundle), 1, buckets=False)
    assert skew.table == {} and skew(0, 100, 200, 900, 3000, 0) == skew.default


def test_empty_table_returns_default():
    assert SkewAlpha(0.05, {})(0, 8, 1, 2, 3, 0) == 0.05


# --- skew_errors: how well each correction reproduces the measured skewed batches ---


@pytest.mark.parametrize("name", ["llama_bundle", "qwen_bundle"])
def test_skew_errors_reproduce_the_profilers_own_fit_figures(shared, name):
    """The profiler recorded its per-bucket fit's quality in meta.yaml (fractions, 4 decimals);
    recomputed here from skew.csv and skew_fit.csv they must agree."""
    bundle = read_bundle(getattr(shared, name))
    for tp in bundle.tp_degrees:
        fit = bundle.meta["skew_fit"]["per_tp"][tp]
        got = skew_errors(bundle, tp)
        assert got["batches"] == fit["n_samples"]
        assert got["alpha_default"] == pytest.approx(fit["alpha_default"])
        buckets = got["regimes"]["all"]["buckets"]
        assert buckets["median_ape"] == pytest.approx(100 * fit["rel_err_p50"], abs=0.006)
        assert buckets["p90_ape"] == pytest.approx(100 * fit["rel_err_p90"], abs=0.006)
        assert buckets["bias"] == pytest.approx(100 * fit["signed_mean"], abs=0.006)
        regimes = got["regimes"]
        assert sum(regimes[r]["batches"] for r in regimes if r != "all") == got["batches"]


def _skew_bundle(tmp_path, rows, alpha_default=0.25):
    df = pd.DataFrame(rows, columns=["regime", "n", "pc", "kp", "kvs", "kv_big", "kv_mean",
                                     "t_mean_us", "t_max_us", "t_skew_us"])
    meta = {"skew_fit": {"per_tp": {1: {"alpha_default": alpha_default}}}}
    return Bundle(root=tmp_path, meta=meta, tables={(1, "skew"): df})


def test_skew_errors_closed_form(tmp_path):
    # t_skew = t_mean + 0.25 (t_max - t_mean) exactly: one alpha of 0.25 is exact, the mean
    # KV alone misses by 50/150 and 25/125; the inverted batch is left out
    bundle = _skew_bundle(tmp_path, [
        ("pure", 8, 0, 0, 100, 400, 175, 100.0, 300.0, 150.0),
        ("mixed", 8, 16, 512, 100, 400, 175, 100.0, 200.0, 125.0),
        ("pure", 8, 0, 0, 100, 400, 175, 100.0, 90.0, 95.0),
    ])
    got = skew_errors(bundle, 1)
    assert (got["batches"], got["inverted"]) == (2, 1)
    everything = got["regimes"]["all"]
    assert everything["default"]["mape"] == pytest.approx(0.0)
    assert everything["mean_kv"]["mape"] == pytest.approx(100 * (50 / 150 + 25 / 125) / 2, abs=1e-3)
    assert everything["mean_kv"]["bias"] == pytest.approx(-everything["mean_kv"]["mape"])
    assert got["regimes"]["pure"]["measured_extra_pct"] == pytest.approx(50.0)
    assert everything["buckets"] is None  # no skew_fit.csv: nothing to look up
    assert skew_errors(bundle, 2) is None  # no skew.csv at that degree


def test_skew_errors_reject_a_bad_time_with_its_line(tmp_path):
    bundle = _skew_bundle(tmp_path, [
        ("pure", 8, 0, 0, 100, 400, 175, 100.0, 300.0, 150.0),
        ("pure", 8, 0, 0, 100, 400, 175, 100.0, 300.0, -1.0),
    ])
    with pytest.raises(TraceError, match=r"skew\.csv:3: t_skew_us must be a positive number, got .-1\.0."):
        skew_errors(bundle, 1)
