"""Predict measured deployments (silicon rows) from a kernel database.

For each row — a model served by an engine on ``tp`` GPUs of one system, measured
at a fixed concurrency with fixed input/output lengths — build the model's step
cost from the system's kernels (:mod:`mist.calibrate.kernel_profile`), size the KV cache from
the datasheet, and run a closed loop of ``batch_size`` users
(:mod:`mist.replay.clients`). Rows the composition cannot model are skipped with a
reason, never guessed.

What a row's TTFT and TPOT mean is a property of how it was measured. The default
(``arrivals="benchmark"``) is a fixed-concurrency benchmark's whole-run mean: the
client sends its first ``batch_size`` requests at once, then a new one whenever one
ends, ``requests_per_user x batch_size`` requests in all (10 x, the request count of
NVIDIA's genai-perf/aiperf benchmark scripts). The first wave queues behind its own
prefills (simulated from a burst); real clients then fall out of step (network and
front-end jitter), which a deterministic simulation cannot reproduce — its identical
requests stay in lock-step — so later waves take the de-synchronised steady state's
means (simulated from staggered starts). The mean is the requests-weighted blend.

Kernel databases time kernels, not the engine step around them: sampling,
host-side input and output handling and launch gaps are missing. A
:class:`StepOverhead` (``per_step + per_sequence x S`` per step of ``S``
sequences) fitted on one collection of rows and validated on the others
(:func:`fit_step_overhead`) adds them back.

Rows with attention data parallelism (``attention_dp_size`` D > 1, an MoE model) are
read as the benchmark sweeps record them: ``batch_size`` users *per DP rank*
(D x ``batch_size`` in all) on ``tp_size`` GPUs whose experts are spread over all of
them. Each rank's attention and dense layers run on ``tp_size / D`` GPUs for its own
requests; the composition runs them tensor-parallel over all ``tp_size`` GPUs for all
the requests instead — the same FLOPs, KV bytes and expert traffic per GPU, without
the D-fold copy of the dense weights each rank reads (a few % of an MoE model's decode
step). The shared rows support the reading: paired with the plain tensor + expert
parallel row at D x its batch, the attention-DP rows' measured TTFT and TPOT ratios
have medians 1.00-1.02 and P10-P90 within about 10 % (``python bench/silicon.py``
prints the pairs). Dense models with attention DP are skipped, and so are other
engines' attention-DP rows, which are labelled another way (TensorRT-LLM's: ``tp_size``
1, D ranks on D GPUs) and have no such check.

Engine settings the rows do not carry are vLLM's defaults for its OpenAI server
(``vllm/engine/arg_utils.py``, ``get_batch_defaults``): a token budget of 8192 and
``max_num_seqs`` 1024 on GPUs with at least 70 GiB that are not A100s, else 2048
and 256; chunked prefill, 90 % of memory for weights and KV cache, block size 16,
prefix caching on (random prompts share nothing). A user who knows the deployment's
launch flags gives its token budget and sequence cap instead (``max_num_batched_tokens``,
``max_num_seqs``; ``mist silicon --max-num-batched-tokens/--max-num-seqs``).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import pandas as pd

from mist.calibrate.calibration import ape_summary, fit_operators
from mist.calibrate.kernel_profile import kernel_operator_profile
from mist.calibrate.kernels import Datasheet, KernelSet
from mist.profiles.model import ModelConfig, dtype_bytes, load_model_config
from mist.replay.clients import client_lengths, run_benchmark_client, run_closed_loop
from mist.replay.config import EngineConfig
from mist.replay.deployment import async_by_default, build_step_cost, kv_blocks
from mist.replay.step_cost import StepCost
from mist.traces.errors import TraceError
from mist.traces.io import read_yaml_object, write_yaml
from mist.traces.readers.aiconfigurator import picked_tables, read_kernel_db

GPU_MEMORY_UTILIZATION = 0.9
BLOCK_SIZE = 16
MOE_LAYOUT = "MoE sharding other than experts TP-sharded or spread over the TP ranks"
ARRIVALS = ("benchmark", "staggered", "burst", "client")
#: requests per user of the benchmark whose whole-run means a row reports (genai-perf /
#: aiperf scripts: ``--request-count = 10 x concurrency``)
BENCHMARK_REQUESTS_PER_USER = 10
#: requests per user of a simulated steady state (first wave and cool-down excluded)
STEADY_REQUESTS_PER_USER = 4
#: the step overhead ``mist silicon`` applies unless told otherwise (made by
#: ``mist silicon --fit-step-overhead``; the README gives the command)
DEFAULT_STEP_OVERHEAD = Path(__file__).resolve().parents[1] / "profiles" / "silicon_step_overhead.yaml"


def default_requests_per_user(arrivals: str) -> int:
    """A benchmark's requests per user (``"benchmark"``, ``"client"``) or a simulated
    loop's length."""
    return BENCHMARK_REQUESTS_PER_USER if arrivals in ("benchmark", "client") else STEADY_REQUESTS_PER_USER


