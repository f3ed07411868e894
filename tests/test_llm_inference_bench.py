"""Reader of LLM-Inference-Bench offline batch tables: layouts, units, malformed input."""

from __future__ import annotations

import pytest

from mist.traces.errors import TraceError
from mist.traces.io import read_table, write_table
from mist.traces.readers.llm_inference_bench import parallelism_kind, read_llm_inference_bench
from mist.traces.schema import OFFLINE_BATCH_BENCH, SCHEMAS

HEADER = "Hardware,Num of Hardware,Framework,Model,Input Output Length,Batch Size,Latency,Throughput\n"
ROW = "Nvidia H100 GPU,1,vLLM,meta-llama/Llama-2-7b-hf,128,16,1.14,3600.0\n"


def _csv(tmp_path, text, name="bench.csv"):
    path = tmp_path / name
    path.write_text(text)
    return path


def test_all_results_layout_maps_names_and_lengths(tmp_path):
    t = read_llm_inference_bench(_csv(tmp_path, HEADER + ROW + "\n" + ROW)).to_pylist()
    assert len(t) == 2 and t[1]["line"] == 4  # the blank line 3 is not a row
    row = t[0]
    assert row["hardware"] == "Nvidia H100 GPU" and row["num_devices"] == 1
    assert row["input_tokens"] == row["output_tokens"] == 128 and row["batch_size"] == 16
    assert row["latency_s"] == 1.14 and row["ttft_s"] is None and row["parallelism"] == ""


def test_ttft_layout_reads_itl_in_ms_and_optional_cells(tmp_path):
    text = ("Hardware,Num of Hardware,Framework,Model,Input Length,Output Length,Batch Size,"
            "TTFT Latency,end_latency \n\n"
            "AMD MI300X GPU,1,vLLM,meta-llama/Llama-2-7b-hf,1024,1,16,2.27,14.6\n"
            "Nvidia GH200 GPU,1,TensorRT-LLM,meta-llama/Llama-2-7b-hf,1024,1,16,0.33\n")
    t = read_llm_inference_bench(_csv(tmp_path, text))
    assert t.schema.metadata[b"mist.layout"] == b"ttft_itl"
    a, b = t.to_pylist()
    assert a["output_tokens"] == 1 and a["latency_s"] == a["ttft_s"] == 2.27
    assert a["itl_s"] == pytest.approx(0.0146) and b["itl_s"] is None


@pytest.mark.parametrize(
    ("text", "kind"),
    [("Tensor Parallelism", "tp"), ("PP", "pp"), ("EP", "ep"),
     ("Hybird Tensor (2) and Pipeline (2) Parallelism", "tp+pp"), ("Hybrid TP = 2 and EP = 2", "tp+ep")],
)
def test_parallelism_types_are_normalised(text, kind):
    assert parallelism_kind(text) == kind


@pytest.mark.parametrize(
    ("text", "match", "line"),
    [
        ("Hardware,Model,Latency\nH100,m,1\n", "unrecognised header", 1),
        (HEADER + ROW.replace("1.14", "fast"), "'Latency' must be a positive number", 2),
        (HEADER + ROW + ROW.replace(",16,", ",0,"), "'Batch Size' must be a positive integer", 3),
        (HEADER + ROW.replace(",16,", ",16.5,"), "'Batch Size' must be a positive integer", 2),
        (HEADER + ROW.replace("\n", ",9\n"), "expected 8 fields, found 9", 2),
        (HEADER + "Nvidia H100 GPU,1,vLLM,m,128,16\n", "expected 8 fields, found 6", 2),
        (HEADER + "," + ROW.split(",", 1)[1], "'Hardware' is empty", 2),
        (HEADER, "no data rows", None),
        ("", "empty file", None),
    ],
)
def test_malformed_input_names_file_line_and_reason(tmp_path, text, match, line):
    path = _csv(tmp_path, text)
    with pytest.raises(TraceError, match=match) as info:
        read_llm_inference_bench(path)
    assert info.value.path == str(path) and info.value.line == line


def test_unknown_parallelism_is_rejected_with_its_line(tmp_path):
    header = HEADER.replace("Batch Size,", "Batch Size,Parallelism Type,")
    text = header + ROW.replace(",16,", ",16,Data Parallelism,")
    with pytest.raises(TraceError, match="unknown parallelism") as info:
        read_llm_inference_bench(_csv(tmp_path, text))
    assert info.value.line == 2


def test_real_tables(shared):
    root = shared.llm_bench_csv.parent
    counts = {"All_results.csv": 3667, "TP_PP_Results.csv": 371, "all_results_TTFT_ITL.csv": 30}
    for name, rows in counts.items():
        t = read_llm_inference_bench(root / name)
        assert t.num_rows == rows and t.schema.equals(OFFLINE_BATCH_BENCH, check_metadata=False), name
    pp = read_llm_inference_bench(root / "TP_PP_Results.csv").column("parallelism").to_pylist()
    assert set(pp) == {"tp", "pp", "ep", "tp+pp", "tp+ep"}


def test_table_is_declared_once_and_round_trips_through_parquet(tmp_path):
    text = (HEADER + ROW + ROW.replace("vLLM", "llama.cpp")).replace(",1.14,", ",0.5,")
    table = read_llm_inference_bench(_csv(tmp_path, text))
    assert SCHEMAS["offline_batch_bench"] is OFFLINE_BATCH_BENCH
    assert table.schema.metadata[b"mist.table"] == b"offline_batch_bench"
    write_table(table, tmp_path / "bench.parquet")
    back = read_table(tmp_path / "bench.parquet", expect="offline_batch_bench")
    assert back.equals(table) and back.schema.equals(table.schema, check_metadata=True)
    assert back.column("latency_s").to_pylist() == [0.5, 0.5]  # seconds, as read
