"""The noise floor: how much two real recordings of the same stream differ (``mist noise``).

:func:`noise_floor` reads two recordings of one request stream (run folders, or any
format :func:`mist.traces.formats.read_trace` reads that has timings), treats the
first as "measured" and the second as "simulated", and computes the same per-request
and distribution errors :func:`mist.validate.run.validate_run` computes for the
simulator. A replay cannot be expected to match one recording better than a second
recording does, so every simulator error figure should be read against these.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path

from mist.profiles.measure.probe import drift_ratio
from mist.traces.errors import InputWarning
from mist.traces.formats import read_trace
from mist.validate.align import AlignResult, align
from mist.validate.metrics import rounded, summarize
from mist.validate.report import write_report


@dataclass(frozen=True)
class NoiseSettings:
    """The two recordings :func:`noise_floor` compares.

    Attributes
    ----------
    a : Path
        First recording, the reference ("measured").
    b : Path
        Second recording of the same stream ("simulated"). Requests are matched by id,
        or by position when the source has no ids.
    """

    a: Path
    b: Path


@dataclass(frozen=True)
class NoiseResult:
    """Recording ``b`` against recording ``a``.

    Attributes
    ----------
    settings : NoiseSettings
        What was compared.
    aligned : AlignResult
        ``a`` (as measured) and ``b`` (as simulated) joined on ``request_id``.
    metrics : dict
        :func:`mist.validate.metrics.summarize` of ``aligned`` (percentages).
    speed_ratio : float or None
        Speed-probe time ratio ``b`` / ``a`` (>1: ``b`` ran on a slower machine), when
        both carry a probe.
    """

    settings: NoiseSettings
    aligned: AlignResult
    metrics: dict
    speed_ratio: float | None

    def summary(self) -> dict:
        """The comparison as ``mist noise --json`` writes it: counts, rounded metrics and
        the speed ratio b/a."""
        a = self.aligned
        out = {"requests": {"a": a.measured, "b": a.simulated, "matched": a.matched},
               "metrics": rounded(self.metrics),
               "speed_ratio_b_over_a": None if self.speed_ratio is None else round(self.speed_ratio, 4)}
        if a.excluded:  # (absent on clean recordings, whose summary stays as it was)
            out["excluded"] = [dict(e) for e in a.excluded]
        return out


def noise_floor(settings: NoiseSettings) -> NoiseResult:
    """Compare two recordings of one request stream, request by request.

    Raises
    ------
    TraceError
        A recording that cannot be read (file, line and reason named).

    Requests either reader excluded (``meta["excluded"]``) are left out of the
    comparison, each with a warning; ``summary()["excluded"]`` lists them.
    """
    a, b = read_trace(settings.a), read_trace(settings.b)
    # requests a reader kept with a blanked timeline (stamps contradicting the clock or
    # their own order) have nothing to compare: left out on both sides, and said so
    excluded = [dict(e, recording=side) for side, rec in (("a", a), ("b", b)) for e in rec.meta.get("excluded", [])]
    for e in excluded:
        where = f" (line {e['line']})" if "line" in e else ""
        warnings.warn(f"recording {e['recording']}: request {e['request_id']}{where} excluded from the "
                      f"comparison: {e['reason']}", InputWarning, stacklevel=2)
    aligned = align(a.requests.to_pandas(), b.requests.to_pandas(), excluded)
    ratio = drift_ratio([b.meta.get("speed_probe"), b.meta.get("speed_probe_end")],
                        [a.meta.get("speed_probe"), a.meta.get("speed_probe_end")])
    return NoiseResult(settings=settings, aligned=aligned, metrics=summarize(aligned), speed_ratio=ratio)


def write_noise_report(result: NoiseResult, out_dir) -> Path:
    """Write ``report.md`` with its plots into ``out_dir``; returns its path."""
    a, b = result.settings.a, result.settings.b
    return write_report(out_dir, result.aligned, result.metrics, title=f"mist noise: {Path(a).name} vs {Path(b).name}",
                        notes=[f"'measured' = {a}, 'simulated' = {b}"])
