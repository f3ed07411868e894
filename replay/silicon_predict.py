"""Predict one silicon row — a deployment measured at fixed concurrency — from kernels.

For a row (a model served by an engine on ``tp`` GPUs of one system, measured at a
fixed concurrency with fixed input/output lengths): build the model's step cost
from the system's kernels (:mod:`mist.calibrate.kernel_profile`), size the KV cache
from the datasheet, and run a closed loop of the row's users
(:mod:`mist.replay.clients`).

What a row's TTFT and TPOT mean is a property of how it was measured. The default
(``arrivals="benchmark"``) is a fixed-concurrency benchmark's whole-run mean: the
client sends its first ``batch_size`` requests at once, then a new one whenever one
ends, ``requests_per_user x batch_size`` requests in all (10 x, the request count of
NVIDIA's genai-perf/aiperf benchmark scripts). The first wave queues behind its own
prefills (simulated from a burst); real clients then fall out of step (network and
front-end jitter), which a deterministic simulation cannot reproduce — its identical
requests stay in lock-step — so later waves take the de-synchronised steady state's
means (simulated from staggered starts). The mean is the requests-weighted blend.

Kernel databases time kernels, not the engine step around them; a fitted
:class:`mist.calibrate.step_overhead.StepOverhead` adds the rest
(:func:`with_step_overhead`).

Attention-DP rows (an MoE model, D ranks, ``batch_size`` users per rank) run their
attention and dense layers tensor-parallel over all ``tp_size`` GPUs for all D x
``batch_size`` requests: the same FLOPs, KV bytes and expert traffic per GPU as D
ranks of ``tp_size / D`` GPUs each, without the D-fold copy of the dense weights each
rank reads (a few % of an MoE model's decode step). The shared rows support the
reading: paired with the plain tensor + expert parallel row at D x its batch, the
attention-DP rows' measured TTFT and TPOT ratios have medians 1.00-1.02 and P10-P90
within about 10 % (``python bench/silicon.py`` prints the pairs).

Engine settings the rows do not carry are vLLM's defaults for its OpenAI server
(``vllm/engine/arg_utils.py``, ``get_batch_defaults``): a token budget of 8192 and
``max_num_seqs`` 1024 on GPUs with at least 70 GiB that are not A100s, else 2048
and 256; chunked prefill, 90 % of memory for weights and KV cache, block size 16,
prefix caching on (random prompts share nothing). A user who knows the deployment's
launch flags gives its token budget and sequence cap instead (``max_num_batched_tokens``,
``max_num_seqs``).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import pandas as pd

from mist.calibrate.calibration import fit_operators
from mist.calibrate.kernel_profile import kernel_operator_profile
from mist.calibrate.kernels import Datasheet, KernelSet
from mist.calibrate.step_overhead import StepOverhead
from mist.profiles.model import ModelConfig, dtype_bytes
from mist.replay.clients import client_lengths, run_benchmark_client, run_closed_loop
from mist.replay.config import EngineConfig
from mist.replay.deployment import async_by_default, build_step_cost, kv_blocks
from mist.replay.silicon_rows import (
    MOE_LAYOUT,
    expert_parallel_of,
    gemm_dtype,
    is_vllm,
    measured_dtype,
    moe_dtype,
    row_version,
    users_of,
)
from mist.replay.step_cost import StepCost

GPU_MEMORY_UTILIZATION = 0.9
BLOCK_SIZE = 16
ARRIVALS = ("benchmark", "staggered", "burst", "client")
#: requests per user of the benchmark whose whole-run means a row reports (genai-perf /
#: aiperf scripts: ``--request-count = 10 x concurrency``)
BENCHMARK_REQUESTS_PER_USER = 10
#: requests per user of a simulated steady state (first wave and cool-down excluded)
STEADY_REQUESTS_PER_USER = 4


def default_requests_per_user(arrivals: str) -> int:
    """A benchmark's requests per user (``"benchmark"``, ``"client"``) or a simulated
    loop's length."""
    return BENCHMARK_REQUESTS_PER_USER if arrivals in ("benchmark", "client") else STEADY_REQUESTS_PER_USER


class Unmodelled(Exception):
    """A row the composition cannot predict; the message is the skip reason."""


