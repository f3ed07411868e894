"""Physical time terms of one offline LLM batch, from datasheets and model architecture.

A benchmark row runs ``batch_size`` requests of ``input_tokens`` prompt tokens and
``output_tokens`` generated tokens on ``num_devices`` accelerators.  Each *term* below is
a time (s) the row would take on its datasheet's peaks, or a count, so that latency is a
positive combination of terms with fitted efficiencies (:mod:`mist.calibrate.accelerator`):

``const_1dev``, ``const_multi``   1 for runs on one / several devices (a run constant)
``prefill``                      prompt FLOPs (linear layers + causal attention) / peak
``prefill_weights``              weight bytes read by prompt passes / bandwidth
``weights``                      weight bytes read by decode steps / bandwidth
``kv``, ``kv_sliding``           KV-cache bytes read by decode steps / bandwidth (the
                                 second only for models with a sliding window)
``decode_flops``                 decode FLOPs / peak (roofline partner of ``weights``)
``steps``, ``seq_steps``         forward passes; passes x running sequences
``allreduce``                    tensor-parallel all-reduce hops (2 per layer per pass)
``allreduce_bytes``              prompt activations all-reduced / link bandwidth
``hops``                         device-to-device hand-offs of a layer-split pipeline

How a framework runs a batch is data (:data:`FRAMEWORKS`), not code: ``llama.cpp``'s
``llama-bench -b B`` processes one sequence with prompt micro-batches of ``B`` and splits
layers across devices; the others batch ``B`` sequences with tensor parallelism and a
paged KV cache that fills ``0.9`` of device memory less :data:`RESERVE_BYTES`, beyond
which sequences run in waves.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

TERMS = ("const_1dev", "const_multi", "prefill", "prefill_weights", "weights", "kv",
         "kv_sliding", "decode_flops", "steps", "seq_steps", "allreduce", "allreduce_bytes",
         "hops")

#: skip reasons (row cannot be modelled), in the order they are checked.
NO_DATASHEET = "no datasheet for the hardware"
NO_PEAK = "datasheet gives no bf16/fp16 peak"
NO_MODEL = "unknown model architecture"
BEYOND_CONTEXT = "input + output tokens exceed the model's context window"
BELOW_BOUND = "latency below the datasheet bound (the run cannot have generated its tokens)"

GPU_MEMORY_UTILIZATION = 0.9  # vLLM's default share of device memory
RESERVE_BYTES = 2e9  # activations, graphs and communication buffers per device
DTYPE_BYTES = 2.0  # the benchmarks serve fp16/bf16 weights and KV cache


@dataclass(frozen=True)
class Semantics:
    """How a framework executes one benchmark row.

    Attributes
    ----------
    one_sequence : bool
        ``Batch Size`` is a prompt micro-batch of a single sequence (llama-bench ``-b``).
    layer_split : bool
        Devices hold consecutive layers and run one after another (no tensor parallelism).
    paged_kv : bool
        KV cache is a pool sized from free memory; a batch beyond it runs in waves.
    """

    one_sequence: bool = False
    layer_split: bool = False
    paged_kv: bool = True


#: framework (case-folded) -> semantics; others get ``Semantics()``.
FRAMEWORKS = {"llama.cpp": Semantics(one_sequence=True, layer_split=True, paged_kv=False)}


def semantics(framework: str) -> Semantics:
    """Execution semantics of ``framework`` (default: batched, tensor parallel, paged KV)."""
    return FRAMEWORKS.get(str(framework).strip().casefold(), Semantics())


def _arch(models: list) -> dict[str, np.ndarray]:
    """Per-row architecture figures (NaN where the model is unknown)."""
    def col(fn):
        return np.array([fn(m) if m is not None else np.nan for m in models], dtype=float)

    return {
        "params": col(lambda m: m.param_count()),
        "active": col(lambda m: m.active_param_count()),
        "embed": col(lambda m: m.vocab_size * m.hidden_size * (1 if m.tie_word_embeddings else 2)),
        "lm_head": col(lambda m: m.vocab_size * m.hidden_size),
        "experts": col(lambda m: m.num_moe_layers * m.num_experts * m.mlp_matrices
                       * m.hidden_size * m.moe_intermediate_size),
        "n_experts": col(lambda m: m.num_experts),
        "top_k": col(lambda m: m.num_experts_per_tok),
        "layers": col(lambda m: m.num_layers),
        "hidden": col(lambda m: m.hidden_size),
        "q_width": col(lambda m: m.num_heads * m.head_dim),
        "kv_per_token": col(lambda m: m.kv_bytes_per_token(DTYPE_BYTES)),
        "context": col(lambda m: m.max_position_embeddings),
        "sliding": col(lambda m: float(m.sliding_window > 0)),
    }


def _device(hardware: list) -> dict[str, np.ndarray]:
    def peak(hw):
        for dtype in ("bf16", "fp16"):
            if dtype in hw.peak_flops:
                return hw.peak_flops[dtype]
        return np.nan

    def col(fn):
        return np.array([fn(h) if h is not None else np.nan for h in hardware], dtype=float)

    return {"peak": col(peak), "bw": col(lambda h: h.memory_bw_bytes_s),
            "mem": col(lambda h: h.memory_bytes),
            "link": col(lambda h: h.interconnect_bw_bytes_s or np.inf)}


def _touched(a: dict, tokens: np.ndarray) -> np.ndarray:
    """Weight bytes one pass over ``tokens`` tokens reads: all dense weights plus the
    experts the tokens' routes are expected to hit (``1 - (1 - k/E)^tokens`` of them)."""
    hit = np.where(a["n_experts"] > 0,
                   1 - (1 - a["top_k"] / np.maximum(a["n_experts"], 1)) ** tokens, 1.0)
    return DTYPE_BYTES * (a["params"] - a["experts"] + a["experts"] * hit)


