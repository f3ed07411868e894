"""Writing a recorded run directory, all or nothing: the files ``mist record`` leaves.

The layout is the shared vLLM runs' (read by :mod:`mist.traces.readers.vllm_run`):
``requests.jsonl`` (vLLM's timestamps per request), ``meta.json`` (engine settings
under ``engine_kwargs``), plus ``tokens.jsonl`` (client wall-clock time of every
token, epoch s), ``timeseries.csv`` (1 s ticks) and ``model_config.json``.
Everything is written into a staging directory beside the run and renamed into place.
"""

from __future__ import annotations

import hashlib
import json
import math
from datetime import datetime, timezone
from pathlib import Path

from mist.profiles.measure.cpus import cpu_info
from mist.profiles.measure.settings import RecordSettings
from mist.traces.errors import TraceError
from mist.traces.io import atomic_write_json, atomic_write_text, staged_dir


def staging(out: Path, force: bool = False):
    """Yield an empty directory beside ``out``; rename it to ``out`` when the block succeeds
    (:func:`mist.traces.io.staged_dir`: an earlier run is replaced whole, never mixed).

    On any exception (or Ctrl-C) the directory is removed and ``out`` is untouched.

    Raises
    ------
    TraceError
        ``out`` is a file or a symbolic link, a non-empty directory and ``force`` is
        false, or a directory holding anything but regular files.
    """
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise TraceError(out, "exists and is not a directory")
    if out.is_dir() and any(out.iterdir()) and not force:
        raise TraceError(out, "exists and is not empty; pass --force to replace it")
    return staged_dir(out)


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _iso(epoch_s: float) -> str:
    return datetime.fromtimestamp(epoch_s, timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def build_meta(rec: dict, settings: RecordSettings, config: dict, dataset: Path,
               dataset_path: Path, versions: dict, probe_end: dict) -> dict:
    """``meta.json`` of a recording (the clocks are described in :mod:`mist.profiles.measure.recorder`).

    ``dataset`` is the stream file as read now (hashed), ``dataset_path`` where it is
    kept (a generated stream: inside the run); ``probe_end`` the speed probe after the stream.
    """
    results, engine = rec["results"], settings.engine
    label = config.get("_name_or_path") or Path(settings.model_config).stem
    kwargs = dict(rec["engine_kwargs"], model=label)  # not the temporary weights directory
    hardware = dict(cpu_info(), kind="cpu", omp_threads_bind=engine.threads_bind,
                    kv_cache_space_gib=engine.kv_cache_space_gib)  # fmt: skip
    first = min(r["arrival_time"] for r in results)
    last = max(r["last_token_ts"] for r in results) + rec["monotonic_to_epoch_s"]
    return {
        "schema_version": 1, "model": label, **versions, "engine_kwargs": kwargs,
        "engine_effective": rec["engine_effective"], "hardware": hardware,
        "speed_probe": rec["probe"], "started_at": _iso(first), "finished_at": _iso(last),
        "dataset_path": str(dataset_path), "dataset_hash": _sha256(dataset),
        "generate_spec": settings.generate, "num_requests": len(results),
        "warmup_requests": engine.warmup,
        "tick_seconds": 1.0, "monotonic_to_epoch_s": rec["monotonic_to_epoch_s"],
        "token_times_clock": "client wall clock, epoch s (tokens.jsonl)",
        "recorder": "mist record", "speed_probe_end": probe_end,
    }  # fmt: skip


def requests_jsonl(requests: list[dict], results: list[dict]) -> str:
    """``requests.jsonl`` text in the layout of the shared vLLM runs."""
    keys = ("arrival_time", "queued_ts", "scheduled_ts", "first_token_ts", "last_token_ts")
    lines = []
    for req, res in zip(requests, results):
        row = {"request_id": req["request_id"], "input_toks": req["input_toks"],
               "output_toks": req["output_toks"], **{k: res[k] for k in keys}}  # fmt: skip
        lines.append(json.dumps(row))
    return "".join(line + "\n" for line in lines)


def tokens_jsonl(results: list[dict]) -> str:
    """``tokens.jsonl`` text: per request, the client wall-clock time (epoch s) of each token."""
    return "".join(
        json.dumps({"request_id": r["request_id"], "token_times": r["token_times"]}) + "\n"
        for r in results
    )


def timeseries_csv(samples: list, start_mono_s: float, end_mono_s: float) -> str:
    """1 s ticks of the run, in the column layout of the shared vLLM runs.

    Tick ``t`` covers ``(t-1, t]`` s after ``start_mono_s``: token throughputs
    (tokens/s) summed over the tick, running/waiting/KV use (%) as last seen in it.
    """
    rows = ["t,prompt_throughput,gen_throughput,running,waiting,kv_cache_pct"]
    state = (0, 0, 0.0)
    n_ticks = max(1, math.ceil(end_mono_s - start_mono_s))
    by_tick: dict[int, list] = {}
    for s in samples:
        tick = max(1, math.ceil(s[0] - start_mono_s))
        by_tick.setdefault(tick, []).append(s)
    for t in range(1, n_ticks + 1):
        got = by_tick.get(t, [])
        if got:
            state = got[-1][1:4]
        prompt, gen = sum(s[4] for s in got), sum(s[5] for s in got)
        rows.append(f"{t}.0,{prompt}.0,{gen}.0,{state[0]},{state[1]},{100 * state[2]:.2f}")
    return "\n".join(rows) + "\n"


def write_run(directory: Path, rec: dict, requests: list[dict], meta: dict, config: dict) -> None:
    """Write a recording's files into ``directory`` (a staging directory)."""
    atomic_write_text(directory / "requests.jsonl", requests_jsonl(requests, rec["results"]))
    atomic_write_text(directory / "tokens.jsonl", tokens_jsonl(rec["results"]))
    start, end = rec["stream_start_mono_s"], rec["stream_end_mono_s"]
    stats = [s for s in rec["stats"] if s[0] >= start]  # warm-up left out
    atomic_write_text(directory / "timeseries.csv", timeseries_csv(stats, start, end))
    atomic_write_json(directory / "model_config.json", config)
    atomic_write_json(directory / "meta.json", meta)
