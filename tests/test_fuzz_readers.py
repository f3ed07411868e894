"""Fuzzing the trace and profile readers with damaged variants of small valid inputs.

Each reader gets one hypothesis test: a valid input made here is damaged (truncated,
non-UTF-8 bytes, a number replaced by NaN/inf/negative/huge/fractional/text, a key
renamed, lines dropped, duplicated or swapped, the file replaced by a folder or a symlink
loop) and read. The reader must either return rows that all pass the declared checks
(:mod:`mist.traces.checks`) or raise TraceError naming a file of the input — never another
exception, never a hang. ``MIST_FUZZ_EXAMPLES`` sets the examples per reader (the slow
test runs 400 each). Below them, the regression cases of issue 25's fuzz campaign.
"""

from __future__ import annotations

import itertools
import json
import os
import re
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mist.profiles.bundle import read_bundle, to_operator_profile
from mist.traces.checks import check_columns
from mist.traces.errors import TraceError
from mist.traces.formats import read_profile, read_trace
from mist.traces.io import read_json_object, read_yaml_object
from mist.traces.readers.aiconfigurator import read_kernel_db
from mist.traces.readers.llm_inference_bench import read_llm_inference_bench
from mist.traces.readers.silicon import read_silicon, silicon_table

EXAMPLES = int(os.environ.get("MIST_FUZZ_EXAMPLES", "25"))
FUZZ = settings(max_examples=EXAMPLES, deadline=None, database=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])  # fmt: skip
BAD_NUMBERS = ["NaN", "Infinity", "-Infinity", "-1", "-0.5", "0", "1.5", "1e300", "1e15",
               "99999999999999999999999", "abc", '"abc"', "null", "", "true", "1e-300"]  # fmt: skip
NUMBER = re.compile(rb"-?\d+(?:\.\d+)?(?:[eE][+-]?\d+)?")
QUOTED = re.compile(rb'"[A-Za-z_][A-Za-z_0-9.]*"')
_COUNTER = itertools.count()

# --- valid inputs ------------------------------------------------------------------


def _bench(d: Path) -> Path:
    obj = {"duration": 2.0, "model_id": "tiny", "input_lens": [5, 6, 7], "output_lens": [3, 2, 2],
           "ttfts": [0.1, 0.15, 0.2], "itls": [[0.01, 0.02], [0.03], [0.05]], "latencies": [0.13, 0.2, 0.25],
           "start_times": [100.5, 100.0, 101.0], "errors": ["", "", ""]}  # fmt: skip
    (p := d / "bench.json").write_text(json.dumps(obj, indent=1))
    return p


def _text(name: str, text: str):
    def make(d: Path) -> Path:
        (p := d / name).write_text(text)
        return p
    return make


STREAMS = {
    "workload-jsonl": _text("w.jsonl", '{"input_toks": 2, "output_toks": 3, "arrival_time_ns": 5000000, '
                            '"input_tok_ids": [1, 2]}\n{"input_toks": 3, "output_toks": 1, '
                            '"arrival_time_ns": 1000000, "input_tok_ids": [1, 2, 3]}\n'),
    "mooncake-jsonl": _text("m.jsonl", '{"timestamp": 0, "input_length": 600, "output_length": 4, '
                            '"hash_ids": [1, 2]}\n{"timestamp": 30, "input_length": 10, '
                            '"output_length": 2, "hash_ids": [1]}\n'),
    "azure-csv": _text("az.csv", "TIMESTAMP,ContextTokens,GeneratedTokens\n2023-11-16 18:15:46.6805900,374,44\n"
                       "2023-11-16 18:15:50.9951690,396,109\n"),
    "vidur-csv": _text("vi.csv", "arrived_at,num_prefill_tokens,num_decode_tokens\n0.0,374,44\n4.31,396,109\n"),
}  # fmt: skip


def _vidur_mlp(d: Path) -> Path:
    (sub := d / "compute/a100/org/model").mkdir(parents=True)
    (p := sub / "mlp.csv").write_text("time_stats.mlp_up_proj.median,time_stats.mlp_up_proj.std,num_tokens,"
                                      "num_tensor_parallel_workers\n0.5,0.01,16,1\n0.9,0.02,32,1\n")
    return p


def _vidur_comm(d: Path) -> Path:
    (sub := d / "network/h100_dgx").mkdir(parents=True)
    (p := sub / "all_reduce.csv").write_text(
        ",time_stats.all_reduce.min,time_stats.all_reduce.max,time_stats.all_reduce.mean,"
        "time_stats.all_reduce.median,time_stats.all_reduce.std,rank,num_workers,size,collective,"
        "devices_per_node,max_devices_per_node\n0,0.1,0.3,0.2,0.2,0.05,0,2,1024,all_reduce,8,8\n"
        "1,0.2,0.5,0.3,0.3,0.05,0,4,2048,all_reduce,8,8\n")
    return p