def batch_terms(table: pd.DataFrame, hardware: list, models: list) -> tuple[pd.DataFrame, pd.Series]:
    """Time terms of every row and why a row cannot be modelled.

    Parameters
    ----------
    table : pd.DataFrame
        ``offline_batch_bench`` columns (:data:`mist.traces.schema.OFFLINE_BATCH_BENCH`:
        ``num_devices``, ``framework``, ``input_tokens``, ``output_tokens``,
        ``batch_size``, ``parallelism``, ``latency_s``).
    hardware, models : list
        Per row, the :class:`mist.profiles.hardware.Hardware` and
        :class:`mist.profiles.model.ModelConfig`, or None when unknown.

    Returns
    -------
    terms : pd.DataFrame
        :data:`TERMS` columns (s, or counts), same index; NaN on skipped rows.
    skip : pd.Series of str
        ``""`` for modelled rows, else the first reason that applies.
    """
    rows = _rows(table)
    a, d = _arch(models), _device(hardware)
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
        t, bound = _time_terms(rows, a, d)
    terms = pd.DataFrame({k: t[k] for k in TERMS}, index=table.index)
    skip = pd.Series("", index=table.index, dtype=object)
    checks = [
        (np.array([h is None for h in hardware]), NO_DATASHEET),
        (~np.isfinite(d["peak"]) & np.array([h is not None for h in hardware]), NO_PEAK),
        (np.array([m is None for m in models]), NO_MODEL),
        (rows["inp"] + rows["out"] > a["context"], BEYOND_CONTEXT),
        # decode weight reads at peak bandwidth, prompt FLOPs at peak: nothing runs faster
        (table["latency_s"].to_numpy(float) < bound, BELOW_BOUND),
    ]
    for mask, reason in checks:
        skip[(skip == "") & mask] = reason
    terms[skip != ""] = np.nan
    return terms, skip


def _rows(table: pd.DataFrame) -> dict[str, np.ndarray]:
    """Per-row counts (float) and the framework's execution semantics (bool)."""
    sem = [semantics(f) for f in table["framework"]]
    return {
        "n": table["num_devices"].to_numpy(float),
        "inp": table["input_tokens"].to_numpy(float),
        "out": table["output_tokens"].to_numpy(float),
        "batch": table["batch_size"].to_numpy(float),
        "one_seq": np.array([s.one_sequence for s in sem]),
        "layer": np.array([s.layer_split for s in sem]) | table["parallelism"].str.contains("pp").to_numpy(),
        "paged": np.array([s.paged_kv for s in sem]),
    }


def _time_terms(r: dict, a: dict, d: dict) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """The :data:`TERMS` of rows ``r`` (:func:`_rows`) on architectures ``a`` and devices
    ``d``, and the datasheet bound no run can beat (s)."""
    n, inp, out, layer = r["n"], r["inp"], r["out"], r["layer"]
    seqs = np.where(r["one_seq"], 1.0, r["batch"])
    chunk = np.where(r["one_seq"], np.minimum(r["batch"], inp), seqs * inp)  # tokens per prompt pass
    tp = np.where(layer, 1.0, n)  # devices that share each layer's work
    kv = a["kv_per_token"]
    capacity = (n * (GPU_MEMORY_UTILIZATION * d["mem"] - RESERVE_BYTES) - DTYPE_BYTES * a["params"]) / kv
    running = np.where(r["paged"], np.clip(np.minimum(seqs, capacity / (inp + out)), 1, None), seqs)
    waves = seqs / running
    decode = waves * (out - 1)  # decode passes
    prompt_passes = np.ceil(seqs * inp / chunk)
    ctx_sum = (out - 1) * inp + out * (out - 1) / 2  # sum of contexts over decode steps
    flops_pf = seqs * (2 * (a["active"] - a["embed"]) * inp + 2 * a["layers"] * a["q_width"] * inp**2
                       + 2 * a["lm_head"])
    t = {
        "const_1dev": (n == 1).astype(float),
        "const_multi": (n > 1).astype(float),
        "prefill": flops_pf / (tp * d["peak"]),
        "prefill_weights": prompt_passes * _touched(a, chunk) / (tp * d["bw"]),
        "weights": decode * _touched(a, running) / (tp * d["bw"]),
        "kv": waves * running * kv * ctx_sum / (tp * d["bw"]),
        "decode_flops": (decode * 2 * a["active"] * running
                         + waves * running * 4 * a["layers"] * a["q_width"] * ctx_sum) / (tp * d["peak"]),
        "steps": decode + prompt_passes,
        "seq_steps": decode * running,
        "allreduce": np.where(tp > 1, (decode + prompt_passes) * 2 * a["layers"] * (tp - 1), 0.0),
        "allreduce_bytes": np.where(tp > 1, 2 * a["layers"] * seqs * inp * a["hidden"] * DTYPE_BYTES
                                    * 2 * (tp - 1) / tp / d["link"], 0.0),
        "hops": np.where(layer, (n - 1) * (decode + prompt_passes), 0.0),
    }
    t["kv_sliding"] = t["kv"] * a["sliding"]
    bound = np.maximum((out - 1) * _touched(a, np.ones_like(n)) / (n * d["bw"]), flops_pf / (n * d["peak"]))
    return t, bound