@dataclass(frozen=True)
class Prediction:
    """One row's prediction (ms). ``ttft_lockstep_ms`` (benchmark means only): the
    TTFT if the clients never fell out of step after the first wave — the other end
    of the range the benchmark's unrecorded client jitter spans. ``lone_ttft_ms``: the
    TTFT of one request alone on the deployment (its prefill), the unit in which a
    row's queueing reads the same at every TP degree and prompt length."""

    ttft_ms: float
    tpot_ms: float
    requests: int
    measured: int
    preemptions: int
    num_gpu_blocks: int
    ttft_lockstep_ms: float | None = None
    lone_ttft_ms: float | None = None


def with_step_overhead(cost: StepCost, overhead: StepOverhead) -> StepCost:
    """``cost`` with ``overhead.per_step_s`` added to every step and
    ``overhead.per_sequence_s`` to every sequence of a step."""
    per_seq = tuple(v + overhead.per_sequence_s * s for s, v in enumerate(cost.per_seq_s))
    return replace(cost, per_seq_s=per_seq, overhead_s=cost.overhead_s + overhead.per_step_s)


def vllm_defaults(sheet: Datasheet) -> tuple[int, int]:
    """vLLM's OpenAI-server ``(max_num_batched_tokens, max_num_seqs)`` for a device."""
    if sheet.memory_bytes >= 70 * 2**30 and "a100" not in sheet.name.lower():
        return 8192, 1024
    return 2048, 256


def engine_limits(sheet: Datasheet, max_num_batched_tokens: int | None = None,
                  max_num_seqs: int | None = None) -> tuple[int, int]:
    """The deployment's ``(max_num_batched_tokens, max_num_seqs)``: those given (its
    launch flags, when known), else :func:`vllm_defaults` for the device."""
    budget, seqs = vllm_defaults(sheet)
    return (budget if max_num_batched_tokens is None else int(max_num_batched_tokens),
            seqs if max_num_seqs is None else int(max_num_seqs))


def kv_blocks_for(model: ModelConfig, sheet: Datasheet, tp: int, dtype: str, experts: str | None = None,
                  max_num_batched_tokens: int | None = None, max_num_seqs: int | None = None) -> int:
    """KV blocks per rank (:func:`mist.replay.deployment.kv_blocks`) on the datasheet's memory at
    vLLM's default utilisation, the token budget and sequence cap of
    :func:`engine_limits`, weights in ``dtype`` (routed experts in ``experts`` when
    given) and a 16-bit KV cache."""
    budget, max_seqs = engine_limits(sheet, max_num_batched_tokens, max_num_seqs)
    return kv_blocks(model, sheet.memory_bytes, GPU_MEMORY_UTILIZATION, tp, BLOCK_SIZE, 2.0, dtype_bytes(dtype),
                     max_num_batched_tokens=budget, max_num_seqs=max_seqs,
                     expert_dtype_bytes=None if experts is None else dtype_bytes(experts))


@dataclass(frozen=True)
class _Layout:
    """What a row's deployment is made of: engine settings, dtypes, expert layout."""

    cfg: EngineConfig
    gemm_dtype: str
    moe_dtype: str | None
    expert_parallel: int


def _layout(row: pd.Series, model: ModelConfig, kernels: KernelSet, max_num_batched_tokens: int | None,
            max_num_seqs: int | None) -> _Layout:
    tp, users = int(row["tp_size"]), users_of(row)
    dt = measured_dtype(gemm_dtype(row, model), kernels)
    md = measured_dtype(moe_dtype(row, model), kernels) if model.is_moe() else None
    budget, max_seqs = engine_limits(kernels.sheet, max_num_batched_tokens, max_num_seqs)
    ep = expert_parallel_of(row, tp) if model.is_moe() else 1
    if ep is None:
        raise Unmodelled(MOE_LAYOUT)
    cfg = EngineConfig(max_num_seqs=max(max_seqs, users) if max_num_seqs is None else max_seqs,
                       max_num_batched_tokens=budget, block_size=BLOCK_SIZE,
                       num_gpu_blocks=kv_blocks_for(model, kernels.sheet, tp, dt, md, budget, max_seqs),
                       tensor_parallel=tp, expert_parallel=ep > 1,
                       async_scheduling=async_by_default(row_version(row)) if is_vllm(row) else True)
    return _Layout(cfg, dt, md, ep)


