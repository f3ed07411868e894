"""Measure this machine's operator latencies and engine step overhead into a bundle.

``mist profile`` writes a layer-profile bundle (the layout :mod:`mist.profiles.bundle`
reads) for a Llama-style model on the local CPU:

``meta.yaml``              identity, engine settings, grids, kernels, speed probes
``tp1/dense.csv``          ``layer,tokens,time_us,spread_us,samples``
``tp1/per_sequence.csv``   ``layer,sequences,time_us,spread_us,samples``
``tp1/attention.csv``      ``prefill_chunk,kv_prefill,n_decode,kv_decode,time_us,…``
``tp1/step_overhead.csv``  ``sequences,tokens,time_us,spread_us,samples,step_us,model_us``
``tp1/engine_steps.csv``   every engine step of the overhead scenarios: its shape (sequences,
                           tokens, decode count and KV lengths, prefill chunks
                           ``chunk:kv_before`` joined by ``;``) and wall time ``time_us`` —
                           the replay derives its host time per step from these (``mist.calibrate.host``)
``tp1/serving_steps.csv``  with ``--serving-steps``: the same for a synthetic stream served
                           like a recording (``mist.profiles.measure.serving_steps``); diagnostic

``time_us`` is always the median of the samples; ``spread_us`` is their p90 − p10.
The operators are timed by :mod:`mist.profiles.measure.operators` (vLLM's own CPU kernels where
Python can reach them), the per-step host overhead by :mod:`mist.profiles.measure.engine_steps`
(the real vLLM engine, in-process). This module holds the pure-Python parts —
settings, grids, summaries, the all-or-nothing writer — and imports torch and vLLM
only inside :func:`run_profile`.
"""

from __future__ import annotations

import os
import platform
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from mist.profiles.measure.bundle_writer import (  # noqa: F401
    SUMMARY_COLUMNS,
    TABLE_COLUMNS,
    plain,
    render_csv,
    write_bundle,
)

PROFILER_VERSION = "1.0.0"



