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

from traces.errors import TraceError

REQUIRED = ("system", "backend", "model_path", "mode", "isl", "osl", "silicon_ttft_ms", "silicon_tpot_ms")
NUMERIC = ("isl", "osl", "batch_size", "tp_size", "pp_size", "attention_dp_size", "moe_tp_size",
           "moe_ep_size", "silicon_ttft_ms", "silicon_tpot_ms")


def read_silicon(path) -> pd.DataFrame:
    """Rows of a silicon CSV with numeric columns as floats (NaN where empty).

    Raises
    ------
    TraceError
        Missing file or columns, or a non-numeric value where a number belongs
        (with its line number; line 1 is the header).
    """
    path = Path(path)
    if not path.is_file():
        raise TraceError(path, "file not found")
    try:
        df = pd.read_csv(path, dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, UnicodeDecodeError) as exc:
        raise TraceError(path, f"not a readable CSV file ({exc})") from exc
    missing = [c for c in REQUIRED if c not in df.columns]
    if missing:
        raise TraceError(path, f"missing columns {missing}", line=1)
    for col in NUMERIC:
        if col not in df.columns:
            df[col] = ""
        raw = df[col].str.strip()
        num = pd.to_numeric(raw.where(raw != "", None), errors="coerce")
        bad = np.flatnonzero(num.isna().to_numpy() & (raw != "").to_numpy())
        if len(bad):
            raise TraceError(path, f"column {col!r} holds {raw.iloc[bad[0]]!r}, not a number", line=int(bad[0]) + 2)
        df[col] = num.astype(float)
    for col in ("silicon_ttft_ms", "silicon_tpot_ms"):
        bad = np.flatnonzero(~(df[col] > 0).to_numpy())
        if len(bad):
            raise TraceError(path, f"{col} must be a positive number of ms", line=int(bad[0]) + 2)
    df.attrs["source"] = str(path)
    return df
