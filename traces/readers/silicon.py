"""Reader for measured end-to-end latencies of real deployments (aiconfigurator silicon CSV).

One row per benchmarked deployment at a fixed concurrency: ``system`` (GPU type,
e.g. ``h100_sxm``), ``backend`` (vllm, sglang, trtllm) and ``backend_version``,
``model_path`` (Hugging Face id), ``precision`` / ``gemm_quant_mode`` (empty means
the checkpoint's own dtype, bf16), ``mode`` (``agg`` aggregated or ``disagg``
prefill/decode), ``isl``/``osl`` tokens, ``batch_size`` (the concurrency),
``tp_size``/``pp_size``/``attention_dp_size``/``moe_tp_size``/``moe_ep_size``, and the
measured ``silicon_ttft_ms`` and ``silicon_tpot_ms`` (ai-dynamo/aiconfigurator
``systems/silicon_sample.csv``).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from mist.traces.errors import TraceError

REQUIRED = ("system", "backend", "model_path", "mode", "isl", "osl", "batch_size", "tp_size",
            "silicon_ttft_ms", "silicon_tpot_ms")
#: counts: whole numbers where given (``batch_size`` may be empty: a disaggregated row)
COUNTS = ("isl", "osl", "batch_size", "tp_size", "pp_size", "attention_dp_size", "moe_tp_size", "moe_ep_size")
NUMERIC = ("isl", "osl", "batch_size", "tp_size", "pp_size", "attention_dp_size", "moe_tp_size",
           "moe_ep_size", "silicon_ttft_ms", "silicon_tpot_ms")


def read_silicon(path, system: str | None = None, backend: str | None = None) -> pd.DataFrame:
    """Rows of a silicon CSV with numeric columns as floats (NaN where empty).

    ``system`` / ``backend`` keep only those rows (names compared without case or
    surrounding spaces) before the values are checked, so a bad cell in another
    system's row does not stop a run. The index keeps each row's position in the file
    (line = index + 2).

    Raises
    ------
    TraceError
        Missing file or columns, or in a kept row: a non-numeric value where a number
        belongs, a latency that is not a positive finite number, a count (isl, osl,
        concurrency, parallel sizes) that is not a whole number (with its line number;
        line 1 is the header).
    """
    path = Path(path)
    if path.is_dir():
        raise TraceError(path, "is a folder; a silicon CSV file is needed")
    if not path.is_file():
        raise TraceError(path, "file not found")
    try:
        df = pd.read_csv(path, dtype=str, keep_default_na=False)
    except pd.errors.EmptyDataError:
        raise TraceError(path, "empty file (expected a header line and rows)") from None
    except (pd.errors.ParserError, UnicodeDecodeError) as exc:
        raise TraceError(path, f"not a readable CSV file ({str(exc).strip().splitlines()[-1]})") from exc
    missing = [c for c in REQUIRED if c not in df.columns]
    if missing:
        raise TraceError(path, f"missing columns {missing}", line=1)
    for col in ("system", "backend", "backend_version", "model_path", "mode"):
        if col in df.columns:
            df[col] = df[col].str.strip()
    if system is not None:
        df = df[df["system"].str.casefold() == system.strip().casefold()]
    if backend is not None:
        df = df[df["backend"].str.casefold() == backend.strip().casefold()]
    for col in NUMERIC:
        if col not in df.columns:
            df[col] = ""
        raw = df[col].str.strip()
        num = pd.to_numeric(raw.where(raw != "", None), errors="coerce")
        bad = np.flatnonzero(num.isna().to_numpy() & (raw != "").to_numpy())
        if len(bad):
            raise TraceError(path, f"column {col!r} holds {raw.iloc[bad[0]]!r}, not a number",
                             line=int(df.index[bad[0]]) + 2)
        df[col] = num.astype(float)
    for col in ("silicon_ttft_ms", "silicon_tpot_ms"):
        values = df[col].to_numpy()
        bad = np.flatnonzero(~((values > 0) & np.isfinite(values)))
        if len(bad):
            raise TraceError(path, f"{col} must be a positive finite number of ms, got {float(values[bad[0]])}",
                             line=int(df.index[bad[0]]) + 2)
    for col in COUNTS:
        values = df[col].to_numpy()
        least = 1 if col in ("isl", "osl", "batch_size", "tp_size") else 0  # 0: "not used" in some rows
        bad = np.flatnonzero(~np.isnan(values) & ((values < least) | (values != np.floor(values))
                                                  | ~np.isfinite(values)))
        if len(bad):
            raise TraceError(path, f"{col} must be a whole number of at least {least}, got {float(values[bad[0]])}",
                             line=int(df.index[bad[0]]) + 2)
    for col in ("isl", "osl"):
        bad = np.flatnonzero(np.isnan(df[col].to_numpy()))
        if len(bad):
            raise TraceError(path, f"{col} is empty", line=int(df.index[bad[0]]) + 2)
    df.attrs["source"] = str(path)
    return df
