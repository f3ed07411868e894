"""Engine steps measured on the serving path, as a recording runs them.

``mist record`` serves requests through vLLM's ``AsyncLLM``: the engine core runs
in its own (forked) process while the front end streams every token to its client.
On a machine whose CPUs share one core's worth of compute the two compete, so an
engine step takes longer under load than the same step run in-process. To profile
what a recording will see, this module runs a short synthetic open-loop stream
(seeded, not any validated workload) through the recorder's own serving path and
logs every engine step from inside the engine-core process: its shape (as
:func:`mist.profiles.measure.engine_steps.step_shape` reads the scheduler output) and wall time.

How: ``Scheduler.schedule`` and ``EngineCore.step`` are wrapped at class level in
the engine-core process. vLLM's CPU platform starts that process with ``spawn``
(a fresh interpreter), so the wrappers are installed by a ``sitecustomize`` module
put first on ``PYTHONPATH`` for the duration of the run only; it acts only when
``MIST_STEP_LOG`` names the file to append one JSON line per step to.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np

from mist.profiles.measure.settings import ProfileSettings, VllmSettings

ENV_LOG = "MIST_STEP_LOG"
SITECUSTOMIZE = """\
import os
if os.environ.get("MIST_STEP_LOG"):
    try:
        from mist.profiles.measure.serving_steps import _install_step_log
        _install_step_log()
    except Exception as exc:  # never break the engine over a measurement hook
        import sys
        print(f"mist: engine step log not installed: {exc}", file=sys.stderr)
"""


def _install_step_log() -> None:
    """Wrap the scheduler and engine-core step (idempotent, class level)."""
    from vllm.v1.core.sched.scheduler import Scheduler
    from vllm.v1.engine.core import EngineCore

    from mist.profiles.measure.engine_steps import step_shape

    if getattr(EngineCore.step, "_mist_wrapped", False):
        return
    inner_schedule, inner_step = Scheduler.schedule, EngineCore.step
    shape: dict = {}

    def schedule(self, *args, **kwargs):
        out = inner_schedule(self, *args, **kwargs)
        shape.clear()
        shape.update(sequences=len(out.num_scheduled_tokens), tokens=int(out.total_num_scheduled_tokens),
                     **step_shape(out))
        return out

    def step(self, *args, **kwargs):
        t0 = time.perf_counter()
        result = inner_step(self, *args, **kwargs)
        dt = time.perf_counter() - t0
        path = os.environ.get(ENV_LOG)
        if path and shape.get("tokens", 0) > 0:
            with open(path, "a", encoding="utf-8") as f:
                f.write(json.dumps({**shape, "time_us": dt * 1e6}) + "\n")
        return result

    step._mist_wrapped = True
    Scheduler.schedule = schedule
    EngineCore.step = step


def stream(vocab_size: int, max_len: int, seed: int = 7) -> list[dict]:
    """The profiling stream: three load levels, random prompt and output lengths.

    40 requests at 1 req/s-ish density, then 60 at 6, then 60 at 20 (Poisson), prompt
    lengths uniform in [16, max_len/2], outputs uniform in [8, 64]; all seeded.
    """
    rng = np.random.default_rng(seed)
    out, t = [], 0.0
    for count, rate in ((40, 1.0), (60, 6.0), (60, 20.0)):
        for _ in range(count):
            t += rng.exponential(1.0 / rate)
            n_in = int(rng.integers(16, max(17, max_len // 2)))
            out.append({"request_id": f"profile-{len(out)}", "arrival_s": t, "input_toks": n_in,
                        "output_toks": int(rng.integers(8, 65)),
                        "input_tok_ids": rng.integers(3, vocab_size, n_in).tolist()})
    return out


def profile_serving_steps(raw: dict, settings: ProfileSettings) -> list[dict]:
    """Run :func:`stream` through ``mist record``'s serving path; every engine step's row."""
    from mist.profiles.measure.recorder import check_results, record

    requests = stream(int(raw.get("vocab_size", 32000)), min(settings.max_kv, 1024))
    rs = VllmSettings(max_num_seqs=settings.max_num_seqs, max_num_batched_tokens=settings.max_num_batched_tokens,
                        enable_prefix_caching=settings.enable_prefix_caching, threads_bind=settings.threads_bind)
    _install_step_log()
    with tempfile.TemporaryDirectory(prefix="mist-serving-") as tmp:
        log = Path(tmp) / "steps.jsonl"
        os.environ[ENV_LOG] = str(log)
        # the operator stages ran the engine in-process; a recording's engine core has its own process
        in_process = os.environ.get("VLLM_ENABLE_V1_MULTIPROCESSING")
        os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "1"
        hook = Path(tmp) / "hook"
        hook.mkdir()
        (hook / "sitecustomize.py").write_text(SITECUSTOMIZE)
        python_path = os.environ.get("PYTHONPATH")
        os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (str(hook), python_path) if p)
        try:
            model_dir = Path(tmp) / "model"
            model_dir.mkdir()
            # warm-up steps are logged too: empty the log right before the stream starts
            rec = record(raw, requests, rs, str(model_dir), before_stream=lambda: log.write_text(""))
        finally:
            os.environ.pop(ENV_LOG, None)
            if python_path is None:
                os.environ.pop("PYTHONPATH", None)
            else:
                os.environ["PYTHONPATH"] = python_path
            if in_process is not None:
                os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = in_process
        check_results(requests, rec["results"])
        rows = [json.loads(line) for line in log.read_text().splitlines()]
    return [dict(r, step=i) for i, r in enumerate(rows)]
