"""Fuzz-campaign kinds (:mod:`fuzz_campaign`) of `mist validate`'s, `mist noise`'s,
`mist replay --engine`'s and `mist calibrate`'s inputs: a run folder (requests, meta,
timeseries, tokens), the workload, the model config and the profile bundle (meta.yaml
and each of its CSVs), on the shipped CPU sample (200 requests, a 4-layer model)."""

from __future__ import annotations

import shutil
from pathlib import Path

from fuzz_campaign import ROOT, Kind

SAMPLE = ROOT / "traces/samples/cpu-tiny-llama"
BUNDLE = ROOT / "profiles/samples/cpu-tiny-llama/fp32"


def _sample(work: Path) -> None:
    shutil.copytree(SAMPLE, work / "run")
    shutil.copytree(BUNDLE, work / "bundle")


def _two_runs(work: Path) -> None:
    _sample(work)
    shutil.copytree(SAMPLE, work / "run-b")


def _validate(work: Path, out: Path) -> list[str]:
    return ["validate", "--run", str(work / "run"), "--profiles", str(work / "bundle"),
            "--model", str(work / "run/model_config.json"), "--out", str(out / "report"),
            "--json", str(out / "summary.json")]


def _validate_workload(work: Path, out: Path) -> list[str]:
    return [*_validate(work, out), "--workload", str(work / "run/workload.jsonl")]


def _noise(work: Path, out: Path) -> list[str]:
    return ["noise", "--a", str(work / "run"), "--b", str(work / "run-b"), "--json", str(out / "summary.json")]


def _replay(work: Path, out: Path) -> list[str]:
    return ["replay", "--trace", str(work / "run/requests.jsonl"), "--profiles", str(work / "bundle"),
            "--model", str(work / "run/model_config.json"), "--engine", str(work / "run/meta.json"),
            "--out", str(out)]


def _calibrate(work: Path, out: Path) -> list[str]:
    return ["calibrate", "--profiles", str(work / "bundle"), "--out", str(out / "calib")]


REQUEST_FIELDS = ("request_id", "input_toks", "output_toks", "arrival_time", "queued_ts", "scheduled_ts",
                  "first_token_ts", "last_token_ts")
# every key of the sample's meta.json that a reader or the engine settings use
META_FIELDS = (
    *(f"engine_effective.{k}" for k in ("async_scheduling", "block_size", "enable_prefix_caching",
                                         "max_num_batched_tokens", "max_num_seqs", "num_gpu_blocks")),
    *(f"engine_kwargs.{k}" for k in ("data_parallel_size", "dtype", "tensor_parallel_size")),
    "engine_effective", "hardware", "hardware.kv_cache_space_gib", "speed_probe.score_s",
    "speed_probe_end.score_s", "monotonic_to_epoch_s", "started_at", "model", "vllm_version",
)
# what `mist replay --engine` reads of a meta.json: the engine settings alone
ENGINE_FIELDS = (
    *(f"engine_effective.{k}" for k in ("block_size", "enable_chunked_prefill", "max_model_len",
                                         "max_num_batched_tokens", "max_num_seqs", "num_gpu_blocks")),
    *(f"engine_kwargs.{k}" for k in ("data_parallel_size", "tensor_parallel_size")),
    "engine_kwargs", "hardware.kv_cache_space_gib", "vllm_version",
)
TIMESERIES_FIELDS = ("t", "prompt_throughput", "gen_throughput", "running", "waiting", "kv_cache_pct")
WORKLOAD_FIELDS = ("input_toks", "output_toks", "arrival_time_ns", "input_tok_ids")
MODEL_FIELDS = ("architectures", "attention_bias", "head_dim", "hidden_size", "intermediate_size",
                "max_position_embeddings", "model_type", "num_attention_heads", "num_hidden_layers",
                "num_key_value_heads", "tie_word_embeddings", "torch_dtype", "vocab_size")
# the keys of meta.yaml a reader uses (hardware, model and engine identity, the speed probe,
# the engine settings the profile was measured under)
BUNDLE_META_FIELDS = ("hardware", "model", "variant", "vllm_version", "speed_probe.score_s",
                      "speed_probe_end.score_s", "engine_effective", "engine_effective.block_size")
BUNDLE_CSVS = {
    "attention": ("prefill_chunk", "kv_prefill", "n_decode", "kv_decode", "time_us", "spread_us", "samples"),
    "dense": ("layer", "tokens", "time_us", "spread_us", "samples"),
    "engine-steps": ("step", "sequences", "tokens", "n_decode", "kv_decode_sum", "kv_decode_max",
                     "kv_decode_min", "prefills", "time_us"),
    "per-sequence": ("layer", "sequences", "time_us", "spread_us", "samples"),
    "step-overhead": ("sequences", "tokens", "time_us", "spread_us", "samples", "step_us", "model_us"),
}

KINDS = [
    Kind("run-requests", _sample, "run/requests.jsonl", "jsonl", REQUEST_FIELDS, _validate,
         notes="(request_id 'abc'/-1/2^64 is a new valid id: same)"),
    Kind("run-meta", _sample, "run/meta.json", "json", META_FIELDS, _validate, table=False,
         notes="(legitimate CHANGED: engine_effective.async_scheduling missing/null is vLLM's default for the "
               "run's version, as vLLM itself decides; model missing/null leaves the model column empty; "
               "'same': monotonic_to_epoch_s and, with num_gpu_blocks given, hardware/dtype are not read)"),
    Kind("run-timeseries", _sample, "run/timeseries.csv", "csv", TIMESERIES_FIELDS, _validate,
         notes="('same': the throughput columns are not read; the report's plot and KV note, which read "
               "the others, are not in the summary, so a damage they accept would show 'same' too)"),
    Kind("run-tokens", _sample, "run/tokens.jsonl", "jsonl", ("request_id", "token_times"), _validate,
         notes="(mist validate does not read tokens.jsonl: every damage should be 'same')"),
    Kind("workload", _sample, "run/workload.jsonl", "jsonl", WORKLOAD_FIELDS, _validate_workload),
    Kind("model-config", _sample, "run/model_config.json", "json", MODEL_FIELDS, _validate, table=False),
    Kind("bundle-meta", _sample, "bundle/meta.yaml", "yaml", BUNDLE_META_FIELDS, _validate, table=False,
         notes="(legitimate CHANGED: speed_probe missing (the whole object) means no drift correction, "
               "as for a bundle profiled without one; summary drift_ratio null)"),
    *(Kind(f"bundle-{name}", _sample, f"bundle/tp1/{name.replace('-', '_')}.csv", "csv", fields, _validate,
           notes="('same': spread_us and samples are not read by the fit; a duplicated row is an agreeing "
                 "repeat; a layer name the simulator does not model ('abc') is not fitted)")
      for name, fields in BUNDLE_CSVS.items()),
    Kind("noise-b-requests", _two_runs, "run-b/requests.jsonl", "jsonl", REQUEST_FIELDS, _noise),
    Kind("noise-b-meta", _two_runs, "run-b/meta.json", "json",
         ("speed_probe", "speed_probe.score_s", "speed_probe_end.score_s", "monotonic_to_epoch_s", "model"),
         _noise, table=False),
    Kind("replay-engine", _sample, "run/meta.json", "json", ENGINE_FIELDS, _replay, table=False),
    Kind("calibrate-meta", _sample, "bundle/meta.yaml", "yaml", BUNDLE_META_FIELDS, _calibrate, table=False),
    Kind("calibrate-attention", _sample, "bundle/tp1/attention.csv", "csv", BUNDLE_CSVS["attention"],
         _calibrate),
]
