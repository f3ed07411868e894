"""Predict measured deployments (silicon rows) from a kernel database (``mist silicon``).

:func:`predict_deployments` reads a silicon CSV, keeps one system's rows of one
serving engine, and predicts each from the system's kernel measurements
(:func:`mist.replay.silicon_predict.predict_row`): each row reads the kernel tables
measured nearest its own engine version (:class:`mist.replay.silicon_kernels.KernelVersions`),
and rows the composition cannot model are skipped with a reason
(:func:`mist.replay.silicon_rows.skip_reason`), never guessed. Around the
predictions it applies, or fits, the two corrections a kernel database needs: the
step overhead kernels do not time (:mod:`mist.calibrate.step_overhead`, fitted on one
model's rows and validated on the others) and the fused-MoE kernel's rate
(:mod:`mist.calibrate.fused_moe`, fitted on published kernel times). It returns the
per-row predictions and the summary ``mist silicon --json`` writes. Example::

    from mist.replay.silicon import SiliconSettings, predict_deployments
    result = predict_deployments(SiliconSettings(
        silicon=data / "silicon/aiconfigurator_silicon_sample.csv",
        kernels=data / "profiles/aiconfigurator/h100_sxm", models=data / "models", system="h100_sxm"))
    result.summary["ttft"]["mape"], result.predictions[["ttft_ms", "pred_ttft_ms"]]
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pandas as pd

from mist.calibrate import fused_moe
from mist.calibrate.calibration import ape_summary
from mist.calibrate.kernels import KernelSet, system_datasheet
from mist.calibrate.kernels_grid import cross_validate_kernels
from mist.calibrate.step_overhead import DEFAULT_STEP_OVERHEAD, StepOverhead, fit_step_overhead
from mist.replay.silicon_kernels import KernelVersions
from mist.replay.silicon_predict import (  # noqa: F401  (protocol_range: also imported from here)
    ARRIVALS,
    Unmodelled,
    default_requests_per_user,
    predict_row,
    protocol_range,
)
from mist.replay.silicon_rows import (
    attention_dp_of,
    gemm_dtype,
    measured_dtype,
    model_index,
    row_version,
    skip_reason,
)
from mist.traces.errors import ReplayError, TraceError
from mist.traces.readers.silicon import read_silicon

#: ``progress(iterable, total, desc)``: wraps the rows' loop (e.g. in a tqdm bar)
Progress = Callable


@dataclass(frozen=True)
class SiliconSettings:
    """What :func:`predict_deployments` predicts, and how (``mist silicon``'s options).

    Attributes
    ----------
    silicon : Path
        Silicon CSV of measured deployments (TTFT and TPOT in ms).
    kernels : Path
        One system's kernel-database folder (e.g. ``.../aiconfigurator/h100_sxm``).
    models : Path
        Folder of Hugging Face configs named ``<org>--<name>_config.json``.
    system, backend : str
        The rows predicted: the CSV's ``system`` and ``backend`` (serving engine).
    arrivals : str
        What the rows' means are (:data:`mist.replay.silicon_predict.ARRIVALS`; see
        :func:`mist.replay.silicon_predict.predict_row`).
    requests_per_user : int or None
        Benchmark/client: its request count over its concurrency (default 10);
        staggered/burst: requests each simulated user sends (default 4).
    length_ratio, seed : float or None, int or None
        ``arrivals="client"`` only: request lengths drawn from ``[ratio x L, L]``
        (default 1: fixed) with this seed (default 0).
    max_num_batched_tokens, max_num_seqs : int or None
        The deployment's token budget per step and cap on running sequences, when its
        launch flags are known (default: vLLM's for the GPU).
    include_warmup : bool
        Staggered/burst: average over every request, first wave included.
    step_overhead : Path or None
        Step-overhead YAML (default :data:`mist.calibrate.step_overhead.DEFAULT_STEP_OVERHEAD`
        when it exists); ``no_step_overhead`` composes steps from kernels alone.
    fit_step_overhead : Path or None
        Fit the step overhead on the rows of ``fit_model`` (a ``model_path``), write it
        here, and predict every row with it.
    moe_efficiency : Path or None
        Fused-MoE rate YAML (default :data:`mist.calibrate.fused_moe.DEFAULT_EFFICIENCY`
        when it exists; applied when fitted for the system or one of the same compute
        capability); ``no_moe_efficiency`` composes MoE layers from the GEMM table alone.
    fit_moe_efficiency : Path or None
        Fit the fused-MoE rate on the published kernel times of ``moe_measurements``,
        write it here and predict with it.
    hardware : tuple of Path
        Extra hardware catalogs for a system with no ``<system>.yaml`` beside its kernels.
    kernel_cv : bool
        Cross-validate the newest kernel tables (tens of seconds for a full folder);
        False leaves the result's ``kernel_cv`` empty.
    """

    silicon: Path
    kernels: Path
    models: Path
    system: str
    backend: str = "vllm"
    arrivals: str = "benchmark"
    requests_per_user: int | None = None
    length_ratio: float | None = None
    seed: int | None = None
    max_num_batched_tokens: int | None = None
    max_num_seqs: int | None = None
    include_warmup: bool = False
    step_overhead: Path | None = None
    no_step_overhead: bool = False
    fit_step_overhead: Path | None = None
    fit_model: str | None = None
    moe_efficiency: Path | None = None
    no_moe_efficiency: bool = False
    fit_moe_efficiency: Path | None = None
    moe_measurements: Path | None = None
    hardware: tuple = ()
    kernel_cv: bool = True


@dataclass(frozen=True)
class SiliconResult:
    """What :func:`predict_deployments` found.

    Attributes
    ----------
    settings : SiliconSettings
        The settings with their defaults filled in (``requests_per_user``, ``length_ratio``, ``seed``).
    predictions : pandas.DataFrame
        One row per silicon row: measured and predicted ``ttft_ms``/``tpot_ms`` (ms),
        or the reason it was ``skipped`` (``mist silicon --out``'s ``predictions.csv``).
    summary : dict
        Errors (%) overall and by model, skip reasons, kernel sources, kernel
        cross-validation, the corrections applied and the settings (``--json``).
    kernel_cv : pandas.DataFrame
        Cross-validated APE (%) of the newest kernel tables, per kernel and variant.
    step_overhead, moe_efficiency : StepOverhead, FusedMoEEfficiency or None
        The corrections applied (fitted here when the settings asked for a fit).
    step_overhead_source, moe_source : str
        Where each correction came from.
    warnings : tuple of str
        Things worth telling the user that did not stop the job.
    """

    settings: SiliconSettings
    predictions: pd.DataFrame
    summary: dict
    kernel_cv: pd.DataFrame
    step_overhead: StepOverhead | None
    step_overhead_source: str
    moe_efficiency: fused_moe.FusedMoEEfficiency | None
    moe_source: str
    warnings: tuple = ()


def _summary(rows: pd.DataFrame, df: pd.DataFrame, skipped: dict) -> dict:
    """Errors overall and per model of the predicted rows of ``df``."""
    for col in ("pred_ttft_ms", "pred_tpot_ms"):
        if col not in df:
            df[col] = np.nan
    ok = df[df["pred_ttft_ms"].notna()]
    summary = {"rows": {"total": len(rows), "predicted": len(ok), "skipped": dict(sorted(skipped.items()))}}
    for metric in ("ttft", "tpot"):
        summary[metric] = ape_summary(ok[f"pred_{metric}_ms"], ok[f"{metric}_ms"], digits=3)
    if "pred_ttft_lockstep_ms" in ok:
        summary["ttft_protocol_range"] = protocol_range(ok)
    summary["by_model"] = {
        str(model): {"rows": int(len(part)),
                     **{m: ape_summary(part[f"pred_{m}_ms"], part[f"{m}_ms"], digits=3) for m in ("ttft", "tpot")},
                     **({"ttft_protocol_range": protocol_range(part)} if "pred_ttft_lockstep_ms" in part else {})}
        for model, part in sorted(ok.groupby("model"), key=lambda kv: str(kv[0]))}
    return summary


def _record(i, row: pd.Series) -> dict:
    """The measured side of a row's prediction record (ms)."""
    return {"row": i, "id": row.get("id"), "model": row["model_path"], "tp": row["tp_size"],
            "attention_dp": attention_dp_of(row),
            "concurrency": row["batch_size"] * attention_dp_of(row), "isl": row["isl"], "osl": row["osl"],
            "ttft_ms": row["silicon_ttft_ms"], "tpot_ms": row["silicon_tpot_ms"]}


def predict_silicon(rows: pd.DataFrame, kernels: KernelSet | KernelVersions, models_dir,
                    requests_per_user: int | None = None, progress=None, arrivals: str = "benchmark",
                    exclude_warmup: bool = True, overhead: StepOverhead | None = None,
                    moe_efficiency: dict | None = None, length_ratio: float = 1.0,
                    seed: int = 0, max_num_batched_tokens: int | None = None,
                    max_num_seqs: int | None = None) -> tuple[pd.DataFrame, dict]:
    """Predict every row; return per-row results and the summary JSON object.

    ``kernels``: one set for every row, or :class:`KernelVersions` so that each row
    reads the tables of its own engine version. ``progress(iterable, total=n)`` wraps
    the loop over the rows. ``overhead``, ``moe_efficiency``, ``length_ratio``,
    ``seed``, ``max_num_batched_tokens`` and ``max_num_seqs``: see :func:`predict_row`.
    """
    index, configs, cache, out, skipped = model_index(models_dir), {}, {}, [], {}
    it = rows.iterrows() if progress is None else progress(rows.iterrows(), total=len(rows))
    versions = kernels if isinstance(kernels, KernelVersions) else None
    for i, row in it:
        rec = _record(i, row)
        if versions is not None:
            kernels = versions.for_version(row_version(row))
            rec["kernel_tables"] = versions.gemm_table(row_version(row))
        reason = skip_reason(row, index, kernels, configs)
        if reason is None:
            model = configs[row["model_path"]]
            try:
                p = predict_row(row, model, kernels, requests_per_user, cache, arrivals, exclude_warmup, overhead,
                                moe_efficiency, length_ratio, seed, max_num_batched_tokens, max_num_seqs)
            except Unmodelled as exc:
                reason = str(exc)
            else:
                rec.update(pred_ttft_ms=p.ttft_ms, pred_tpot_ms=p.tpot_ms,
                           gemm_dtype=measured_dtype(gemm_dtype(row, model), kernels),
                           num_gpu_blocks=p.num_gpu_blocks, preemptions=p.preemptions)
                if p.ttft_lockstep_ms is not None:
                    rec["pred_ttft_lockstep_ms"] = p.ttft_lockstep_ms
                rec["pred_lone_ttft_ms"] = p.lone_ttft_ms
        if reason is not None:
            skipped[reason] = skipped.get(reason, 0) + 1
            rec["skipped"] = reason
        out.append(rec)
    df = pd.DataFrame(out)
    return df, _summary(rows, df, skipped)


def _resolved(s: SiliconSettings) -> SiliconSettings:
    """``s`` checked, with its defaults filled in.

    Raises
    ------
    TraceError, ReplayError
        Options that do not go together, or a models folder that does not exist.
    """
    if s.arrivals not in ARRIVALS:
        raise ReplayError(f"arrivals must be one of {ARRIVALS}, not {s.arrivals!r}")
    if s.requests_per_user is not None and s.requests_per_user < 1:
        raise TraceError(s.silicon, "--requests-per-user must be at least 1")
    if s.arrivals != "client" and (s.length_ratio is not None or s.seed is not None):
        raise ReplayError("--length-ratio and --seed describe the simulated client: they go with "
                          "--arrivals client")
    if s.arrivals == "client" and s.include_warmup:
        raise ReplayError("--arrivals client counts every request already; --include-warmup is for "
                          "staggered/burst")
    s = replace(s, requests_per_user=s.requests_per_user or default_requests_per_user(s.arrivals),
                length_ratio=1.0 if s.length_ratio is None else s.length_ratio, seed=s.seed or 0)
    if not Path(s.models).is_dir():
        raise TraceError(s.models, "models folder not found")
    if bool(s.fit_step_overhead) != bool(s.fit_model):
        raise TraceError(s.silicon, "--fit-step-overhead and --fit-model go together")
    if s.fit_step_overhead and (s.step_overhead or s.no_step_overhead):
        raise TraceError(s.silicon, "--fit-step-overhead fits its own overhead: drop --step-overhead "
                                    "and --no-step-overhead")
    return s


def _given_step_overhead(s: SiliconSettings) -> tuple[StepOverhead | None, str]:
    """The step overhead to apply unless one is fitted, and where it came from."""
    if s.fit_step_overhead is None and not s.no_step_overhead:
        path = s.step_overhead or DEFAULT_STEP_OVERHEAD
        if s.step_overhead is not None or path.is_file():
            return StepOverhead.load(path), str(path)
    return None, "none"


def _check_moe_options(s: SiliconSettings) -> None:
    if bool(s.fit_moe_efficiency) != bool(s.moe_measurements):
        raise TraceError(s.silicon, "--fit-moe-efficiency and --moe-measurements go together")
    if s.fit_moe_efficiency and (s.moe_efficiency or s.no_moe_efficiency):
        raise TraceError(s.silicon, "--fit-moe-efficiency fits its own rate: drop --moe-efficiency "
                                    "and --no-moe-efficiency")


def _moe_efficiency(s: SiliconSettings, kernels: KernelVersions) -> tuple[fused_moe.FusedMoEEfficiency | None, str]:
    """The fused-MoE rate to apply — fitted here when asked (the caller writes it) — and its source."""
    sheet = kernels.sheet
    if s.fit_moe_efficiency is not None:
        system, source, series = fused_moe.read_measurements(s.moe_measurements)
        if system.casefold() != s.system.casefold():
            raise TraceError(s.moe_measurements, f"measured on {system!r}, not on --system {s.system!r}")
        # a set of its own, so the fit's lookups stay out of the rows' kernel_sources
        fitted = fused_moe.fit_efficiency(KernelSet(kernels.for_version(None).profile, sheet), system, source,
                                          series, {"measurements": s.moe_measurements.name,
                                                   "gemm_table": kernels.gemm_table(None)})
        return fitted, f"fitted here, written to {s.fit_moe_efficiency}"
    if s.no_moe_efficiency:
        return None, "none"
    path = s.moe_efficiency or fused_moe.DEFAULT_EFFICIENCY
    if s.moe_efficiency is None and not path.is_file():
        return None, "none"
    eff = fused_moe.for_system(path, s.system, sheet.sm_version)
    if eff is None:
        return None, f"none ({path} is for another kind of device)"
    if eff.system == s.system:
        return eff, str(path)
    return eff, f"{path}, fitted on {eff.system}: same compute capability (SM {sheet.sm_version})"


def _settings_note(s: SiliconSettings, sheet_source: str) -> dict:
    """The summary's ``settings``: what the predictions assumed."""
    return {"system": s.system, "backend": s.backend,
            "kernel_tables": "nearest each row's backend_version (rows without one: the "
                             "newest); kernel_cv on the newest",
            "datasheet": sheet_source, "arrivals": s.arrivals,
            "max_num_batched_tokens": s.max_num_batched_tokens or "vLLM default",
            "max_num_seqs": s.max_num_seqs or "vLLM default",
            "requests_per_user": s.requests_per_user,
            "warmup_excluded": s.arrivals == "benchmark" or (s.arrivals != "client" and not s.include_warmup),
            **({"length_ratio": s.length_ratio, "seed": s.seed} if s.arrivals == "client" else {})}


def _read_rows(s: SiliconSettings) -> pd.DataFrame:
    rows = read_silicon(s.silicon, s.system, s.backend)
    if not len(rows):
        raise TraceError(s.silicon, f"no rows for system {s.system!r} and backend {s.backend!r}")
    if s.fit_model and not (rows["model_path"] == s.fit_model).any():
        raise TraceError(s.silicon, f"no {s.system}/{s.backend} rows of --fit-model {s.fit_model!r}")
    return rows


def _fit_overhead(s: SiliconSettings, bare: pd.DataFrame) -> StepOverhead:
    """The step overhead fitted on ``fit_model``'s rows of ``bare`` (predicted without one)."""
    return fit_step_overhead(bare, bare["model"] == s.fit_model, {
        "model": s.fit_model, "system": s.system, "backend": s.backend,
        "silicon": Path(s.silicon).name, "arrivals": s.arrivals, "requests_per_user": s.requests_per_user,
        **({"length_ratio": s.length_ratio, "seed": s.seed} if s.arrivals == "client" else {})})


def save_fits(result: SiliconResult, staged=lambda path: path) -> list[Path]:
    """Write what ``result`` fitted to the paths its settings name (``fit_step_overhead``,
    ``fit_moe_efficiency``), each at ``staged(path)`` (e.g. :meth:`mist.traces.staging.Outputs.path`,
    to put them in place with the command's other outputs); returns the paths named."""
    s, done = result.settings, []
    for path, fit in ((s.fit_moe_efficiency, result.moe_efficiency), (s.fit_step_overhead, result.step_overhead)):
        if path is not None:
            fit.save(staged(path))
            done.append(Path(path))
    return done


def predict_deployments(settings: SiliconSettings, progress: Progress | None = None) -> SiliconResult:
    """Predict one system's measured deployments from its kernel database (``mist silicon``).

    With ``settings.fit_step_overhead`` the rows are first predicted without an
    overhead, the overhead is fitted on ``fit_model``'s rows, and every row is
    predicted again with it; with ``fit_moe_efficiency`` the fused-MoE rate is fitted
    on published kernel times before any row is predicted. Nothing is written: the
    fits are the result's ``step_overhead``/``moe_efficiency``, for the caller to save
    with its other outputs (:func:`save_fits`).
    ``progress(iterable, total, desc)`` wraps each pass over the rows.

    Raises
    ------
    TraceError, ReplayError
        Unreadable inputs, no rows to predict, or options that do not go together.
    """
    s = _resolved(settings)
    overhead, overhead_source = _given_step_overhead(s)
    _check_moe_options(s)
    warnings = ()
    if Path(s.kernels).name.casefold() != s.system.casefold():
        warnings = (f"the kernel folder {Path(s.kernels).name!r} is named for another system than --system "
                    f"{s.system!r}; its tables and datasheet are used for every row",)
    rows = _read_rows(s)
    sheet, sheet_source = system_datasheet(s.kernels, s.system, s.hardware)
    kernels = KernelVersions(s.kernels, sheet, hardware=s.system, framework=s.backend)
    moe_eff, moe_source = _moe_efficiency(s, kernels)

    def predict(step_overhead, what):
        bar = None if progress is None else (lambda it, total: progress(it, total, what))
        return predict_silicon(rows, kernels, s.models, s.requests_per_user, bar, s.arrivals,
                               not s.include_warmup, step_overhead, None if moe_eff is None else moe_eff.rates(),
                               s.length_ratio, s.seed, s.max_num_batched_tokens, s.max_num_seqs)

    if s.fit_step_overhead is not None:
        overhead = _fit_overhead(s, predict(None, "rows (no overhead)")[0])
        overhead_source = f"fitted here, written to {s.fit_step_overhead}"
    df, summary = predict(overhead, "rows")
    newest = kernels.for_version(None).profile
    cv = cross_validate_kernels(newest) if s.kernel_cv else pd.DataFrame()
    summary["kernel_sources"] = kernels.tally()
    summary["kernel_cv"] = {f"{r.kernel}/{r.variant}": {"mape": round(r.mape, 2), "median_ape": round(r.median_ape, 2),
                                                        "held_out": int(r.held_out)} for r in cv.itertuples()}
    summary["step_overhead"] = None if overhead is None else dict(overhead.to_dict(), source=overhead_source)
    summary["moe_efficiency"] = None if moe_eff is None else dict(moe_eff.to_dict(), source=moe_source)
    summary["settings"] = _settings_note(s, sheet_source)
    return SiliconResult(s, df, summary, cv, overhead, overhead_source, moe_eff, moe_source, warnings)