SPLITWISE = _text("perf.csv", "model,hardware,prompt_size,batch_size,token_size,peak_power,average_power,"
                  "prompt_time,token_time,e2e_time,tensor_parallel\nllama,a100,128,1,16,1,1,20.5,10.2,30,1\n"
                  "llama,a100,128,1,16,1,1,21.5,10.4,31,1\nllama,a100,256,2,16,1,1,40.5,11.2,50,1\n")  # fmt: skip


def _kineto(d: Path) -> Path:
    ev = [{"ph": "X", "cat": "cpu_op", "name": "aten::mm", "pid": 1, "tid": 1, "ts": 10 * i, "dur": 5 + i,
           "args": {"Input Dims": [[4, 8], [8, 16]], "Input type": ["float", "float"]}} for i in range(3)]
    (p := d / "trace.json").write_text(json.dumps({"schemaVersion": 1, "traceEvents": ev, "device": "cpu0"},
                                                  indent=1))
    return p


def _bundle(d: Path) -> Path:
    (d / "tp1").mkdir()
    (d / "meta.yaml").write_text("hardware: cpu\nmodel: tiny\nvariant: fp32\n")
    (d / "tp1/dense.csv").write_text("layer,tokens,time_us\nqkv_proj,1,10.5\nqkv_proj,2,11.0\no_proj,1,5.0\n")
    (d / "tp1/attention.csv").write_text("prefill_chunk,kv_prefill,n_decode,kv_decode,time_us\n"
                                         "1,0,0,0,3.0\n0,0,1,16,4.0\n")
    return d


# --- damage --------------------------------------------------------------------------

DAMAGE = st.one_of(
    st.tuples(st.just("truncate"), st.floats(0, 1)),
    st.tuples(st.just("nonutf8"), st.floats(0, 1)),
    st.tuples(st.just("number"), st.integers(0, 50), st.sampled_from(BAD_NUMBERS)),
    st.tuples(st.just("rename"), st.integers(0, 50)),
    st.tuples(st.just("drop_line"), st.integers(0, 20)),
    st.tuples(st.just("dup_line"), st.integers(0, 20)),
    st.tuples(st.just("swap_lines"), st.integers(0, 20), st.integers(0, 20)),
    st.tuples(st.sampled_from(["folder", "loop"])),
)


def damage(path: Path, how: tuple) -> None:
    """Damage the file ``path`` in place as ``how`` says (see :data:`DAMAGE`)."""
    data, kind = path.read_bytes(), how[0]
    if kind in ("folder", "loop"):
        path.unlink()
        path.mkdir() if kind == "folder" else path.symlink_to(path.name)
        return
    lines = data.split(b"\n")
    if kind == "truncate":
        data = data[: int(len(data) * how[1])]
    elif kind == "nonutf8":
        i = int(len(data) * how[1])
        data = data[:i] + b"\xff\xfe\xc3" + data[i:]
    elif kind in ("number", "rename"):
        found = list((NUMBER if kind == "number" else QUOTED).finditer(data))
        if found:
            m = found[how[1] % len(found)]
            new = how[2].encode() if kind == "number" else b'"zzz"'
            data = data[: m.start()] + new + data[m.end():]
    elif kind == "drop_line":
        del lines[how[1] % len(lines)]
        data = b"\n".join(lines)
    elif kind == "dup_line":
        i = how[1] % len(lines)
        data = b"\n".join(lines[: i + 1] + lines[i:])
    else:
        i, j = how[1] % len(lines), how[2] % len(lines)
        lines[i], lines[j] = lines[j], lines[i]
        data = b"\n".join(lines)
    path.write_bytes(data)


def _fresh(tmp_path: Path) -> Path:
    d = tmp_path / f"ex{next(_COUNTER)}"
    d.mkdir()
    return d


def _outcome(d: Path, read, check) -> None:
    """Read; the rows must pass the declared checks, or the error must name a file in ``d``."""
    start = time.monotonic()
    try:
        result = read()
    except TraceError as exc:
        assert str(exc.path).startswith(str(d)), exc
        return
    finally:
        assert time.monotonic() - start < 20, "reader took over 20 s"
    check(result)


