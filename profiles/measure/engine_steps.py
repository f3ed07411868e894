"""Per-step host overhead of the real vLLM engine, measured in-process.

The engine runs in this process (``VLLM_ENABLE_V1_MULTIPROCESSING=0``, the
``uni`` executor) on a random-weight model (``load_format="dummy"``, the config
copied into a temporary folder), with the engine settings a recording uses. It
serves controlled batches: ``n`` requests of ``p`` distinct random prompt tokens,
each decoding ``m`` tokens, submitted together.

Timed by wrapping methods of the live objects:

* step — ``EngineCore.step_fn``: schedule, execute the model, update the
  scheduler from the output (what the engine-core busy loop does per iteration);
* model — the parts the simulator composes from operators:
  ``model_runner._model_forward`` (embedding, decoder layers, final norm),
  ``model.compute_logits`` (lm_head) and ``model_runner._sample`` (sampler).

``overhead = step − model``: scheduling, input preparation (token/position/slot
tensors, block tables), attention-metadata building, the logits gather, output
bookkeeping and ``update_from_output``. Not included: the API server's request
handling, detokenisation and streaming, and the inter-process hand-offs of the
multiprocess engine (another process on another CPU in a served run). Steps are
keyed by ``(sequences, tokens)`` from the scheduler output; medians per cell.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import numpy as np

from mist.profiles.measure.grids import summarize


def scenarios(settings) -> list[tuple[int, int, int]]:
    """``(n_requests, prompt_tokens, decode_tokens)`` batches to run, in order."""
    ns = [n for n in (1, 2, 4, 8, 16, 32, 64, 128, 256) if n <= settings.max_num_seqs]
    if ns[-1] != settings.max_num_seqs:
        ns.append(settings.max_num_seqs)
    limit = settings.max_kv - 16
    if settings.quick:
        return [(n, min(64, limit), 6) for n in ns[::2] + ([ns[-1]] if len(ns) % 2 == 0 else [])]
    prompts = sorted({min(p, limit) for p in (16, 128, 512)})
    return [(n, p, 12) for p in prompts for n in ns]


def _wrap(obj, name: str, acc: dict, key: str):
    """Replace ``obj.name`` by a wrapper adding its wall time to ``acc[key]``."""
    inner = getattr(obj, name)

    def timed(*args, **kwargs):
        t0 = time.perf_counter()
        try:
            return inner(*args, **kwargs)
        finally:
            acc[key] = acc.get(key, 0.0) + time.perf_counter() - t0

    setattr(obj, name, timed)


def _build_engine(model, raw: dict, settings, workdir: Path):
    from vllm import LLM

    (workdir / "config.json").write_text(json.dumps(raw))
    kv_gib = model.kv_bytes_per_token(4.0) * settings.max_num_seqs * settings.max_kv * 1.5 / 2**30
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", str(max(1, int(np.ceil(kv_gib)))))
    kwargs = dict(model=str(workdir), load_format="dummy", skip_tokenizer_init=True,
                  dtype=str(raw.get("torch_dtype") or raw.get("dtype") or "auto"),
                  enforce_eager=True, max_model_len=settings.max_kv,
                  max_num_batched_tokens=settings.max_num_batched_tokens,
                  max_num_seqs=settings.max_num_seqs, block_size=settings.block_size,
                  enable_prefix_caching=settings.enable_prefix_caching, enable_chunked_prefill=True,
                  disable_log_stats=False,  # as mist record: the scheduler makes per-step stats
                  seed=0, distributed_executor_backend="uni", generation_config="vllm")
    return LLM(**kwargs), kwargs


def step_shape(out) -> dict:
    """A scheduler output's shape as the replay's cost model sees it.

    Each scheduled request computes ``n`` tokens after ``c`` already computed: ``n == 1``
    is a decode attending to ``c + 1`` KV tokens, otherwise a prefill chunk ``(n, c)``.
    """
    before = {r.req_id: int(r.num_computed_tokens) for r in out.scheduled_new_reqs}
    cached = out.scheduled_cached_reqs
    before.update(zip(cached.req_ids, (int(c) for c in cached.num_computed_tokens)))
    kvs, prefills = [], []
    for rid, n in out.num_scheduled_tokens.items():
        if n == 1:
            kvs.append(before[rid] + 1)
        else:
            prefills.append(f"{int(n)}:{before[rid]}")
    return {"n_decode": len(kvs), "kv_decode_sum": sum(kvs), "kv_decode_max": max(kvs, default=0),
            "kv_decode_min": min(kvs, default=0), "prefills": ";".join(sorted(prefills))}


def _instrument(core, runner) -> tuple[list[tuple], list[dict]]:
    """Wrap the live engine's methods; return the lists each step appends to.

    Record: ``(S, T, step_s, model_s, kv, forward_s, logits_s, sampler_s)``; ``kv`` is
    the mean KV length of a pure-decode step, else -1. Step: the step's full shape
    (:func:`step_shape`) and wall time, for ``engine_steps.csv``.
    """
    acc: dict[str, float] = {}
    shape: dict[str, float] = {}
    records: list[tuple] = []
    steps: list[dict] = []
    inner_schedule, inner_step = core.scheduler.schedule, core.step_fn

    def schedule(*args, **kwargs):
        out = inner_schedule(*args, **kwargs)
        S, T = len(out.num_scheduled_tokens), int(out.total_num_scheduled_tokens)
        kv = list(getattr(out.scheduled_cached_reqs, "num_computed_tokens", None) or [])
        pure_decode = S == T and not out.scheduled_new_reqs and len(kv) == S
        # KV length a decode attends to: the tokens computed before plus its own
        shape.update(S=S, T=T, kv=float(np.mean(kv)) + 1 if pure_decode and kv else -1.0,
                     detail=step_shape(out))
        return out

    def step():
        acc.clear()
        shape.clear()
        t0 = time.perf_counter()
        out = inner_step()
        dt = time.perf_counter() - t0
        if shape.get("T", 0) > 0:
            parts = tuple(acc.get(k, 0.0) for k in ("forward", "logits", "sampler"))
            records.append((shape["S"], shape["T"], dt, sum(parts), shape["kv"], *parts))
            steps.append({"sequences": shape["S"], "tokens": shape["T"], **shape["detail"], "time_us": dt * 1e6})
        return out

    core.scheduler.schedule = schedule
    core.step_fn = step
    _wrap(runner, "_model_forward", acc, "forward")
    _wrap(runner.model, "compute_logits", acc, "logits")
    _wrap(runner, "_sample", acc, "sampler")
    return records, steps


def _effective(kwargs: dict, cfg) -> dict:
    """Engine settings of the profile, as given and as the live ``VllmConfig`` resolved them."""
    eff = {k: kwargs[k] for k in ("load_format", "enforce_eager", "skip_tokenizer_init", "dtype",
                                  "max_num_batched_tokens", "max_num_seqs", "block_size",
                                  "disable_log_stats")}
    eff.update(max_model_len=int(cfg.model_config.max_model_len), tensor_parallel_size=1,
               enable_prefix_caching=bool(cfg.cache_config.enable_prefix_caching),
               async_scheduling=bool(cfg.scheduler_config.async_scheduling),
               enable_chunked_prefill=bool(cfg.scheduler_config.enable_chunked_prefill),
               num_cpu_blocks=int(cfg.cache_config.num_gpu_blocks or 0),
               distributed_executor_backend="uni")
    return eff


def profile_step_overhead(model, raw: dict, settings, progress) -> dict:
    """Run the engine on controlled batches; rows of ``step_overhead.csv`` and metadata."""
    from vllm import SamplingParams
    from vllm.inputs import TokensPrompt

    with tempfile.TemporaryDirectory(prefix="mist-profile-model-") as tmp:
        llm, kwargs = _build_engine(model, raw, settings, Path(tmp))
        core = llm.llm_engine.engine_core.engine_core
        worker = core.model_executor.driver_worker
        records, steps = _instrument(core, getattr(worker, "worker", worker).model_runner)
        rng = np.random.default_rng(0)
        runs = [(2, 32, 4)] + scenarios(settings)  # the first run warms up, discarded
        tick = progress(len(runs) - 1, "engine steps")
        for i, (n, p, m) in enumerate(runs):
            prompts = [TokensPrompt(prompt_token_ids=rng.integers(3, model.vocab_size, p).tolist())
                       for _ in range(n)]
            params = SamplingParams(max_tokens=m, min_tokens=m, ignore_eos=True,
                                    temperature=settings.temperature)  # as mist record
            llm.generate(prompts, params, use_tqdm=False)
            if i == 0:
                records.clear()
                steps.clear()
            else:
                tick(1)
        eff = _effective(kwargs, core.vllm_config)
        del llm, core, worker
    return {"rows": aggregate(records), "decode_steps": decode_steps(records), "engine_effective": eff,
            "steps": [dict(s, step=i) for i, s in enumerate(steps)],
            "description": {"method": "EngineCore.step_fn wall time minus model_runner._model_forward "
                                      "+ model.compute_logits + model_runner._sample, per step",
                            "includes": "scheduling, input/attention-metadata preparation, logits "
                                        "gather, update_from_output bookkeeping, per-step stats",
                            "excludes": "API server, detokenisation, IPC of the multiprocess engine",
                            "scenarios": [list(r) for r in runs[1:]], "steps": len(records),
                            "temperature": settings.temperature}}


def decode_steps(records: list[tuple]) -> list[dict]:
    """Pure-decode steps per batch size: median KV length and in-engine times (µs).

    ``records`` rows: ``(S, T, step_s, model_s, kv, forward_s, logits_s, sampler_s)``.
    """
    cells: dict[int, list[tuple]] = defaultdict(list)
    for S, _, _, model_s, kv, *parts in records:
        if kv > 0:
            cells[S].append((kv, model_s, *parts))
    rows = []
    for S, vals in sorted(cells.items()):
        med = np.median(np.array(vals), axis=0)
        rows.append({"sequences": S, "kv_decode": round(float(med[0]), 1),
                     **{k: round(float(v) * 1e6, 1) for k, v in zip(
                         ("model_us", "forward_us", "logits_us", "sampler_us"), med[1:])},
                     "steps": len(vals)})
    return rows


def aggregate(records: list[tuple]) -> list[dict]:
    """Median overhead per ``(sequences, tokens)`` cell of ``(S, T, step_s, model_s, …)`` records."""
    cells: dict[tuple[int, int], list[tuple[float, float]]] = defaultdict(list)
    for S, T, step_s, model_s, *_ in records:
        cells[(S, T)].append((step_s, model_s))
    rows = []
    for (S, T), vals in sorted(cells.items()):
        step_s = np.array([v[0] for v in vals])
        model_s = np.array([v[1] for v in vals])
        med, spread, n = summarize(np.maximum(step_s - model_s, 1e-9))
        rows.append({"sequences": S, "tokens": T, "time_us": med, "spread_us": spread, "samples": n,
                     "step_us": float(np.median(step_s) * 1e6), "model_us": float(np.median(model_s) * 1e6)})
    return rows
