"""What a silicon row (:func:`mist.traces.readers.silicon.read_silicon`) says about its deployment.

A row names its model by Hugging Face id, its engine and version, its dtypes (row
quantisation modes or the checkpoint's own), its concurrency and its parallel
layout. This module reads those — which model config, which GEMM and expert dtypes,
how many users, which expert layout — and says why a row cannot be modelled
(:func:`skip_reason`), never guessing.

Rows with attention data parallelism (``attention_dp_size`` D > 1, an MoE model) are
read as the benchmark sweeps record them: ``batch_size`` users *per DP rank*
(D x ``batch_size`` in all) on ``tp_size`` GPUs whose experts are spread over all of
them (:func:`users_of`, :func:`expert_parallel_of`). Dense models with attention DP
are skipped, and so are other engines' attention-DP rows, which are labelled another
way (TensorRT-LLM's: ``tp_size`` 1, D ranks on D GPUs).
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd

from mist.calibrate.kernels import KernelSet
from mist.profiles.limits import MAX_RANKS, MAX_REQUEST_TOKENS, MAX_USERS, Rule, checked
from mist.profiles.model import ModelConfig, dtype_bytes, load_model_config
from mist.traces.errors import TraceError

MOE_LAYOUT = "MoE sharding other than experts TP-sharded or spread over the TP ranks"

#: ceilings of the sizes a row's replay is built from (:mod:`mist.profiles.limits`;
#: empty cells are not given): users and tokens are simulated one by one, ranks each
#: hold a replica or a shard
ROW_RULES: dict[str, Rule] = {
    "batch_size": Rule("number", 1, MAX_USERS),
    "isl": Rule("number", 1, MAX_REQUEST_TOKENS),
    "osl": Rule("number", 1, MAX_REQUEST_TOKENS),
    **{c: Rule("number", 0, MAX_RANKS) for c in ("tp_size", "pp_size", "attention_dp_size", "moe_tp_size",
                                                 "moe_ep_size")},
}


def check_row(row: pd.Series) -> None:
    """TraceError (the rows' file and line) for a row whose sizes break :data:`ROW_RULES`
    or whose users (``batch_size`` x attention-DP ranks) exceed the ceiling."""
    path = row.attrs.get("source", "silicon rows")
    line = int(row.name) + 2 if isinstance(row.name, (int, np.integer)) else None  # the header is line 1
    for col, rule in ROW_RULES.items():
        v = row.get(col)
        if v is not None and not (isinstance(v, float) and np.isnan(v)):
            checked(v.item() if isinstance(v, np.generic) else v, rule, path, col, line)
    if np.isfinite(row.get("batch_size", np.nan)) and users_of(row) > MAX_USERS:
        raise TraceError(path, f"batch_size x attention_dp_size = {users_of(row)} users must be at most "
                               f"{MAX_USERS} (each is simulated)", line=line)


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


def row_model(index: dict, model_path: str, configs: dict | None = None) -> ModelConfig | None:
    """A row's model config (None when the folder has none); ``configs``: the configs
    read so far by ``model_path``, filled in here so that each is read once."""
    if configs is not None and model_path in configs:
        return configs[model_path]
    path = find_model(index, model_path)
    model = None if path is None else load_model_config(path)
    if configs is not None:
        configs[model_path] = model
    return model


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


def is_vllm(row: pd.Series) -> bool:
    """Whether the row was served by vLLM (whose async-scheduling default changed in 0.14;
    SGLang and TensorRT-LLM overlap scheduling by default)."""
    return str(row.get("backend") or "vllm").strip().casefold() == "vllm"


def row_version(row: pd.Series) -> str | None:
    """The row's engine version (``backend_version``), None when it names none."""
    v = row.get("backend_version")
    return str(v) if isinstance(v, str) and v else None


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


def _layout_reason(row: pd.Series, model: ModelConfig) -> str | None:
    """Why a row's serving mode or parallel layout cannot be modelled, or None."""
    dp = attention_dp_of(row)
    if dp > 1 and not is_vllm(row):
        return "attention data parallel (read only for vLLM rows)"
    if dp > 1 and not model.is_moe():
        return "attention data parallel of a dense model"
    if int(row["tp_size"]) % dp:
        return "attention data parallel ranks not dividing the GPUs"
    if model.kv_lora_rank:
        return "multi-head latent attention"
    return None


def _sharding_reason(row: pd.Series, model: ModelConfig, kernels: KernelSet) -> str | None:
    """Why a row's dtype or tensor/expert sharding cannot be composed, or None."""
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


def skip_reason(row: pd.Series, index: dict, kernels: KernelSet, configs: dict | None = None) -> str | None:
    """Why a row cannot be modelled, or None (``configs``: the model configs read so
    far by ``model_path``, shared with the caller so each is read once). Raises
    TraceError for sizes past their ceiling (:func:`check_row`)."""
    check_row(row)
    if row["mode"] != "agg":
        return f"mode {row['mode']} (only aggregated serving is modelled)"
    for col in ("batch_size", "tp_size"):
        if not np.isfinite(row[col]) or row[col] < 1:
            return f"no {col}"
    if np.isfinite(row.get("pp_size", np.nan)) and row["pp_size"] > 1:
        return "pipeline parallel > 1"
    model = row_model(index, row["model_path"], configs)
    if model is None:
        return "no model config"
    return _layout_reason(row, model) or _sharding_reason(row, model, kernels)