@dataclass(frozen=True)
class ProfileSettings:
    """What to profile and how hard.

    Attributes
    ----------
    model_config : str
        Path of the Hugging Face ``config.json`` (Llama-style decoder).
    max_num_batched_tokens, max_num_seqs : int
        Engine limits; the dense grid runs to the first, the per-sequence grid to
        the second.
    max_kv : int
        Largest KV length (tokens) of the attention grid; also the engine's
        ``max_model_len``.
    repeats : int
        Timed samples per grid point (more for ops shorter than ``min_time_s``).
    threads_bind : str
        CPUs the measurement runs on (``VLLM_CPU_OMP_THREADS_BIND`` syntax,
        e.g. ``"0"`` or ``"0-1"``); one compute thread per CPU listed.
    quick : bool
        Coarser grids and fewer engine scenarios (a smoke test, about 30 s).
    temperature : float
        Sampling temperature of the sampler and the engine's requests; 0 (greedy)
        like ``mist record``, 1.0 for runs served with vLLM's server default.
    enable_prefix_caching : bool
        Prefix caching in the engine (off, like ``mist record``'s default).
    block_size : int
        KV-cache block size (tokens); vLLM's CPU default is 128.
    min_time_s : float
        Ops faster than this get extra samples, up to four times ``repeats``
        (twice when flushing caches).
    flush_mb : int
        Buffer (MiB) read before every sample to evict the op's data from the
        caches, as the rest of the forward pass does; GEMMs instead rotate over
        ``2 * flush_mb`` of weight copies. 0 times warm caches.
    name : str
        Model name for ``meta.yaml`` (default: from the config).
    """

    model_config: str
    max_num_batched_tokens: int = 512
    max_num_seqs: int = 64
    max_kv: int = 2048
    repeats: int = 5
    threads_bind: str = "0"
    quick: bool = False
    temperature: float = 0.0
    enable_prefix_caching: bool = False
    block_size: int = 128
    min_time_s: float = 2e-3
    flush_mb: int = 64
    name: str = ""
    serving_steps: bool = False

    def __post_init__(self):
        if self.flush_mb < 0:
            raise ValueError(f"flush_mb must be >= 0, got {self.flush_mb}")
        for name in ("max_num_batched_tokens", "max_num_seqs", "max_kv", "repeats", "block_size"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.max_kv < 32:
            raise ValueError(f"max_kv must be at least 32 tokens, got {self.max_kv}")
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")


def token_grid(max_value: int, dense_until: int = 16, factor: float = 1.25) -> list[int]:
    """Every integer 1..``dense_until``, then steps of ×``factor``, ending at ``max_value``."""
    if max_value < 1:
        raise ValueError(f"grid maximum must be at least 1, got {max_value}")
    if factor <= 1:
        raise ValueError(f"factor must exceed 1, got {factor}")
    values = list(range(1, min(dense_until, max_value) + 1))
    x = float(values[-1])
    while True:
        x *= factor
        v = int(round(x))
        if v >= max_value:
            break
        if v > values[-1]:
            values.append(v)
    if values[-1] != max_value:
        values.append(max_value)
    return values


def geometric_grid(first: int, max_value: int, factor: int = 2, zero: bool = True) -> list[int]:
    """``[0,] first, first·factor, …`` up to ``max_value``, which is always included."""
    values = [0] if zero else []
    v = first
    while v < max_value:
        values.append(v)
        v *= factor
    if max_value >= 1 and (not values or values[-1] != max_value):
        values.append(max_value)
    return values


def attention_points(max_tokens: int, max_seqs: int, max_kv: int, chunk_factor: int = 2,
                     kv_factor: int = 4, n_factor: int = 2) -> list[tuple[int, int, int, int]]:
    """Grid of ``(prefill_chunk, kv_prefill, n_decode, kv_decode)`` batches to time.

    Like the GPU bundles' grid (chunks 0,16,32…; KV 0,16,…; decodes 0,1,2,4…) but
    with coarser, configurable steps. Kept: batches the engine could schedule —
    ``chunk + n_decode <= max_tokens``, ``n_decode + (chunk > 0) <= max_seqs``,
    ``kv_prefill + chunk <= max_kv``, ``kv_decode <= max_kv`` — and not empty.
    ``kv_prefill`` is 0 without a chunk, ``kv_decode`` is 0 without decodes.
    """
    chunks = geometric_grid(16, max_tokens, chunk_factor)
    kvs = geometric_grid(16, max_kv, kv_factor)
    ns = [0] + geometric_grid(1, max_seqs, n_factor, zero=False)
    points = []
    for c in chunks:
        for kp in (kvs if c else [0]):
            if kp + c > max_kv:
                continue
            for n in ns:
                if (c == 0 and n == 0) or c + n > max_tokens or n + (c > 0) > max_seqs:
                    continue
                for kd in (kvs[1:] if n else [0]):
                    points.append((c, kp, n, kd))
    return points


def summarize(samples_s: Iterable[float]) -> tuple[float, float, int]:
    """``(median, p90 - p10, count)`` of timings given in seconds, returned in µs."""
    a = np.asarray(list(samples_s), dtype=float) * 1e6
    if a.size == 0:
        raise ValueError("no samples to summarize")
    p10, p50, p90 = np.percentile(a, [10, 50, 90])
    return float(p50), float(p90 - p10), int(a.size)


def parse_cpus(spec: str) -> list[int]:
    """CPU ids of a ``VLLM_CPU_OMP_THREADS_BIND``-style list (``"0"``, ``"0-1"``, ``"0,2"``)."""
    cpus: list[int] = []
    for part in str(spec).split(","):
        part = part.strip()
        if not part:
            continue
        lo, _, hi = part.partition("-")
        cpus.extend(range(int(lo), int(hi or lo) + 1))
    if not cpus:
        raise ValueError(f"no CPUs in {spec!r}")
    return sorted(set(cpus))


def cpu_model_name() -> str:
    """The ``model name`` line of ``/proc/cpuinfo`` (else :func:`platform.processor`)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def _prepare_environment(settings: ProfileSettings) -> None:
    """Engine environment; must precede the first ``import vllm``."""
    os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
    os.environ["VLLM_CPU_OMP_THREADS_BIND"] = settings.threads_bind
    os.environ.setdefault("VLLM_LOGGING_LEVEL", "ERROR")  # vLLM warns a lot on CPU


def run_profile(settings: ProfileSettings, progress: Callable[[int, str], Callable[[int], None]]
                ) -> tuple[dict, dict[str, list[dict]]]:
    """Profile operators and step overhead; return ``(meta, tables)`` for :func:`write_bundle`.

    Parameters
    ----------
    settings : ProfileSettings
    progress : callable
        ``progress(total, description)`` returns ``tick(n)``, called as work completes.

    Raises
    ------
    ImportError
        torch or vLLM missing (the ``[record]`` extra).
    ValueError
        ``threads_bind`` names CPUs this process may not use.
    """
    from mist.profiles.measure.probe import run_probe
    from mist.profiles.model import load_model_config
    from mist.traces.io import read_json_object

    cpus = parse_cpus(settings.threads_bind)
    if hasattr(os, "sched_getaffinity") and not set(cpus) <= os.sched_getaffinity(0):
        raise ValueError(f"--threads-bind {settings.threads_bind!r}: CPUs {cpus} are not all "
                         f"available (this process may use {sorted(os.sched_getaffinity(0))})")
    model = load_model_config(settings.model_config)
    raw = read_json_object(settings.model_config)
    _prepare_environment(settings)
    from mist.profiles.measure import engine_steps as local_engine  # heavy: torch, vllm
    from mist.profiles.measure import operators as local_ops
    from mist.profiles.measure import serving_steps as local_serving

    probe_start = run_probe(cpus=cpus)
    started = datetime.now(timezone.utc)
    ops = local_ops.profile_operators(model, raw, settings, cpus, progress)
    engine = local_engine.profile_step_overhead(model, raw, settings, progress)
    serving = local_serving.profile_serving_steps(raw, settings) if settings.serving_steps else None
    probe_end = run_probe(cpus=cpus)
    meta = {
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
        "model_shape": {"num_layers": model.num_layers, "hidden_size": model.hidden_size,
                        "num_heads": model.num_heads, "num_kv_heads": model.num_kv_heads,
                        "head_dim": model.head_dim, "intermediate_size": model.intermediate_size,
                        "vocab_size": model.vocab_size},
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
        "engine_decode_steps": engine["decode_steps"],
        "speed_probe": probe_start,
        "speed_probe_end": probe_end,
        "settings": asdict(settings),
    }
    tables = {"dense": ops["dense"], "per_sequence": ops["per_sequence"],
              "attention": ops["attention"], "step_overhead": engine["rows"],
              "engine_steps": engine["steps"]}
    if serving is not None:
        tables["serving_steps"] = serving
    return meta, tables
