"""`mist ingest`: detection, outputs, summaries, and all-or-nothing writes."""

from __future__ import annotations

import argparse
import json

import pytest

from mist.profiles.ingest import IngestSettings, ingest
from mist.traces.errors import TraceError
from mist.traces.io import read_table
from mist.validate.cli import ingest as cmd_ingest


def _parser():
    p = argparse.ArgumentParser(prog="mist ingest", description=cmd_ingest.__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    cmd_ingest.add_arguments(p)
    return p


def _ingest(argv):
    return cmd_ingest.run(_parser().parse_args(argv))


def _vidur(path, rows="0.0,3,4\n1.5,5,0\n2.0,6,7\n"):
    path.write_text("arrived_at,num_prefill_tokens,num_decode_tokens\n" + rows)
    return path


def test_help_has_an_example():
    text = _parser().format_help()
    assert "example:" in text and "--out DIR" in text and "mooncake-jsonl" in text


def test_ingest_writes_tables_meta_and_summary(tmp_path, capsys):
    src = _vidur(tmp_path / "trace.csv")
    out = tmp_path / "out"
    assert _ingest([str(src), "--out", str(out)]) == 0
    table = read_table(out / "trace.requests.parquet", expect="requests")
    assert table.num_rows == 2
    meta = json.loads((out / "trace.meta.json").read_text())
    assert meta["rows_read"] == 3 and meta["rows_written"] == 2
    assert meta["skipped"] == {"zero num_decode_tokens (nothing to decode)": 1}
    assert not (out / "trace.tokens.parquet").exists()
    printed = capsys.readouterr().out
    assert "vidur-csv, 3 rows read, 2 requests; skipped 1: 1 zero num_decode_tokens" in printed


def test_library_job_returns_what_it_read_and_wrote(tmp_path, capsys):
    src = _vidur(tmp_path / "trace.csv")
    done = ingest(IngestSettings((src,), tmp_path / "out"))
    assert capsys.readouterr().out == ""  # the library prints nothing; the CLI does
    (item,) = done.inputs
    assert item.stem == "trace" and item.result.requests.num_rows == 2 and done.table is None
    assert [f.name for f in item.files] == ["trace.requests.parquet", "trace.meta.json"]
    assert all(f.is_file() for f in item.files)
    with pytest.raises(TraceError, match="takes operator profiles only"):
        ingest(IngestSettings((src,), tmp_path / "all.parquet"))
    assert not (tmp_path / "all.parquet").exists()


def test_one_bad_input_writes_nothing(tmp_path):
    good = _vidur(tmp_path / "good.csv")
    bad = _vidur(tmp_path / "bad.csv", rows="0.0,3,4\n1.0,3\n")
    out = tmp_path / "out"
    with pytest.raises(TraceError, match=r"bad\.csv:3: column 'num_decode_tokens'"):
        _ingest([str(good), str(bad), "--out", str(out)])
    assert not out.exists() or not any(out.iterdir())


def test_forced_format_and_stem_clash(tmp_path):
    a = _vidur(tmp_path / "t.csv")
    with pytest.raises(TraceError, match="missing columns"):
        _ingest([str(a), "--format", "azure-csv", "--out", str(tmp_path / "o")])
    (tmp_path / "d").mkdir()
    b = _vidur(tmp_path / "d" / "t.csv")
    with pytest.raises(TraceError, match="already used"):
        _ingest([str(a), str(b), "--out", str(tmp_path / "o")])
    assert not (tmp_path / "o").exists()


def test_ingest_real_run_and_bench(shared, tmp_path, capsys):
    run = shared.llama_run
    bench = shared.vllm_bench_cpu / "tiny-llama-rate1.5"
    assert _ingest([str(run), str(bench), "--out", str(tmp_path)]) == 0
    assert read_table(tmp_path / "Llama-3.1-8B.requests.parquet", expect="requests").num_rows == 300
    assert (
        read_table(tmp_path / "tiny-llama-rate1.5.tokens.parquet", expect="tokens").num_rows == 3840
    )
    meta = json.loads((tmp_path / "Llama-3.1-8B.meta.json").read_text())
    assert meta["engine_kwargs"]["max_num_batched_tokens"] == 2048 and "clock_offset_s" in meta
    assert (
        "vllm-bench, 60 rows read, 60 requests, 3840 token times; nothing skipped"
        in capsys.readouterr().out
    )
