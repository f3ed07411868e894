"""Measure this machine's operator latencies and engine step overhead into a bundle.

:func:`profile_machine` (``mist profile``) profiles a Llama-style model on the local
CPU; :func:`write_profile` writes the result as a layer-profile bundle (the layout
:mod:`mist.profiles.bundle` reads):

``meta.yaml``              identity, engine settings, grids, kernels, speed probes
``tp1/dense.csv``          ``layer,tokens,time_us,spread_us,samples``
``tp1/per_sequence.csv``   ``layer,sequences,time_us,spread_us,samples``
``tp1/attention.csv``      ``prefill_chunk,kv_prefill,n_decode,kv_decode,time_us,…``
``tp1/step_overhead.csv``  ``sequences,tokens,time_us,spread_us,samples,step_us,model_us``
``tp1/engine_steps.csv``   every engine step of the overhead scenarios: its shape (sequences,
                           tokens, decode count and KV lengths, prefill chunks
                           ``chunk:kv_before`` joined by ``;``) and wall time ``time_us`` —
                           the replay derives its host time per step from these (``mist.calibrate.host``)
``tp1/serving_steps.csv``  with ``serving_steps``: the same for a synthetic stream served
                           like a recording (``mist.profiles.measure.serving_steps``); diagnostic

``time_us`` is always the median of the samples; ``spread_us`` is their p90 − p10.
The operators are timed by :mod:`mist.profiles.measure.operators` (vLLM's own CPU kernels where
Python can reach them), the per-step host overhead by :mod:`mist.profiles.measure.engine_steps`
(the real vLLM engine, in-process). Those import torch and vLLM, so this module
imports them only inside :func:`profile_machine`.

Example
-------
>>> from mist.profiles.measure.profiler import profile_machine, write_profile
>>> from mist.profiles.measure.settings import ProfileSettings
>>> result = profile_machine(ProfileSettings("tiny-llama.json", quick=True))  # doctest: +SKIP
>>> write_profile(result, "out/profiles/cpu/tiny-llama/fp32")                  # doctest: +SKIP
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path

from mist.profiles.measure.bundle_writer import write_bundle
from mist.profiles.measure.cpus import cpu_model_name, parse_cpus
from mist.profiles.measure.progress import Progress, no_progress
from mist.profiles.measure.settings import ProfileSettings

PROFILER_VERSION = "1.0.0"

#: ``check(meta, tables) -> rows``: the operators composed against the engine's own
#: decode steps (``mist profile`` passes the replay's composition; stored as ``forward_check``)
ForwardCheck = Callable[[dict, dict], list]


@dataclass(frozen=True)
class MachineProfile:
    """What :func:`profile_machine` measured.

    Attributes
    ----------
    meta : dict
        ``meta.yaml`` of the bundle: identity, versions, CPU, engine settings, grids,
        kernels, speed probes before and after, the settings, and ``forward_check``
        rows when a check was given.
    tables : dict of str to list of dict
        Rows of ``dense``, ``per_sequence``, ``attention``, ``step_overhead``,
        ``engine_steps`` (and ``serving_steps``); times in µs.
    seconds : float
        Wall time of the whole profile, s.
    """

    meta: dict
    tables: dict[str, list[dict]]
    seconds: float


def _prepare_environment(settings: ProfileSettings) -> None:
    """Engine environment; must precede the first ``import vllm``."""
    os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
    os.environ["VLLM_CPU_OMP_THREADS_BIND"] = settings.threads_bind
    os.environ.setdefault("VLLM_LOGGING_LEVEL", "ERROR")  # vLLM warns a lot on CPU


def _usable_cpus(settings: ProfileSettings) -> list[int]:
    cpus = parse_cpus(settings.threads_bind)
    if hasattr(os, "sched_getaffinity") and not set(cpus) <= os.sched_getaffinity(0):
        raise ValueError(f"--threads-bind {settings.threads_bind!r}: CPUs {cpus} are not all "
                         f"available (this process may use {sorted(os.sched_getaffinity(0))})")
    return cpus


def _model_shape(model) -> dict:
    return {"num_layers": model.num_layers, "hidden_size": model.hidden_size,
            "num_heads": model.num_heads, "num_kv_heads": model.num_kv_heads,
            "head_dim": model.head_dim, "intermediate_size": model.intermediate_size,
            "vocab_size": model.vocab_size}


def _engine_steps_meta(engine: dict, serving: list | None) -> dict:
    """The ``engine_steps`` and ``serving_steps`` entries of ``meta.yaml``."""
    return {
        "engine_steps": {"method": "every engine step of the step_overhead scenarios (in-process "
                                   "engine): shape and wall time; the replay's host time is their "
                                   "residual over the operators (replay.host)",
                         "steps": len(engine["steps"])},
        "serving_steps": None if serving is None else {
            "method": "every engine step of a synthetic open-loop stream served like mist record "
                      "(AsyncLLM, engine core in its own process, streaming), logged inside the "
                      "engine core; diagnostic, not used by the replay",
            "stream": "mist.profiles.measure.serving_steps.stream: 160 requests in three load levels",
            "steps": len(serving)},
    }


def _meta(settings, model, cpus, ops, engine, serving, started) -> dict:
    """``meta.yaml`` of a profile (keys in the order the bundle has always had them)."""
    return {
        "profiler": "mist profile (profiles.local_profiler)",
        "profiler_version": PROFILER_VERSION,
        "vllm_version": ops["versions"]["vllm"],
        "torch_version": ops["versions"]["torch"],
        "device": cpu_model_name(),
        "hardware": "CPU",
        "profiled_at": started.isoformat(timespec="seconds"),
        "duration_s": round((datetime.now(timezone.utc) - started).total_seconds(), 1),
        "model": settings.name or model.name,
        "model_config": str(Path(settings.model_config).resolve()),
        "architecture": model.architecture,
        "model_shape": _model_shape(model),
        "variant": ops["dtype"],
        "tp_degrees": [1],
        "engine_effective": engine["engine_effective"],
        "threads": {"compute_threads": len(cpus), "cpus": cpus, "threads_bind": settings.threads_bind},
        "grids": ops["grids"],
        "measurement": {"repeats": ops["repeats"], "min_time_s": settings.min_time_s,
                        "quick": settings.quick, "cache_flush_mb": settings.flush_mb,
                        "cache_state": "weights from memory (GEMM weight copies rotate over 2 x flush), "
                                       "other ops: flush then inputs re-read (profiles.local_ops)",
                        "statistic": "median; spread_us = p90 - p10"},
        "kernels": ops["kernels"],
        "step_overhead": engine["description"],
        **_engine_steps_meta(engine, serving),
        "engine_decode_steps": engine["decode_steps"],
    }


def profile_machine(settings: ProfileSettings, progress: Progress = no_progress,
                    forward_check: ForwardCheck | None = None) -> MachineProfile:
    """Profile operators and step overhead of ``settings.model_config`` on this machine.

    Parameters
    ----------
    settings : ProfileSettings
    progress : Progress
        Told of each stage and its completed grid points (:mod:`~mist.profiles.measure.progress`).
    forward_check : callable, optional
        ``check(meta, tables) -> rows`` stored in ``meta["forward_check"]``
        (``mist profile`` passes the operators composed as the replay composes them).

    Raises
    ------
    ImportError
        torch or vLLM missing (the ``[record]`` extra).
    ValueError
        ``threads_bind`` names CPUs this process may not use.
    """
    from mist.profiles.measure.probe import run_probe
    from mist.profiles.measure.recorder import engine_versions
    from mist.profiles.model import load_model_config
    from mist.traces.io import read_json_object

    t0 = time.perf_counter()
    cpus = _usable_cpus(settings)
    model = load_model_config(settings.model_config)
    raw = read_json_object(settings.model_config)
    _prepare_environment(settings)
    engine_versions()  # vLLM importable, and transformers with it: else a clear ImportError
    from mist.profiles.measure import engine_steps as local_engine  # heavy: torch, vllm
    from mist.profiles.measure import operators as local_ops
    from mist.profiles.measure import serving_steps as local_serving

    probe_start = run_probe(cpus=cpus)
    started = datetime.now(timezone.utc)
    ops = local_ops.profile_operators(model, raw, settings, cpus, progress)
    engine = local_engine.profile_step_overhead(model, raw, settings, progress)
    serving = local_serving.profile_serving_steps(raw, settings) if settings.serving_steps else None
    probe_end = run_probe(cpus=cpus)
    meta = _meta(settings, model, cpus, ops, engine, serving, started)
    meta.update(speed_probe=probe_start, speed_probe_end=probe_end, settings=asdict(settings))
    tables = {"dense": ops["dense"], "per_sequence": ops["per_sequence"],
              "attention": ops["attention"], "step_overhead": engine["rows"],
              "engine_steps": engine["steps"]}
    if serving is not None:
        tables["serving_steps"] = serving
    if forward_check is not None:
        meta["forward_check"] = forward_check(meta, tables)
    return MachineProfile(meta, tables, time.perf_counter() - t0)


def write_profile(result: MachineProfile, out, force: bool = False) -> Path:
    """Write ``result`` as a bundle folder ``out``, all or nothing (see :func:`write_bundle`)."""
    return write_bundle(out, result.meta, result.tables, force=force)