@dataclass(frozen=True)
class StepOverhead:
    """Engine-step time a kernel database does not measure (s).

    A step of ``S`` sequences takes ``per_step_s + per_sequence_s * S`` on top of its
    composed kernels: sampling over the vocabulary, host-side input preparation and
    output handling, launch gaps. Nothing in the kernels, datasheet or model config
    gives these, so they are fitted (:func:`fit_step_overhead`) on one collection
    of rows and validated on the others; ``fitted_on`` says on what.
    """

    per_step_s: float
    per_sequence_s: float
    fitted_on: dict = field(default_factory=dict)

    def apply(self, cost: StepCost) -> StepCost:
        per_seq = tuple(v + self.per_sequence_s * s for s, v in enumerate(cost.per_seq_s))
        return replace(cost, per_seq_s=per_seq, overhead_s=cost.overhead_s + self.per_step_s)

    def to_dict(self) -> dict:
        return {"per_step_ms": round(self.per_step_s * 1e3, 6),
                "per_sequence_us": round(self.per_sequence_s * 1e6, 6), "fitted_on": self.fitted_on}

    def save(self, path) -> None:
        write_yaml(path, "Engine-step time the kernel database does not measure, added to every\n"
                         "composed step of S sequences: per_step_ms + per_sequence_us * S.\n"
                         "Written by `mist silicon --fit-step-overhead`; see docs/kernels.md.", self.to_dict())

    @classmethod
    def load(cls, path) -> StepOverhead:
        doc = read_yaml_object(path, "step overhead (per_step_ms, per_sequence_us)")
        values = []
        for key in ("per_step_ms", "per_sequence_us"):
            v = doc.get(key)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0:
                raise TraceError(path, f"{key} must be a non-negative number, got {v!r}")
            values.append(float(v))
        fitted_on = doc.get("fitted_on") or {}
        if not isinstance(fitted_on, dict):
            raise TraceError(path, "fitted_on must be a mapping")
        return cls(values[0] * 1e-3, values[1] * 1e-6, fitted_on)


def fit_step_overhead(df: pd.DataFrame, train: pd.Series, note: dict | None = None) -> StepOverhead:
    """Fit ``per_step + per_sequence * C`` to the TPOT the composition misses.

    ``df``: per-row predictions made without an overhead (``pred_tpot_ms``,
    ``tpot_ms``, ``concurrency``); ``train``: a boolean mask of the rows to fit on.
    In a closed loop of ``C`` users a decode step carries about ``C`` sequences,
    and every step between two of a request's tokens adds its overhead to that
    request's TPOT, so the predicted TPOT moves by ``per_step + per_sequence * C``.
    The two non-negative parameters minimise the squared relative TPOT error over
    the training rows (rows the composition does not predict are ignored).
    """
    from scipy.optimize import lsq_linear

    rows = df[train.to_numpy(bool) & df["pred_tpot_ms"].notna().to_numpy()]
    if len(rows) < 2:
        raise ValueError(f"need at least 2 predicted rows to fit a step overhead, got {len(rows)}")
    meas = rows["tpot_ms"].to_numpy(float)
    conc = rows["concurrency"].to_numpy(float)
    A = np.column_stack([1.0 / meas, conc / meas])
    b = 1.0 - rows["pred_tpot_ms"].to_numpy(float) / meas
    fit = lsq_linear(A, b, bounds=(0.0, np.inf))
    a_ms, s_ms = (float(v) for v in fit.x)
    before = ape_summary(rows["pred_tpot_ms"], rows["tpot_ms"], digits=3)
    after = ape_summary(rows["pred_tpot_ms"] + a_ms + s_ms * conc, rows["tpot_ms"], digits=3)
    fitted_on = dict(note or {})
    fitted_on.update(rows=int(len(rows)), tpot_mape_before=before["mape"], tpot_mape_after_estimate=after["mape"],
                     method="least squares of relative TPOT error, TPOT + per_step + per_sequence * concurrency")
    return StepOverhead(a_ms * 1e-3, s_ms * 1e-3, fitted_on)


