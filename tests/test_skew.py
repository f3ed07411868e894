"""Bucketed skew alphas: the lookup reproduces the bundle's own skew_fit.csv rows."""

from __future__ import annotations

import pytest

from profiles.bundle import read_bundle
from replay.skew import SkewAlpha, skew_from_bundle

LLAMA = "profiles/llmservingsim/RTXPRO6000/meta-llama/Llama-3.1-8B/bf16"


def test_bucket_of_a_hand_made_batch(shared_data):
    bundle = read_bundle(shared_data / LLAMA)
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


def test_without_buckets_every_batch_gets_the_default(shared_data):
    skew = skew_from_bundle(read_bundle(shared_data / LLAMA), 1, buckets=False)
    assert skew.table == {} and skew(0, 100, 200, 900, 3000, 0) == skew.default


def test_empty_table_returns_default():
    assert SkewAlpha(0.05, {})(0, 8, 1, 2, 3, 0) == 0.05
