"""The serving-path profiling stream and its engine hook (no vLLM needed)."""

from __future__ import annotations

import numpy as np

from mist.profiles.measure.serving_steps import SITECUSTOMIZE, stream


def test_stream_is_seeded_and_shaped():
    a, b = stream(32000, 512), stream(32000, 512)
    assert a == b and len(a) == 160
    arrivals = np.array([r["arrival_s"] for r in a])
    assert np.all(np.diff(arrivals) >= 0)
    for r in a:
        assert 16 <= r["input_toks"] < 256 and 8 <= r["output_toks"] <= 64
        assert len(r["input_tok_ids"]) == r["input_toks"]
    # three load levels: the last 60 requests arrive ~20x denser than the first 40
    first, last = np.diff(arrivals[:40]).mean(), np.diff(arrivals[-60:]).mean()
    assert first / last > 8


def test_hook_source_compiles_and_is_inert_without_the_variable():
    code = compile(SITECUSTOMIZE, "sitecustomize.py", "exec")
    exec(code, {"__name__": "sitecustomize"})  # MIST_STEP_LOG unset: imports nothing heavy