def _norm(name: str) -> str:
    name = name.lower().replace("_", "-")
    name = re.sub(r"^meta-(?=llama)", "", name)
    return re.sub(r"-instruct(-\d+)?$", "", name)


def model_index(models_dir) -> dict[str, Path]:
    """Model configs of a folder (``<org>--<name>_config.json``) by normalised ``org/name``."""
    out = {}
    for path in sorted(Path(models_dir).glob("*_config.json")):
        org, _, name = path.name[: -len("_config.json")].partition("--")
        if name:
            out[f"{org.lower()}/{_norm(name)}"] = path
    return out


def find_model(index: dict[str, Path], model_path: str) -> Path | None:
    """The config for a Hugging Face id, tolerant of ``Meta-``/``-Instruct`` naming."""
    org, _, name = str(model_path).partition("/")
    return index.get(f"{org.lower()}/{_norm(name)}")


def measured_dtype(dtype: str, kernels: KernelSet) -> str:
    """``dtype`` if the database measured it; block-scaled fp8 falls back to per-tensor
    fp8 (same tensor-core path, scales differ), never the other way round."""
    have = kernels.gemm_dtypes()
    if dtype not in have and dtype == "fp8_block" and "fp8" in have:
        return "fp8"
    return dtype


def _row_mode(row: pd.Series, column: str) -> str | None:
    mode = row.get(column)
    if isinstance(mode, str) and mode:
        return {"bf16": "bfloat16", "float16": "bfloat16"}.get(mode, mode)
    return None


def _four_bit(mode: str | None) -> bool:
    """Whether a quantisation mode stores weights in fewer bits than fp8 (unknown
    names are not: they reach :func:`skip_reason` as unmeasured GEMM dtypes)."""
    try:
        return mode is not None and dtype_bytes(mode) < 1
    except ValueError:
        return False


def gemm_dtype(row: pd.Series, model: ModelConfig) -> str:
    """GEMM dtype of a row's dense layers: bf16 for an MXFP4 checkpoint (gpt-oss
    quantises only its experts, and its rows call that "nvfp4"); a block-scaled fp8
    checkpoint's own kind unless the row ran a 4-bit re-quantisation of it (MiniMax-M2.5
    "nvfp4" rows on Blackwell); else the row's quantisation mode, else the
    checkpoint's (bf16)."""
    if model.quantization == "mxfp4":
        return "bfloat16"
    mode = _row_mode(row, "gemm_quant_mode")
    if model.quantization == "fp8_block":
        return mode if _four_bit(mode) else "fp8_block"
    if mode is not None:
        return mode
    prec = row.get("precision")
    if isinstance(prec, str) and prec and prec not in ("bf16", "bfloat16", "fp16", "float16"):
        return prec
    if model.quantization == "fp8":
        return "fp8"
    return "bfloat16"


def moe_dtype(row: pd.Series, model: ModelConfig) -> str:
    """Weight format of a row's experts: MXFP4 for an MXFP4 checkpoint; else the row's
    ``moe_quant_mode`` when it names a 4-bit format (the experts of a re-quantised
    checkpoint), else the dense layers' (:func:`gemm_dtype`)."""
    if model.quantization == "mxfp4":
        return "mxfp4"
    mode = _row_mode(row, "moe_quant_mode")
    if _four_bit(mode):
        return mode
    return gemm_dtype(row, model)


