"""Engine-step time a kernel database does not measure, fitted on measured deployments.

Kernel databases time kernels, not the engine step around them: sampling,
host-side input and output handling and launch gaps are missing. A
:class:`StepOverhead` (``per_step + per_sequence x S`` per step of ``S``
sequences) fitted on one collection of silicon rows (:func:`fit_step_overhead`)
and validated on the others adds them back; the replay applies it to a step cost
(:func:`mist.replay.silicon_predict.with_step_overhead`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from mist.calibrate.calibration import ape_summary
from mist.traces.checks import MAX_OPERATOR_S
from mist.traces.io import read_yaml_object, write_yaml
from mist.traces.rules import Rule, check_document

#: the step overhead ``mist silicon`` applies unless told otherwise (made by
#: ``mist silicon --fit-step-overhead``; the README gives the command)
DEFAULT_STEP_OVERHEAD = Path(__file__).resolve().parents[1] / "profiles" / "silicon_step_overhead.yaml"
#: the file's fields: non-negative times, at most what one step could take (an hour)
RULES: dict[str, Rule] = {
    "per_step_ms": Rule("number", 0, MAX_OPERATOR_S * 1e3, required=True),
    "per_sequence_us": Rule("number", 0, MAX_OPERATOR_S * 1e6, required=True),
    "fitted_on": Rule("object"),
}


@dataclass(frozen=True)
class StepOverhead:
    """Engine-step time a kernel database does not measure (s).

    A step of ``S`` sequences takes ``per_step_s + per_sequence_s * S`` on top of its
    composed kernels: sampling over the vocabulary, host-side input preparation and
    output handling, launch gaps. Nothing in the kernels, datasheet or model config
    gives these, so they are fitted (:func:`fit_step_overhead`) on one collection
    of rows and validated on the others; ``fitted_on`` says on what.
    """

    per_step_s: float
    per_sequence_s: float
    fitted_on: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        """The file's fields: ``per_step_ms``, ``per_sequence_us`` and ``fitted_on``."""
        return {"per_step_ms": round(self.per_step_s * 1e3, 6),
                "per_sequence_us": round(self.per_sequence_s * 1e6, 6), "fitted_on": self.fitted_on}

    def save(self, path) -> None:
        """Write the overhead as YAML (atomically) with a header saying what it is."""
        write_yaml(path, "Engine-step time the kernel database does not measure, added to every\n"
                         "composed step of S sequences: per_step_ms + per_sequence_us * S.\n"
                         "Written by `mist silicon --fit-step-overhead`; see docs/kernels.md.", self.to_dict())

    @classmethod
    def load(cls, path) -> StepOverhead:
        """Read a file :meth:`save` wrote.

        Raises
        ------
        TraceError
            Unreadable file, a value breaking :data:`RULES` (missing, negative, non-numeric,
            beyond an hour), or ``fitted_on`` not a mapping.
        """
        doc = check_document(read_yaml_object(path, "step overhead (per_step_ms, per_sequence_us)"), RULES, path)
        return cls(float(doc["per_step_ms"]) * 1e-3, float(doc["per_sequence_us"]) * 1e-6, doc.get("fitted_on") or {})


def fit_step_overhead(df: pd.DataFrame, train: pd.Series, note: dict | None = None) -> StepOverhead:
    """Fit ``per_step + per_sequence * C`` to the TPOT the composition misses.

    ``df``: per-row predictions made without an overhead (``pred_tpot_ms``,
    ``tpot_ms``, ``concurrency``); ``train``: a boolean mask of the rows to fit on.
    In a closed loop of ``C`` users a decode step carries about ``C`` sequences,
    and every step between two of a request's tokens adds its overhead to that
    request's TPOT, so the predicted TPOT moves by ``per_step + per_sequence * C``.
    The two non-negative parameters minimise the squared relative TPOT error over
    the training rows (rows the composition does not predict are ignored).

    Raises
    ------
    ValueError
        Fewer than two predicted training rows.
    """
    from scipy.optimize import lsq_linear

    rows = df[train.to_numpy(bool) & df["pred_tpot_ms"].notna().to_numpy()]
    if len(rows) < 2:
        raise ValueError(f"need at least 2 predicted rows to fit a step overhead, got {len(rows)}")
    meas = rows["tpot_ms"].to_numpy(float)
    conc = rows["concurrency"].to_numpy(float)
    A = np.column_stack([1.0 / meas, conc / meas])
    b = 1.0 - rows["pred_tpot_ms"].to_numpy(float) / meas
    fit = lsq_linear(A, b, bounds=(0.0, np.inf))
    a_ms, s_ms = (float(v) for v in fit.x)
    before = ape_summary(rows["pred_tpot_ms"], rows["tpot_ms"], digits=3)
    after = ape_summary(rows["pred_tpot_ms"] + a_ms + s_ms * conc, rows["tpot_ms"], digits=3)
    fitted_on = dict(note or {})
    fitted_on.update(rows=int(len(rows)), tpot_mape_before=before["mape"], tpot_mape_after_estimate=after["mape"],
                     method="least squares of relative TPOT error, TPOT + per_step + per_sequence * concurrency")
    return StepOverhead(a_ms * 1e-3, s_ms * 1e-3, fitted_on)
