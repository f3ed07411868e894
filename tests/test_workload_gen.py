"""Synthetic request streams: determinism, rates, lengths, shared prefixes, the spec."""

from __future__ import annotations

import numpy as np
import pytest

from mist.traces.errors import TraceError
from mist.traces.formats import read_trace
from mist.traces.workload_gen import generate, parse_spec, write_workload


def test_same_arguments_give_byte_identical_files(tmp_path):
    a, b = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    write_workload(a, generate(50, 2.0, input_dist="lognormal", input_spread=0.5, seed=3))
    write_workload(b, generate(50, 2.0, input_dist="lognormal", input_spread=0.5, seed=3))
    assert a.read_bytes() == b.read_bytes()
    write_workload(b, generate(50, 2.0, input_dist="lognormal", input_spread=0.5, seed=4))
    assert a.read_bytes() != b.read_bytes()


def test_file_reads_back_as_a_workload(tmp_path):
    path = tmp_path / "w.jsonl"
    records = generate(20, 1.5, input_len=32, output_len=8, prefix=4, seed=0)
    write_workload(path, records)
    r = read_trace(path)  # detected as workload-jsonl
    assert r.meta["source_format"] == "workload-jsonl" and r.requests.num_rows == 20
    assert r.requests.column("prompt_token_ids")[0].as_py() == records[0]["input_tok_ids"]


@pytest.mark.parametrize("arrival,burst", [("poisson", 1.0), ("gamma", 0.25), ("gamma", 4.0)])
def test_mean_rate_and_burstiness(arrival, burst):
    n, rate = 20_000, 3.0
    t = np.array([r["arrival_time_ns"] for r in generate(n, rate, arrival=arrival,
                                                          burstiness=burst, input_len=2,
                                                          output_len=1, seed=1)]) / 1e9  # fmt: skip
    gaps = np.diff(t)
    assert t[0] == 0 and np.all(gaps >= 0)
    # Mean gap 1/rate within 5 standard errors; gamma CV^2 = 1/shape.
    se = (1 / rate) / np.sqrt(burst * (n - 1))
    assert abs(gaps.mean() - 1 / rate) < 5 * se
    assert gaps.var() / gaps.mean() ** 2 == pytest.approx(1 / burst, rel=0.15)


def test_lengths_fixed_uniform_lognormal():
    fixed = generate(100, 1.0, input_len=17, output_len=5, seed=0)
    assert {r["input_toks"] for r in fixed} == {17} and {r["output_toks"] for r in fixed} == {5}
    uni = generate(2000, 1.0, input_len=100, input_dist="uniform", input_spread=0.5, seed=0)
    ins = np.array([r["input_toks"] for r in uni])
    assert ins.min() == 50 and ins.max() == 150 and abs(ins.mean() - 100) < 2
    logn = generate(4000, 1.0, output_len=64, output_dist="lognormal", output_spread=0.4, seed=0)
    outs = np.array([r["output_toks"] for r in logn])
    assert abs(np.median(outs) - 64) < 3 and outs.min() >= 1
    assert all(len(r["input_tok_ids"]) == r["input_toks"] for r in logn[:50])


def test_shared_prefix_and_vocab():
    records = generate(30, 1.0, input_len=40, input_dist="uniform", input_spread=0.5,
                       prefix=16, vocab_size=50, seed=2)  # fmt: skip
    heads = {tuple(r["input_tok_ids"][:16]) for r in records}
    tails = {tuple(r["input_tok_ids"][16:]) for r in records}
    assert len(heads) == 1 and len(tails) == 30
    assert all(r["input_toks"] >= 17 for r in records)
    ids = np.concatenate([r["input_tok_ids"] for r in records])
    assert ids.min() >= 0 and ids.max() < 50


def test_bad_arguments_raise():
    with pytest.raises(ValueError, match="prefix"):
        generate(5, 1.0, input_len=8, prefix=8)
    with pytest.raises(ValueError, match="arrival law"):
        generate(5, 1.0, arrival="weibull")
    with pytest.raises(ValueError, match="rate"):
        generate(5, 0.0)


def test_spec_parsing():
    kw = parse_spec("gamma:n=60,rate=1.5,burst=0.5,in=256,out=64,prefix=32,in_dist=uniform")
    assert kw == {"arrival": "gamma", "n": 60, "rate": 1.5, "burstiness": 0.5, "input_len": 256,
                  "output_len": 64, "prefix": 32, "input_dist": "uniform"}  # fmt: skip
    for bad, why in [("poisson:rate=1", "lacks"), ("zipf:n=1,rate=1", "unknown arrival"),
                     ("poisson:n=1,rate=1,colour=3", "known keys"), ("poisson:n=x,rate=1", "int")]:
        with pytest.raises(TraceError, match=why):
            parse_spec(bad)
