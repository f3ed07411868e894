"""Metrics derived from the ``requests`` table (never stored)."""

from __future__ import annotations

import numpy as np
import pandas as pd


def latencies(requests: pd.DataFrame) -> pd.DataFrame:
    """Per-request TTFT, TPOT and E2E in seconds.

    TTFT = first_token_s - arrival_s; E2E = finished_s - arrival_s;
    TPOT = (finished_s - first_token_s) / (output_tokens - 1), NaN for one-token outputs.
    """
    ttft = requests["first_token_s"] - requests["arrival_s"]
    e2e = requests["finished_s"] - requests["arrival_s"]
    n = requests["output_tokens"].astype(float) - 1.0
    tpot = (requests["finished_s"] - requests["first_token_s"]) / n.where(n > 0, np.nan)
    return pd.DataFrame(
        {"request_id": requests["request_id"], "ttft": ttft, "tpot": tpot, "e2e": e2e}
    )