def _requests_ok(res) -> None:
    check_columns("result", "requests", res.requests)
    if res.tokens is not None:
        check_columns("result", "tokens", res.tokens)


def _profile_ok(res) -> None:
    check_columns("result", "operator_profile", res.table)


# --- one fuzz test per reader ----------------------------------------------------------


@FUZZ
@given(how=DAMAGE)
def test_fuzz_vllm_bench(tmp_path, how):
    d = _fresh(tmp_path)
    damage(p := _bench(d), how)
    _outcome(d, lambda: read_trace(p, "vllm-bench"), _requests_ok)


@FUZZ
@given(fmt=st.sampled_from(sorted(STREAMS)), how=DAMAGE)
def test_fuzz_request_streams(tmp_path, fmt, how):
    d = _fresh(tmp_path)
    damage(p := STREAMS[fmt](d), how)
    _outcome(d, lambda: read_trace(p, fmt), _requests_ok)


@FUZZ
@given(which=st.sampled_from(["vidur-mlp-csv", "vidur-comm-csv", "splitwise-csv", "kineto-json"]), how=DAMAGE)
def test_fuzz_profile_files(tmp_path, which, how):
    make = {"vidur-mlp-csv": _vidur_mlp, "vidur-comm-csv": _vidur_comm, "splitwise-csv": SPLITWISE,
            "kineto-json": _kineto}[which]  # fmt: skip
    d = _fresh(tmp_path)
    damage(p := make(d), how)
    _outcome(d, lambda: read_profile(p, which), _profile_ok)


@FUZZ
@given(name=st.sampled_from(["meta.yaml", "tp1/dense.csv", "tp1/attention.csv"]), how=DAMAGE)
def test_fuzz_bundle(tmp_path, name, how):
    d = _fresh(tmp_path)
    damage(_bundle(d) / name, how)
    _outcome(d, lambda: to_operator_profile(read_bundle(d)),
             lambda t: check_columns("result", "operator_profile", t))


@FUZZ
@given(how=DAMAGE, shape=st.sampled_from(["json", "yaml"]))
def test_fuzz_json_yaml_documents(tmp_path, how, shape):
    d = _fresh(tmp_path)
    p = d / f"doc.{shape}"
    p.write_text('{"a": 1, "b": [1, 2]}\n' if shape == "json" else "a: 1\nb: [1, 2]\n")
    damage(p, how)
    read = (lambda: read_json_object(p)) if shape == "json" else (lambda: read_yaml_object(p, "doc"))
    _outcome(d, read, lambda doc: None if isinstance(doc, dict) else pytest.fail(f"not a dict: {doc!r}"))


SILICON = _text("silicon.csv", "id,backend,backend_version,model_path,system,precision,mode,isl,osl,"
                "gemm_quant_mode,moe_quant_mode,batch_size,tp_size,pp_size,attention_dp_size,moe_tp_size,"
                "moe_ep_size,silicon_ttft_ms,silicon_tpot_ms\n"
                "a,vllm,0.19.0,org/m,b300_sxm,fp8,agg,8192,1024,fp8,fp8,128,4,1,1,4,1,972.31,33.44\n"
                "b,vllm,0.19.0,org/m,b300_sxm,fp8,agg,1024,1024,fp8,fp8,64,4,1,1,4,1,205.55,17.78\n")
LLM_BENCH = _text("All_results.csv", "Hardware,Num of Hardware,Framework,Model,Input Output Length,Batch Size,"
                  "Latency,Throughput\nNvidia GH200 GPU,1,TensorRT-LLM,org/m,128,1,0.688,371.9\n"
                  "Nvidia GH200 GPU,1,TensorRT-LLM,org/m,128,16,0.849,4820.8\n")


@FUZZ
@given(which=st.sampled_from(["silicon", "llm-inference-bench"]), how=DAMAGE)
def test_fuzz_benchmark_tables(tmp_path, which, how):
    d = _fresh(tmp_path)
    damage(p := (SILICON if which == "silicon" else LLM_BENCH)(d), how)
    if which == "silicon":
        _outcome(d, lambda: silicon_table(read_silicon(p)), lambda t: check_columns("r", "silicon_rows", t))
    else:
        _outcome(d, lambda: read_llm_inference_bench(p), lambda t: check_columns("r", "offline_batch_bench", t))