def _step_cost(layout: _Layout, model: ModelConfig, kernels: KernelSet, max_len: int,
               moe_efficiency: dict | None, cache: dict | None) -> StepCost:
    """The deployment's step cost composed from kernels; ``cache``: the costs composed
    so far in this run, by what they depend on (many rows share a deployment)."""
    cfg, tp, ep = layout.cfg, layout.cfg.tensor_parallel, layout.expert_parallel
    moe_eff = moe_efficiency if model.is_moe() else None
    key = (id(kernels), model.name, tp, ep, layout.gemm_dtype, layout.moe_dtype, cfg.max_num_seqs,
           cfg.max_num_batched_tokens, tuple(sorted((moe_eff or {}).items())))
    cost = None if cache is None else cache.get(key)
    if cost is None:
        table = kernel_operator_profile(kernels, model, tp, layout.gemm_dtype, "bfloat16", cfg.max_num_batched_tokens,
                                        cfg.max_num_seqs, max_len, expert_parallel=ep, moe_dtype=layout.moe_dtype,
                                        moe_efficiency=moe_eff)
        cost = build_step_cost(fit_operators(table, tp), model, cfg, kernels.sheet.link_bw_bytes_s,
                               all_reduce=lambda b: kernels.all_reduce(b, tp),
                               all_gather=lambda b: kernels.all_gather(b, tp))
        if cache is not None:
            cache[key] = cost
    return cost


def _prediction(s, cfg: EngineConfig, lone_ms: float) -> Prediction:
    return Prediction(s.ttft_s * 1e3, s.tpot_s * 1e3, s.requests, s.measured, s.preemptions, cfg.num_gpu_blocks,
                      lone_ttft_ms=lone_ms)


def _simulate(cfg: EngineConfig, cost: StepCost, users: int, isl: int, osl: int, arrivals: str,
              requests_per_user: int, exclude_warmup: bool, length_ratio: float, seed: int) -> Prediction:
    """Run the closed loops ``arrivals`` asks for and blend them (see :func:`predict_row`)."""
    _, alone = run_closed_loop(cfg, cost, 1, isl, 2, 1)
    lone = alone.ttft_s * 1e3
    if arrivals == "client":
        lengths = client_lengths(isl, osl, requests_per_user * users, length_ratio, seed)
        return _prediction(run_benchmark_client(cfg, cost, users, lengths), cfg, lone)
    loop_len = STEADY_REQUESTS_PER_USER if arrivals == "benchmark" else requests_per_user
    exclude_warmup = exclude_warmup or arrivals == "benchmark"
    _, locked = run_closed_loop(cfg, cost, users, isl, osl, loop_len, exclude_warmup=exclude_warmup)
    if arrivals == "burst":
        return _prediction(locked, cfg, lone)
    # steady state: users' requests spread over one request lifetime (the burst
    # run's mean end-to-end latency), as jitter spreads a real loop
    _, s = run_closed_loop(cfg, cost, users, isl, osl, loop_len, stagger_s=locked.e2e_s,
                           exclude_warmup=exclude_warmup)
    if arrivals == "staggered":
        return _prediction(s, cfg, lone)
    _, first = run_closed_loop(cfg, cost, users, isl, osl, 1)
    w = requests_per_user
    ttft = (first.ttft_s + (w - 1) * s.ttft_s) / w
    tpot = (first.tpot_s + (w - 1) * s.tpot_s) / w
    lockstep = (first.ttft_s + (w - 1) * locked.ttft_s) / w
    return Prediction(ttft * 1e3, tpot * 1e3, s.requests + first.requests, s.measured + first.measured,
                      s.preemptions + first.preemptions, cfg.num_gpu_blocks, lockstep * 1e3, lone)


