"""Record a real vLLM run on this machine: the engine side of ``mist record``.

A random-weight model is built from a Hugging Face ``config.json`` (seeded), an
in-process vLLM ``AsyncLLM`` serves it, and a request stream is replayed open-loop:
every request is submitted at its arrival offset whatever the engine is doing, and
streamed one token at a time so each token's client arrival time is known.

vLLM is imported only inside the functions that need it, so importing this module
is cheap and works without vLLM installed.

Clocks
------
``arrival_time`` is vLLM's front-end wall clock (epoch s, ``time.time()`` when the
request was added); ``queued_ts`` … ``last_token_ts`` are the engine's monotonic
clock (s, ``time.monotonic()`` in the engine-core process; CLOCK_MONOTONIC is
system-wide, so it is the client's monotonic clock too). Token times are the
client's wall clock (epoch s) when the streamed output reached the client.
:func:`monotonic_to_epoch` measures the exact offset between the two clocks.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import os
import time

import numpy as np

from mist.profiles.measure.settings import VllmSettings
from mist.traces.errors import TraceError

ENV_KV_SPACE = "VLLM_CPU_KVCACHE_SPACE"
ENV_BIND = "VLLM_CPU_OMP_THREADS_BIND"
WARMUP_MAX_OUTPUT = 16  # tokens; warm-up only has to touch every code path once


#: how to get a working engine (the README's ``[record]`` install)
INSTALL = ("pip install torch==2.13.0 (CPU build), then pip install -e '.[record]', then "
           "pip uninstall -y torchvision torchaudio torchcodec (their PyPI builds need CUDA "
           "torch; a text model needs none of them)")  # fmt: skip


class EngineUnavailable(ImportError):
    """torch, transformers or vLLM cannot be imported (missing, or a broken install)."""


def engine_versions() -> dict:
    """Versions of vLLM, torch and transformers, after importing what the engine needs.

    Raises
    ------
    EngineUnavailable
        One of them is missing or does not load. transformers imports torchvision
        whenever it is installed, so a torchvision that cannot load beside this torch
        (PyPI's CUDA builds beside the CPU torch) breaks every model config too.
    """
    try:
        import torch
        import transformers
        import vllm

        if importlib.util.find_spec("torchvision") is not None:
            import torchvision  # noqa: F401
    except Exception as exc:  # ImportError, or a broken install (a CUDA torchvision)
        raise EngineUnavailable(str(exc)) from exc
    return {"vllm_version": vllm.__version__, "torch_version": torch.__version__,
            "transformers_version": transformers.__version__}  # fmt: skip


def model_dtype(config: dict) -> str:
    """The dtype a model config declares (``dtype`` or ``torch_dtype``), default float32."""
    return str(config.get("dtype") or config.get("torch_dtype") or "float32")


def build_model(config: dict, seed: int, directory) -> None:
    """Save a random-weight model of ``config`` (a HF ``config.json`` dict) to ``directory``.

    Weights come from ``torch.manual_seed(seed)`` and the architecture's own
    initialisation, in the config's dtype; no tokenizer is written.
    """
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    cfg = dict(config)
    if "model_type" not in cfg:
        raise TraceError("model config", "no 'model_type' (not a Hugging Face config.json?)")
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(AutoConfig.for_model(**cfg))
    model.to(getattr(torch, model_dtype(config).removeprefix("torch."))).save_pretrained(directory)


def engine_kwargs(settings: VllmSettings, model: str, dtype: str, max_model_len: int) -> dict:
    """The ``AsyncEngineArgs`` keywords of a recording (also stored in ``meta.json``)."""
    return {
        "model": model,
        "tensor_parallel_size": 1,
        "data_parallel_size": 1,
        "max_num_seqs": settings.max_num_seqs,
        "max_num_batched_tokens": settings.max_num_batched_tokens,
        "block_size": None,  # vLLM's default (128 on CPU); the real one is in engine_effective
        "enable_prefix_caching": settings.enable_prefix_caching,
        "enable_chunked_prefill": True,
        "enforce_eager": settings.enforce_eager,
        "dtype": dtype,
        "seed": settings.seed,
        "max_model_len": max_model_len,
        "skip_tokenizer_init": True,
        "disable_log_stats": False,  # the per-request timestamps need stats on
    }


def effective_config(vllm_config) -> dict:
    """Settings read back from a live engine's ``VllmConfig``."""
    cache, sched = vllm_config.cache_config, vllm_config.scheduler_config
    return {
        "block_size": int(cache.block_size),
        "num_gpu_blocks": int(cache.num_gpu_blocks or 0),
        "enable_prefix_caching": bool(cache.enable_prefix_caching),
        "enable_chunked_prefill": bool(sched.enable_chunked_prefill),
        "async_scheduling": bool(sched.async_scheduling),
        "max_num_seqs": int(sched.max_num_seqs),
        "max_num_batched_tokens": int(sched.max_num_batched_tokens),
        "max_model_len": int(vllm_config.model_config.max_model_len),
        "enforce_eager": bool(vllm_config.model_config.enforce_eager),
    }


def monotonic_to_epoch(samples: int = 7) -> float:
    """Seconds to add to ``time.monotonic()`` to get ``time.time()`` (median of samples)."""
    return float(np.median([time.time() - time.monotonic() for _ in range(samples)]))


@contextlib.contextmanager
def _env(values: dict[str, str]):
    old = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _tick_logger(samples: list):
    """A vLLM stat-logger class appending ``(monotonic s, running, waiting, kv use,
    prompt tokens, generated tokens)`` to ``samples`` at every engine output."""
    from vllm.v1.metrics.loggers import StatLoggerBase

    class TickLogger(StatLoggerBase):
        def __init__(self, vllm_config, engine_index: int = 0):
            pass

        def record(self, scheduler_stats, iteration_stats, mm_cache_stats=None, engine_idx=0):
            if scheduler_stats is None:
                return
            it = iteration_stats
            samples.append((time.monotonic(), scheduler_stats.num_running_reqs,
                            scheduler_stats.num_waiting_reqs, scheduler_stats.kv_cache_usage,
                            it.num_prompt_tokens if it else 0,
                            it.num_generation_tokens if it else 0))  # fmt: skip

        def log_engine_initialized(self):
            pass

    return TickLogger


async def _one(engine, rid: str, ids: list, n_out: int, delay_s: float, done) -> dict:
    from vllm import SamplingParams
    from vllm.sampling_params import RequestOutputKind

    params = SamplingParams(max_tokens=n_out, min_tokens=n_out, ignore_eos=True, temperature=0.0,
                            output_kind=RequestOutputKind.DELTA)  # fmt: skip
    await asyncio.sleep(max(0.0, delay_s))
    times: list[float] = []
    last = None
    async for out in engine.generate({"prompt_token_ids": ids}, params, request_id=rid):
        now = time.time()
        times.extend([now] * len(out.outputs[0].token_ids))  # a lagging client gets several
        last = out
    m = last.metrics if last is not None else None
    if done is not None:
        done()
    return {"request_id": rid, "finished": bool(last and last.finished), "token_times": times,
            "num_generation_tokens": None if m is None else m.num_generation_tokens,
            "arrival_time": None if m is None else m.arrival_time,
            **{k: None if m is None else getattr(m, k) for k in
               ("queued_ts", "scheduled_ts", "first_token_ts", "last_token_ts")}}  # fmt: skip


async def _gather(coros) -> list[dict]:
    tasks = [asyncio.ensure_future(c) for c in coros]
    try:
        return list(await asyncio.gather(*tasks))
    finally:  # one failure (or Ctrl-C) stops the others
        for t in tasks:
            t.cancel()


def warmup_prompts(requests: list[dict], k: int, vocab_size: int, seed: int) -> list[tuple]:
    """``k`` ``(token ids, output tokens)`` shaped like the first requests, with fresh
    random ids so that no warm-up prompt pre-fills the prefix cache of the stream."""
    rng = np.random.default_rng([seed, 1])
    out = []
    for i in range(k):
        r = requests[i % len(requests)]
        out.append((rng.integers(0, vocab_size, r["input_toks"]).tolist(),
                    min(r["output_toks"], WARMUP_MAX_OUTPUT)))  # fmt: skip
    return out


async def _session(kwargs: dict, samples: list, requests: list[dict], warm: list[tuple],
                   before_stream, progress) -> dict:  # fmt: skip
    # The engine is made inside the running loop: its client sockets belong to that loop.
    from vllm.engine.arg_utils import AsyncEngineArgs
    from vllm.v1.engine.async_llm import AsyncLLM

    args = AsyncEngineArgs(**{k: v for k, v in kwargs.items() if v is not None})
    engine = AsyncLLM.from_engine_args(args, stat_loggers=[_tick_logger(samples)])
    try:
        effective = effective_config(engine.vllm_config)
        await _gather(_one(engine, f"warmup-{i}", ids, n, 0.0, None)
                      for i, (ids, n) in enumerate(warm))  # fmt: skip
        probe = before_stream() if before_stream is not None else None
        offset = monotonic_to_epoch()
        start = time.monotonic()
        results = await _gather(
            _one(engine, r["request_id"], r["input_tok_ids"], r["output_toks"],
                 start + r["arrival_s"] - time.monotonic(), progress)
            for r in requests
        )  # fmt: skip
        end = time.monotonic()
    finally:
        engine.shutdown()
        # Something in vLLM keeps the engine alive until interpreter exit, where its
        # __del__ calls shutdown() again with module globals gone (a noisy TypeError).
        engine.shutdown = lambda *a, **k: None
    return {"results": results, "engine_kwargs": kwargs, "engine_effective": effective,
            "probe": probe, "monotonic_to_epoch_s": offset, "stats": samples,
            "stream_start_mono_s": start, "stream_end_mono_s": end}  # fmt: skip


def record(config: dict, requests: list[dict], settings: VllmSettings, model_dir: str,
           before_stream=None, progress=None) -> dict:  # fmt: skip
    """Build the model in ``model_dir``, start vLLM, warm it up, replay ``requests``.

    Parameters
    ----------
    config : dict
        Hugging Face ``config.json`` of the model (random weights, seeded).
    requests : list of dict
        ``request_id``, ``input_tok_ids``, ``input_toks``, ``output_toks``, ``arrival_s``
        (s after the start of the stream).
    settings : VllmSettings
    model_dir : str
        Empty directory for the weights (the caller removes it).
    before_stream : callable, optional
        Called after warm-up, right before the first request; its result is returned
        as ``probe`` (``mist record`` runs the speed probe here).
    progress : callable, optional
        Called once per finished request.

    Returns
    -------
    dict
        ``results`` (one dict per request, in order: request_id, finished,
        token_times, num_generation_tokens and the vLLM timestamps), ``engine_kwargs``,
        ``engine_effective``, ``probe``, ``monotonic_to_epoch_s``, ``stats`` (engine
        samples, see :func:`_tick_logger`) and ``stream_start_mono_s`` /
        ``stream_end_mono_s`` (monotonic s; the stream's first submission and last finish).
    """
    build_model(config, settings.seed, model_dir)
    need = max(r["input_toks"] + r["output_toks"] for r in requests)
    limit = config.get("max_position_embeddings")
    if isinstance(limit, int) and need > limit:
        raise TraceError("model config", f"a request needs {need} positions but "
                         f"max_position_embeddings is {limit}")  # fmt: skip
    kwargs = engine_kwargs(settings, model_dir, model_dtype(config), need)
    warm = warmup_prompts(requests, settings.warmup, int(config.get("vocab_size", 2)),
                          settings.seed)  # fmt: skip
    env = {ENV_KV_SPACE: str(settings.kv_cache_space_gib), ENV_BIND: settings.threads_bind}
    with _env(env):  # read by the engine processes when they start
        return asyncio.run(_session(kwargs, [], requests, warm, before_stream, progress))


def check_results(requests: list[dict], results: list[dict]) -> None:
    """Every request finished with exactly its requested number of tokens.

    Raises
    ------
    TraceError
        Naming the first request that did not (unfinished, wrong token count, or a
        missing engine timestamp).
    """
    if len(results) != len(requests):
        raise TraceError("recording", f"{len(results)} results for {len(requests)} requests")
    for req, res in zip(requests, results):
        rid, want = req["request_id"], req["output_toks"]
        if not res["finished"]:
            raise TraceError("recording", f"request {rid!r} did not finish")
        got = {"streamed": len(res["token_times"]), "engine": res["num_generation_tokens"]}
        for where, n in got.items():
            if n != want:
                raise TraceError("recording", f"request {rid!r}: {n} tokens {where}, {want} requested")
        missing = [k for k in ("arrival_time", "queued_ts", "scheduled_ts", "first_token_ts",
                               "last_token_ts") if not res[k]]  # fmt: skip
        if missing:
            raise TraceError("recording", f"request {rid!r}: no engine timestamps {missing}")