def _kernel_db(d: Path, column: str | None = None, value=None) -> Path:
    root = d / "sys"
    (root / "gemm/vllm/0.1.0").mkdir(parents=True)
    df = pd.DataFrame({"framework": "vllm", "version": "0.1.0", "device": "x", "gemm_dtype": "bfloat16",
                       "m": [1, 2, 4], "n": [16, 16, 16], "k": [32, 32, 32], "latency": [0.01, 0.02, 0.03]})
    if column is not None:  # one cell damaged; the column keeps one type (text or float)
        text = isinstance(value, str) or column == "gemm_dtype"
        df[column] = df[column].astype(str if text else float)
        df.loc[1, column] = None if value is None else str(value) if text else value
    df.to_parquet(root / "gemm/vllm/0.1.0/gemm_perf.parquet")
    return root


@FUZZ
@given(column=st.sampled_from(["m", "n", "k", "latency", "gemm_dtype"]),
       value=st.sampled_from([np.nan, np.inf, -1.0, 0.5, 1e300, 1e20, "abc", None]))
def test_fuzz_kernel_db_values(tmp_path, column, value):
    d = _fresh(tmp_path)
    root = _kernel_db(d, column, value)
    _outcome(d, lambda: read_kernel_db(root), lambda t: check_columns("result", "operator_profile", t))


@FUZZ
@given(how=DAMAGE)
def test_fuzz_kernel_db_bytes(tmp_path, how):
    d = _fresh(tmp_path)
    root = _kernel_db(d)
    damage(root / "gemm/vllm/0.1.0/gemm_perf.parquet", how)
    _outcome(d, lambda: read_kernel_db(root), lambda t: check_columns("result", "operator_profile", t))


@pytest.mark.slow
def test_fuzz_readers_long():
    """Every fuzz test above with 400 examples each (a pytest of this file in a child
    process, so the examples per test are set before hypothesis wraps them)."""
    import subprocess
    import sys

    env = {**os.environ, "MIST_FUZZ_EXAMPLES": "400"}
    run = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-k", "fuzz and not long",
                          __file__], env=env, capture_output=True, text=True, timeout=3000)
    assert run.returncode == 0, run.stdout[-4000:]


# --- regression cases of issue 25's fuzz campaign ----------------------------------------


def _bench_with(tmp_path, **over) -> Path:
    p = _bench(tmp_path)
    obj = json.loads(p.read_text())
    obj.update(over)
    p.write_text(json.dumps(obj).replace('"INF"', "Infinity"))
    return p


def test_bench_infinite_latency_and_latency_below_ttft_are_errors(tmp_path):
    with pytest.raises(TraceError, match=r"bench\.json: latencies\[1\] must be a finite number, found inf"):
        read_trace(_bench_with(tmp_path, latencies=[0.13, "INF", 0.25]), "vllm-bench")
    with pytest.raises(TraceError, match=r"bench\.json: latencies\[2\]: is below ttfts\[2\] \(0\.1 < 0\.2 s\)"):
        read_trace(_bench_with(tmp_path, latencies=[0.13, 0.2, 0.1]), "vllm-bench")
    with pytest.raises(TraceError, match=r"bench\.json: output_lens\[0\]: must be at most 9\.0072e\+15"):
        read_trace(_bench_with(tmp_path, output_lens=[10**20, 2, 2]), "vllm-bench")
    with pytest.raises(TraceError, match=r"bench\.json: input_lens\[0\] must be a finite number, found 'abc'"):
        read_trace(_bench_with(tmp_path, input_lens=["abc", 6, 7]), "vllm-bench")


def test_arrival_times_beyond_a_century_are_errors(tmp_path):
    p = tmp_path / "vi.csv"
    p.write_text("arrived_at,num_prefill_tokens,num_decode_tokens\n0.0,3,4\n1e15,3,4\n")
    with pytest.raises(TraceError, match=r"vi\.csv:3: arrival_s: must be at most 3\.2e\+09 .*found 1000000000000000\.0"):
        read_trace(p, "vidur-csv")
    # all at 1e15: the offsets would survive rebasing, but a float64 at 1e15 s has lost the ms
    p.write_text("arrived_at,num_prefill_tokens,num_decode_tokens\n1e15,3,4\n1e15,3,4\n")
    with pytest.raises(TraceError, match=r"vi\.csv:2: arrival_s: must be at most"):
        read_trace(p, "vidur-csv")
    p.write_text("arrived_at,num_prefill_tokens,num_decode_tokens\n0.0,3,4\n3.1e9,3,4\n")  # 98 years: fine
    assert read_trace(p, "vidur-csv").requests.column("arrival_s").to_pylist() == [0.0, 3.1e9]