def predict_row(row: pd.Series, model: ModelConfig, kernels: KernelSet, requests_per_user: int | None = None,
                cache: dict | None = None, arrivals: str = "benchmark", exclude_warmup: bool = True,
                overhead: StepOverhead | None = None, moe_efficiency: dict | None = None,
                length_ratio: float = 1.0, seed: int = 0, max_num_batched_tokens: int | None = None,
                max_num_seqs: int | None = None) -> Prediction:
    """Closed-loop prediction of one row (times in ms).

    ``arrivals``:

    - ``"benchmark"`` (default): the whole-run mean of a benchmark of
      ``requests_per_user`` (default 10) requests per user — its first wave sent at
      once (simulated from a burst), the rest in the de-synchronised steady state;
    - ``"staggered"``: the steady state alone (first requests spread over one
      request lifetime; the first wave and the cool-down excluded);
    - ``"burst"``: every user's first request at t = 0 and the users kept in
      lock-step (identical requests finish together), as a deterministic loop does;
    - ``"client"``: the benchmark client itself — ``requests_per_user`` x users
      requests behind a semaphore of ``users`` slots, the first wave sent at once, each
      request's prompt and output lengths drawn from ``[floor(L * length_ratio), L]``
      (seeded by ``seed``; :func:`mist.replay.clients.client_lengths`), means over
      every request. With ``length_ratio`` 1 the loop stays in lock-step; with lengths
      that vary (InferenceX runs 0.8) the users fall out of step by themselves.

    For ``"staggered"`` and ``"burst"``, ``requests_per_user`` (default 4) is the
    simulated loop's length and ``exclude_warmup=False`` averages over all of it;
    ``"client"`` (default 10 per user) always counts every request.

    ``cache``: step costs composed so far in this run (rows of one deployment share one).
    ``overhead``: step time the kernels do not measure (:func:`with_step_overhead`).
    ``moe_efficiency``: the device's fused-MoE rate per compute dtype
    (:mod:`mist.calibrate.fused_moe`); None composes MoE layers from the GEMM table alone.

    ``max_num_batched_tokens`` and ``max_num_seqs``: the deployment's own engine limits
    when its launch flags are known (the rows do not record them); by default vLLM's
    (:func:`vllm_defaults`), the sequence cap raised to the row's concurrency. A cap
    that is given is kept as it is: users beyond it wait for a slot, as in vLLM.

    Raises
    ------
    Unmodelled
        The row's expert layout cannot be composed, or its KV cache cannot hold one request.
    """
    if arrivals not in ARRIVALS:
        raise ValueError(f"arrivals must be one of {ARRIVALS}, not {arrivals!r}")
    if requests_per_user is None:
        requests_per_user = default_requests_per_user(arrivals)
    isl, osl = int(row["isl"]), int(row["osl"])
    layout = _layout(row, model, kernels, max_num_batched_tokens, max_num_seqs)
    cost = _step_cost(layout, model, kernels, max(1 << 15, isl + osl), moe_efficiency, cache)
    if overhead is not None:
        cost = with_step_overhead(cost, overhead)
    if layout.cfg.num_gpu_blocks * BLOCK_SIZE < isl + osl:
        raise Unmodelled("KV cache cannot hold one request")
    return _simulate(layout.cfg, cost, users_of(row), isl, osl, arrivals, requests_per_user, exclude_warmup,
                     length_ratio, seed)


def protocol_range(rows: pd.DataFrame, slack: float = 0.05) -> dict:
    """Where measured TTFTs sit between the two ends of the benchmark's unknown client
    jitter: the predicted mean with clients de-synchronised after the first wave
    (``pred_ttft_ms``, position 0) and with clients kept in lock-step
    (``pred_ttft_lockstep_ms``, position 1). ``inside_pct``: rows within the range
    widened by ``slack``; ``position``: median and P10/P90 of each row's position.
    A description of the measurements, not a fit: nothing here feeds a prediction."""
    lo, hi = rows["pred_ttft_ms"].to_numpy(float), rows["pred_ttft_lockstep_ms"].to_numpy(float)
    meas = rows["ttft_ms"].to_numpy(float)
    inside = (meas >= lo * (1 - slack)) & (meas <= hi * (1 + slack))
    span = np.where(hi > lo, hi - lo, np.nan)
    pos = (meas - lo) / span
    pos = pos[np.isfinite(pos)]
    out = {"rows": int(len(rows)), "inside_pct": round(float(inside.mean() * 100), 1) if len(rows) else None}
    if len(pos):
        out["position"] = {k: round(float(np.percentile(pos, q)), 3) for k, q in (("p10", 10), ("median", 50),
                                                                                  ("p90", 90))}
    return out
