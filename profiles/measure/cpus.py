"""This machine's CPUs: the ids a measurement is pinned to, and the CPU's name."""

from __future__ import annotations

import contextlib
import os
import platform


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


def probe_cpus(spec: str) -> list[int] | None:
    """The CPUs of ``spec`` to pin the speed probe to; ``None`` (unpinned) for ``"auto"``/``"all"``."""
    try:
        return parse_cpus(spec)
    except ValueError:
        return None


def _model_name() -> str | None:
    """The ``model name`` line of ``/proc/cpuinfo``, or ``None``."""
    with contextlib.suppress(OSError), open("/proc/cpuinfo", encoding="utf-8") as f:
        for line in f:
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    return None


def cpu_model_name() -> str:
    """The CPU's name from ``/proc/cpuinfo`` (else :func:`platform.processor`)."""
    name = _model_name()
    return name if name is not None else platform.processor() or "unknown CPU"


def cpu_info() -> dict:
    """``cpu_model`` (from /proc/cpuinfo, or ``None``) and ``logical_cpus``."""
    return {"cpu_model": _model_name(), "logical_cpus": os.cpu_count()}