def test_token_counts_beyond_64_bits_or_2_53_are_errors(tmp_path):
    w = tmp_path / "w.jsonl"
    w.write_text('{"input_toks": 18446744073709551617, "output_toks": 3, "arrival_time_ns": 0}\n')
    with pytest.raises(TraceError, match=r"w\.jsonl:1: 'input_toks' is beyond the 64-bit integer range"):
        read_trace(w, "workload-jsonl")
    w.write_text('{"input_toks": 9007199254740993, "output_toks": 3, "arrival_time_ns": 0}\n')
    with pytest.raises(TraceError, match=r"w\.jsonl:1: input_toks is above 2\^53"):
        read_trace(w, "workload-jsonl")
    v = tmp_path / "vi.csv"
    v.write_text("arrived_at,num_prefill_tokens,num_decode_tokens\n0.0,3,4\n1.0,99999999999999999999,4\n")
    with pytest.raises(TraceError, match=r"vi\.csv:3: column 'num_prefill_tokens' must be an integer of at most"):
        read_trace(v, "vidur-csv")


def _dense(tmp_path, rows: str) -> Path:
    root = _bundle(tmp_path)
    (root / "tp1/dense.csv").write_text("layer,tokens,time_us\n" + rows)
    return root


def test_bundle_rows_with_bad_tokens_times_or_conflicting_duplicates_are_errors(tmp_path):
    cases = {
        "qkv_proj,-1,10.0\n": r"dense\.csv:2: tokens: must be at least 0, found -1\.0",
        "qkv_proj,1.5,10.0\n": r"dense\.csv:2: tokens: must be a whole number, found 1\.5",
        "qkv_proj,1,1e300\n": r"dense\.csv:2: latency_s: must be at most 3600",
        "qkv_proj,1,10.0\nqkv_proj,1,1000.0\n": r"dense\.csv:2: latency_s: conflicts with another row of the "
                                                 r"same shape .* more than 10x",
    }  # fmt: skip
    for rows, message in cases.items():
        with pytest.raises(TraceError, match=message):
            read_bundle(_dense(_fresh(tmp_path), rows))
    # repeats that agree (within 10x) stay, as measured
    table = to_operator_profile(read_bundle(_dense(_fresh(tmp_path), "qkv_proj,1,10.0\nqkv_proj,1,12.0\n")))
    assert table.column("latency_s").to_pylist() == pytest.approx([3e-6, 4e-6, 10e-6, 12e-6])


def test_unreadable_newest_kernel_table_is_an_error_not_a_fallback(tmp_path):
    for bad in ("garbage", "folder", "empty"):
        root = _kernel_db(_fresh(tmp_path))
        newest = root / "gemm/vllm/0.2.0/gemm_perf.parquet"
        newest.parent.mkdir(parents=True)
        if bad == "garbage":
            newest.write_bytes(b"PAR1 not really")
        elif bad == "folder":
            newest.mkdir()
        else:
            pd.read_parquet(root / "gemm/vllm/0.1.0/gemm_perf.parquet").iloc[:0].to_parquet(newest)
        with pytest.raises(TraceError, match=re.escape(str(newest))):
            read_kernel_db(root)


def test_damaged_documents_and_paths_are_errors_naming_the_file(tmp_path):
    y = tmp_path / "meta.yaml"
    y.write_bytes(b"hardware: \xff\xfe\n")
    with pytest.raises(TraceError, match=r"meta\.yaml: cannot read doc: 'utf-8' codec"):
        read_yaml_object(y, "doc")
    root = _bundle(_fresh(tmp_path))
    (root / "meta.yaml").write_bytes(b"hardware: \xff\xfe\n")
    with pytest.raises(TraceError, match=r"meta\.yaml: cannot read file \(UnicodeDecodeError"):
        read_bundle(root)
    (root / "meta.yaml").write_text("- a list\n- not a mapping\n")
    with pytest.raises(TraceError, match=r"meta\.yaml: expected a mapping at the top level, found list"):
        read_bundle(root)
    (root / "meta.yaml").write_text("hardware: cpu\n")
    (root / "tp1/dense.csv").unlink()
    (root / "tp1/dense.csv").symlink_to("dense.csv")  # a symlink loop in place of a table
    with pytest.raises(TraceError, match=r"dense\.csv: unreadable CSV"):
        read_bundle(root)
    deep = tmp_path / "deep.json"
    deep.write_text("[" * 100000)
    with pytest.raises(TraceError, match=r"deep\.json: malformed JSON \(nested too deeply\)"):
        read_json_object(deep)
    folder = tmp_path / "w.jsonl"
    folder.mkdir()
    with pytest.raises(TraceError, match=r"w\.jsonl: cannot read file"):
        read_trace(folder, "workload-jsonl")
