"""Reader for Splitwise's measured iteration times (``splitwise-csv``,
Mutinifni/splitwise-sim ``data/perf_model.csv``).

One row per measured request batch: ``model``, ``hardware`` (``a100-80gb``,
``h100-80gb``, ``h100-80gb-pcap`` = power-capped), ``tensor_parallel``,
``prompt_size`` (tokens per prompt), ``batch_size`` (prompts), ``token_size``
(output tokens per request), ``prompt_time`` (ms, the prefill iteration of the
whole batch) and ``token_time`` (ms, the mean decode iteration: ``e2e_time`` ≈
``prompt_time + (token_size - 1) * token_time``). ``peak_power``,
``average_power`` and ``e2e_time`` are not read. Each configuration was run several
times; splitwise-sim itself uses the median of the repeats.

Rows become two operators, aggregated over the repeats of one feature point
(median ``latency_s``, p90 − p10 ``spread_s``, ``samples`` = repeats):

``prefill_iteration``  ``sequences`` = batch_size, ``tokens`` = batch_size ×
                       prompt_size. Prefill does not depend on ``token_size``, so
                       runs that differ only in it are repeats of one point.
``decode_iteration``   ``sequences`` = ``n_decode`` = ``tokens`` = batch_size,
                       ``kv_decode`` = prompt_size + token_size // 2: the mean KV
                       length over a request's decode iterations (prompt_size + i
                       for i = 1 … token_size − 1, mean prompt_size + token_size / 2).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from mist.traces.readers.base import read_csv
from mist.traces.readers.profile_base import (
    P90_P10,
    ProfileResult,
    Resolver,
    check_positive,
    check_times,
    finish_profile,
    sample_stats,
)

FORMAT = "splitwise-csv"
MS = 1e-3  # s per ms
INTS = ("tensor_parallel", "prompt_size", "batch_size", "token_size")
TIMES = ("prompt_time", "token_time")
COLUMNS = ("model", "hardware") + INTS + TIMES
# operator -> (time column, columns whose values make one feature point)
OPERATORS = {
    "prefill_iteration": ("prompt_time", ("model", "hardware", "tensor_parallel", "prompt_size", "batch_size")),
    "decode_iteration": ("token_time", ("model", "hardware", "tensor_parallel", "prompt_size", "batch_size",
                                        "token_size")),
}  # fmt: skip


def _aggregate(df: pd.DataFrame, operator: str) -> pd.DataFrame:
    """One row per feature point of ``operator``: keys, latency_s, spread_s, samples."""
    time_col, keys = OPERATORS[operator]
    rows = []
    for key, group in df.groupby(list(keys), sort=True):
        median, spread, n = sample_stats(group[time_col].to_numpy(np.float64) * MS)
        rows.append((*key, median, spread, n))
    out = pd.DataFrame(rows, columns=[*keys, "latency_s", "spread_s", "samples"])
    out["operator"] = operator
    return out


def _features(rows: pd.DataFrame) -> dict:
    batch = rows["batch_size"].to_numpy(np.int64)
    prefill = (rows["operator"] == "prefill_iteration").to_numpy()
    decode_kv = rows["prompt_size"] + rows["token_size"].fillna(0).astype(np.int64) // 2
    return {
        "sequences": batch,
        "tokens": np.where(prefill, batch * rows["prompt_size"].to_numpy(np.int64), batch),
        "n_decode": [None if p else int(b) for p, b in zip(prefill, batch)],
        "kv_decode": [None if p else int(kv) for p, kv in zip(prefill, decode_kv)],
    }


def read_splitwise_csv(path, resolve_hardware: Resolver | None = None) -> ProfileResult:
    """Read Splitwise's ``perf_model.csv`` (see the module docstring).

    Parameters
    ----------
    path : str or Path
        The CSV.
    resolve_hardware : callable, optional
        Maps the file's hardware names (``a100-80gb``) to canonical ones.

    Returns
    -------
    ProfileResult
        ``prefill_iteration`` and ``decode_iteration`` rows by (model, hardware, tp,
        feature point), with ``samples`` = measured repeats.
    """
    path = Path(path)
    df = read_csv(path, COLUMNS, dict.fromkeys(INTS, "int") | dict.fromkeys(TIMES, "float"))
    lines = np.arange(len(df), dtype=np.int64) + 2
    for col in INTS:
        check_positive(path, col, df[col].to_numpy(np.int64), lines)
    for col in TIMES:
        check_times(path, col, df[col].to_numpy(np.float64), lines)
    rows = pd.concat([_aggregate(df, op) for op in OPERATORS], ignore_index=True)
    columns = {
        "hardware": rows["hardware"].tolist(),
        "model": rows["model"].tolist(),
        "operator": rows["operator"].tolist(),
        "tp": rows["tensor_parallel"].to_numpy(np.int64),
        **_features(rows),
        "latency_s": rows["latency_s"].to_numpy(np.float64),
        "spread_s": rows["spread_s"].to_numpy(np.float64),
        "samples": rows["samples"].to_numpy(np.int64),
        "source": [f"{FORMAT}:{OPERATORS[op][0]}" for op in rows["operator"]],
    }
    return finish_profile(FORMAT, path, columns, resolve_hardware, spread=P90_P10,
                          rows_read=len(df))  # fmt: skip
