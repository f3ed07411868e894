"""The silicon rows table (traces/schema.py SILICON_ROWS): reader -> table -> Parquet -> table."""

from __future__ import annotations

import numpy as np
import pytest

from mist.traces.io import read_table, write_table
from mist.traces.readers.silicon import COUNTS, REQUIRED, read_silicon, silicon_table
from mist.traces.schema import SCHEMAS, SILICON_ROWS

CSV = ("id,system,backend,backend_version,model_path,precision,mode,isl,osl,batch_size,tp_size,pp_size,"
       "attention_dp_size,moe_tp_size,moe_ep_size,silicon_ttft_ms,silicon_tpot_ms,extra\n"
       "a,h100_sxm,vllm,0.19.0,Qwen/Qwen3-32B,,agg,1024,128,8,2,1,,,,154.25,18.0,x\n"
       "b, H100_SXM ,vllm,,Qwen/Qwen3-32B,fp8,disagg,4096,1024,,,,,,,972.3109823355117,33.442908754168066,y\n")


def _round_trip(rows, tmp_path):
    table = silicon_table(rows)
    path = tmp_path / "silicon.parquet"
    write_table(table, path)
    back = read_table(path, expect="silicon_rows")
    assert back.equals(table) and back.schema.equals(SILICON_ROWS, check_metadata=False)
    return back


def test_silicon_rows_is_a_canonical_table_and_the_reader_takes_its_columns_from_it():
    assert SCHEMAS["silicon_rows"] is SILICON_ROWS
    assert set(REQUIRED) == {"system", "backend", "model_path", "mode", "isl", "osl", "batch_size", "tp_size",
                             "silicon_ttft_ms", "silicon_tpot_ms"}
    assert "attention_dp_size" in COUNTS and "silicon_ttft_ms" not in COUNTS


def test_write_read_round_trip_keeps_every_value(tmp_path):
    path = tmp_path / "s.csv"
    path.write_text(CSV)
    rows = read_silicon(path)
    back = _round_trip(rows, tmp_path).to_pylist()
    assert [r["id"] for r in back] == ["a", "b"]
    assert back[0]["batch_size"] == 8 and back[0]["pp_size"] == 1 and back[0]["attention_dp_size"] is None
    assert back[1]["system"] == "H100_SXM" and back[1]["batch_size"] is None and back[1]["backend_version"] is None
    # latencies stay in ms, bit for bit (the outputs echo them)
    assert [r["silicon_ttft_ms"] for r in back] == [154.25, 972.3109823355117]
    assert back[1]["silicon_tpot_ms"] == 33.442908754168066
    assert "extra" not in back[0]  # columns the table does not declare stay in the reader's frame only
    assert list(rows["extra"]) == ["x", "y"]


def test_round_trip_of_the_shared_sample(shared, tmp_path):
    rows = read_silicon(shared.silicon_csv)
    back = _round_trip(rows, tmp_path)
    assert back.num_rows == len(rows)
    for col in ("silicon_ttft_ms", "silicon_tpot_ms"):
        assert np.array_equal(back[col].to_numpy(), rows[col].to_numpy())
    for col in COUNTS:
        got = back[col].to_numpy(zero_copy_only=False).astype(float)
        assert np.array_equal(got, rows[col].to_numpy(), equal_nan=True), col


def test_a_table_without_a_required_column_is_refused(tmp_path):
    path = tmp_path / "s.csv"
    path.write_text(CSV)
    rows = read_silicon(path).drop(columns=["isl"])
    with pytest.raises(KeyError, match="isl"):
        silicon_table(rows)
