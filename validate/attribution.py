"""Where a request's error comes from: queueing for admission, or its own service.

For each matched request, the latency from arrival to an event (first token, last
token) splits at the instant the engine first scheduled it::

    ttft = queue + prefill service        (queue = scheduled_s - arrival_s)
    e2e  = queue + prefill + decode service

so simulated-minus-measured error splits the same way: ``queue_sim - queue_meas``
(the replay admitted the request too early or too late: its model of everything
*before* this request is off) and the rest (this request's own steps are too
fast or too slow).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from mist.validate.align import AlignResult


def attribute(aligned: AlignResult) -> pd.DataFrame:
    """Per metric (ttft, e2e): mean signed and absolute error (s) of queueing and service.

    Rows without an observed queue time on either side are left out (``rows`` says
    how many were used). ``queue_share`` is the fraction of the summed absolute
    error that is queueing error.
    """
    f = aligned.frame
    rows = []
    for metric in ("ttft", "e2e"):
        ok = f[["queue_meas", "queue_sim", f"{metric}_meas", f"{metric}_sim"]].notna().all(axis=1)
        g = f[ok]
        q = (g["queue_sim"] - g["queue_meas"]).to_numpy(float)
        total = (g[f"{metric}_sim"] - g[f"{metric}_meas"]).to_numpy(float)
        s = total - q
        denom = np.abs(q).sum() + np.abs(s).sum()
        rows.append({
            "metric": metric, "rows": int(ok.sum()),
            "queue_mean_err_s": float(q.mean()) if len(q) else np.nan,
            "queue_mean_abs_err_s": float(np.abs(q).mean()) if len(q) else np.nan,
            "service_mean_err_s": float(s.mean()) if len(s) else np.nan,
            "service_mean_abs_err_s": float(np.abs(s).mean()) if len(s) else np.nan,
            "queue_share": float(np.abs(q).sum() / denom) if denom > 0 else np.nan,
        })
    return pd.DataFrame(rows)


def to_markdown(table: pd.DataFrame) -> str:
    """The attribution table as Markdown (seconds with 4 decimals, share in %)."""
    head = ("| metric | rows | queue err (mean) s | queue err (mean abs) s | service err (mean) s "
            "| service err (mean abs) s | share of abs error from queueing |")
    lines = [head, "| --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for r in table.itertuples():
        lines.append(f"| {r.metric} | {r.rows} | {r.queue_mean_err_s:+.4f} | {r.queue_mean_abs_err_s:.4f} "
                     f"| {r.service_mean_err_s:+.4f} | {r.service_mean_abs_err_s:.4f} | {100 * r.queue_share:.1f} % |")
    return "\n".join(lines) + "\n"