class KernelVersions:
    """One :class:`KernelSet` per set of tables the rows' engine versions pick.

    A row reads the kernel tables measured nearest its own ``backend_version`` (the
    serving engine's own tables first, :func:`picked_tables`); rows that name no
    version read those nearest ``default``. Versions that pick the same tables share
    one set.
    """

    def __init__(self, system_dir, sheet: Datasheet, hardware: str | None = None,
                 framework: str | None = None, default: str | None = None):
        self.system_dir, self.sheet, self.hardware = system_dir, sheet, hardware
        self.framework, self.default = framework, default
        self._sets: dict[tuple, KernelSet] = {}
        self._picks: dict[str | None, tuple] = {}

    def picks(self, version: str | None) -> tuple:
        """``(table stem, framework, version)`` of each table a version reads (the
        folder is listed once per version)."""
        if version not in self._picks:
            chosen = picked_tables(self.system_dir, version or self.default, self.framework)
            self._picks[version] = tuple(sorted((stem, fw, ver) for stem, (fw, ver, _) in chosen.items()))
        return self._picks[version]

    def for_version(self, version: str | None) -> KernelSet:
        key = self.picks(version)
        if key not in self._sets:
            profile = read_kernel_db(self.system_dir, version or self.default, self.hardware, self.framework)
            self._sets[key] = KernelSet(profile, self.sheet)
        return self._sets[key]

    def gemm_table(self, version: str | None) -> str:
        """``framework version`` of the GEMM table a version reads."""
        return next((f"{fw} {ver}" for stem, fw, ver in self.picks(version) if stem == "gemm_perf"), "")

    def tally(self) -> dict:
        """Queries answered by every set, by kernel family and source."""
        out: dict = {}
        for ks in self._sets.values():
            for fam, srcs in ks.tally().items():
                for src, c in srcs.items():
                    out.setdefault(fam, {})[src] = out.get(fam, {}).get(src, 0) + c
        return {fam: dict(sorted(srcs.items())) for fam, srcs in sorted(out.items())}


def _is_vllm(row: pd.Series) -> bool:
    """Whether the row was served by vLLM (whose async-scheduling default changed in 0.14;
    SGLang and TensorRT-LLM overlap scheduling by default)."""
    return str(row.get("backend") or "vllm").strip().casefold() == "vllm"


def row_version(row: pd.Series) -> str | None:
    v = row.get("backend_version")
    return str(v) if isinstance(v, str) and v else None


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


def _config(index: dict, model_path: str, configs: dict | None = None) -> ModelConfig | None:
    """A row's model config (None when the folder has none); ``configs`` caches them."""
    if configs is not None and model_path in configs:
        return configs[model_path]
    path = find_model(index, model_path)
    model = None if path is None else load_model_config(path)
    if configs is not None:
        configs[model_path] = model
    return model


def skip_reason(row: pd.Series, index: dict, kernels: KernelSet, configs: dict | None = None) -> str | None:
    """Why a row cannot be modelled, or None (``configs``: a cache of model configs
    by ``model_path``, shared with the caller so each is read once)."""
    if row["mode"] != "agg":
        return f"mode {row['mode']} (only aggregated serving is modelled)"
    for col in ("batch_size", "tp_size"):
        if not np.isfinite(row[col]) or row[col] < 1:
            return f"no {col}"
    if np.isfinite(row.get("pp_size", np.nan)) and row["pp_size"] > 1:
        return "pipeline parallel > 1"
    model = _config(index, row["model_path"], configs)
    if model is None:
        return "no model config"
    dp = attention_dp_of(row)
    if dp > 1 and not _is_vllm(row):
        return "attention data parallel (read only for vLLM rows)"
    if dp > 1 and not model.is_moe():
        return "attention data parallel of a dense model"
    if int(row["tp_size"]) % dp:
        return "attention data parallel ranks not dividing the GPUs"
    if model.kv_lora_rank:
        return "multi-head latent attention"
    dt = measured_dtype(gemm_dtype(row, model), kernels)
    if dt not in kernels.gemm_dtypes() and not kernels.weight_only(dt):
        return f"no GEMM measurements for {dt}"
    tp = int(row["tp_size"])
    if model.num_heads % tp:
        return "heads not divisible by tp"
    if model.num_layers > model.num_moe_layers and model.intermediate_size % tp:
        return "MLP width not divisible by tp"
    if model.is_moe():
        ep = expert_parallel_of(row, tp)
        if ep is None:
            return MOE_LAYOUT
        if model.num_experts % ep or (ep == 1 and model.moe_intermediate_size % tp):
            return "experts not divisible over the ranks"
    return None


def _size(row: pd.Series, col: str) -> int | None:
    v = row.get(col)
    return int(v) if v is not None and np.isfinite(v) and v >= 1 else None


def attention_dp_of(row: pd.Series) -> int:
    """A row's attention data-parallel ranks (1 when it does not say)."""
    return _size(row, "attention_dp_size") or 1


def users_of(row: pd.Series) -> int:
    """Concurrent users of a row: ``batch_size`` per attention-DP rank."""
    return int(row["batch_size"]) * attention_dp_of(row)


def expert_parallel_of(row: pd.Series, tp: int) -> int | None:
    """1 when a row's experts are TP-sharded (``moe_tp = tp``, the default when the
    row does not say), ``tp`` when they are spread whole over the TP ranks
    (``moe_ep = tp``, ``moe_tp = 1``), None for any other layout. With attention DP
    (D ranks) the sweeps record the expert ranks as ``tp x D`` (or ``tp``): the
    experts are spread over the ``tp`` GPUs."""
    moe_tp, moe_ep = _size(row, "moe_tp_size"), _size(row, "moe_ep_size")
    dp = attention_dp_of(row)
    if moe_ep in (None, 1) and moe_tp in (None, tp, tp * dp):
        return 1
    if moe_ep in (tp, tp * dp) and moe_tp in (None, 1):
        return tp
    return None


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

    ``moe_efficiency``: the device's fused-MoE rate per compute dtype
    (:mod:`mist.calibrate.fused_moe`); None composes MoE layers from the GEMM table alone.

    ``max_num_batched_tokens`` and ``max_num_seqs``: the deployment's own engine limits
    when its launch flags are known (the rows do not record them); by default vLLM's
    (:func:`vllm_defaults`), the sequence cap raised to the row's concurrency. A cap
    that is given is kept as it is: users beyond it wait for a slot, as in vLLM.
    """
    if arrivals not in ARRIVALS:
        raise ValueError(f"arrivals must be one of {ARRIVALS}, not {arrivals!r}")
    if requests_per_user is None:
        requests_per_user = default_requests_per_user(arrivals)
    tp = int(row["tp_size"])
    users = users_of(row)
    isl, osl = int(row["isl"]), int(row["osl"])
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
                       async_scheduling=async_by_default(row_version(row)) if _is_vllm(row) else True)
    moe_eff = moe_efficiency if model.is_moe() else None
    key = (id(kernels), model.name, tp, ep, dt, md, cfg.max_num_seqs, cfg.max_num_batched_tokens,
           tuple(sorted((moe_eff or {}).items())))
    cost = None if cache is None else cache.get(key)
    if cost is None:
        max_len = max(1 << 15, isl + osl)
        table = kernel_operator_profile(kernels, model, tp, dt, "bfloat16", cfg.max_num_batched_tokens,
                                        cfg.max_num_seqs, max_len, expert_parallel=ep, moe_dtype=md,
                                        moe_efficiency=moe_eff)
        models = fit_operators(table, tp)
        cost = build_step_cost(models, model, cfg, kernels.sheet.link_bw_bytes_s,
                               all_reduce=lambda b: kernels.all_reduce(b, tp),
                               all_gather=lambda b: kernels.all_gather(b, tp))
        if cache is not None:
            cache[key] = cost
    if overhead is not None:
        cost = overhead.apply(cost)
    if cfg.num_gpu_blocks * BLOCK_SIZE < isl + osl:
        raise Unmodelled("KV cache cannot hold one request")
    _, alone = run_closed_loop(cfg, cost, 1, isl, 2, 1)
    lone = alone.ttft_s * 1e3
    if arrivals == "client":
        lengths = client_lengths(isl, osl, requests_per_user * users, length_ratio, seed)
        s = run_benchmark_client(cfg, cost, users, lengths)
        return Prediction(s.ttft_s * 1e3, s.tpot_s * 1e3, s.requests, s.measured, s.preemptions, cfg.num_gpu_blocks,
                          lone_ttft_ms=lone)
    loop_len = STEADY_REQUESTS_PER_USER if arrivals == "benchmark" else requests_per_user
    exclude_warmup = exclude_warmup or arrivals == "benchmark"
    _, locked = run_closed_loop(cfg, cost, users, isl, osl, loop_len, exclude_warmup=exclude_warmup)
    if arrivals == "burst":
        s = locked
        return Prediction(s.ttft_s * 1e3, s.tpot_s * 1e3, s.requests, s.measured, s.preemptions, cfg.num_gpu_blocks,
                          lone_ttft_ms=lone)
    # steady state: users' requests spread over one request lifetime (the burst
    # run's mean end-to-end latency), as jitter spreads a real loop
    _, s = run_closed_loop(cfg, cost, users, isl, osl, loop_len, stagger_s=locked.e2e_s,
                           exclude_warmup=exclude_warmup)
    if arrivals == "staggered":
        return Prediction(s.ttft_s * 1e3, s.tpot_s * 1e3, s.requests, s.measured, s.preemptions, cfg.num_gpu_blocks,
                          lone_ttft_ms=lone)
    _, first = run_closed_loop(cfg, cost, users, isl, osl, 1)
    w = requests_per_user
    ttft = (first.ttft_s + (w - 1) * s.ttft_s) / w
    tpot = (first.tpot_s + (w - 1) * s.tpot_s) / w
    lockstep = (first.ttft_s + (w - 1) * locked.ttft_s) / w
    return Prediction(ttft * 1e3, tpot * 1e3, s.requests + first.requests, s.measured + first.measured,
                      s.preemptions + first.preemptions, cfg.num_gpu_blocks, lockstep * 1e3, lone)


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


def predict_silicon(rows: pd.DataFrame, kernels: KernelSet | KernelVersions, models_dir,
                    requests_per_user: int | None = None, progress=None, arrivals: str = "benchmark",
                    exclude_warmup: bool = True, overhead: StepOverhead | None = None,
                    moe_efficiency: dict | None = None, length_ratio: float = 1.0,
                    seed: int = 0, max_num_batched_tokens: int | None = None,
                    max_num_seqs: int | None = None) -> tuple[pd.DataFrame, dict]:
    """Predict every row; return per-row results and the summary JSON object.

    ``kernels``: one set for every row, or :class:`KernelVersions` so that each row
    reads the tables of its own engine version. ``overhead``, ``moe_efficiency``,
    ``length_ratio``, ``seed``, ``max_num_batched_tokens`` and ``max_num_seqs``: see
    :func:`predict_row`.
    """
    index = model_index(models_dir)
    configs: dict = {}
    cache: dict = {}
    out = []
    skipped: dict[str, int] = {}
    it = rows.iterrows() if progress is None else progress(rows.iterrows(), total=len(rows))
    versions = kernels if isinstance(kernels, KernelVersions) else None
    for i, row in it:
        rec = {"row": i, "id": row.get("id"), "model": row["model_path"], "tp": row["tp_size"],
               "attention_dp": attention_dp_of(row),
               "concurrency": row["batch_size"] * attention_dp_of(row), "isl": row["isl"], "osl": row["osl"],
               "ttft_ms": row["silicon_ttft_ms"], "tpot_ms": row["silicon_tpot_ms"]}
        if versions is not None:
            version = row_version(row)
            kernels = versions.for_version(version)
            rec["kernel_tables"] = versions.gemm_table(version)
        reason = skip_reason(row, index, kernels, configs)
        if reason is None:
            model = configs[row["model_path"]]
            try:
                p = predict_row(row, model, kernels, requests_per_user, cache, arrivals, exclude_warmup, overhead,
                                moe_efficiency, length_ratio, seed, max_num_batched_tokens, max_num_seqs)
            except Unmodelled as exc:
                reason = str(exc)
            else:
                rec.update(pred_ttft_ms=p.ttft_ms, pred_tpot_ms=p.tpot_ms, gemm_dtype=measured_dtype(gemm_dtype(row, model), kernels),
                           num_gpu_blocks=p.num_gpu_blocks, preemptions=p.preemptions)
                if p.ttft_lockstep_ms is not None:
                    rec["pred_ttft_lockstep_ms"] = p.ttft_lockstep_ms
                rec["pred_lone_ttft_ms"] = p.lone_ttft_ms
        if reason is not None:
            skipped[reason] = skipped.get(reason, 0) + 1
            rec["skipped"] = reason
        out.append(rec)
    df = pd.DataFrame(out)
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
    return df, summary

