"""Fuzz-campaign kinds (:mod:`fuzz_campaign`) of the request streams `mist replay --trace` and
`mist ingest` read (vidur CSV, Azure CSV, Mooncake JSONL, workload JSONL, `vllm bench serve`
result JSON) and of the operator-profile sources `mist ingest` reads (Vidur MLP and
collective CSVs, Splitwise CSV, Kineto JSON).

Each request stream is a kind twice: under `mist replay` (the shipped CPU sample's
bundle, model and engine; its ``summary.json`` is the fingerprint) and under
`mist ingest` (stdout is the fingerprint: see the notes). Clean inputs are ~200-row cuts
of ../shared/data (or the shipped samples), copied into the scratch folder by ``setup``.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from fuzz_campaign import ROOT, SHARED, Kind

SAMPLE = ROOT / "traces/samples/cpu-tiny-llama"
BUNDLE = ROOT / "profiles/samples/cpu-tiny-llama/fp32"
ROWS = 200


def _head(src: Path, dst: Path, rows: int = ROWS, header: bool = True) -> None:
    """The first ``rows`` records of a CSV (plus its header) or JSONL file."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    with src.open(encoding="utf-8") as f:
        lines = [line for _, line in zip(range(rows + header), f)]
    dst.write_text("".join(lines), encoding="utf-8")


def _copy(src: Path, name: str):
    def setup(work: Path) -> None:
        dst = work / name
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(src, dst)
    return setup


def _cut(src: Path, name: str, rows: int = ROWS, header: bool = True):
    return lambda work: _head(src, work / name, rows, header)


def _bench(work: Path) -> None:
    src = SHARED / "vllm-bench-cpu/tiny-llama-rate1.5/bench_tiny-llama_rate1.5.json"
    (work / "bench.json").write_text(json.dumps(json.loads(src.read_text()), indent=1))


def _replay(target: str):
    def argv(work: Path, out: Path) -> list[str]:
        return ["replay", "--trace", str(work / target), "--profiles", str(BUNDLE),
                "--model", str(SAMPLE / "model_config.json"), "--engine", str(SAMPLE / "meta.json"),
                "--out", str(out)]
    return argv


def _ingest(target: str):
    return lambda work, out: ["ingest", str(work / target), "--out", str(out / "tables")]


VIDUR_MLP = SHARED / "profiles/vidur/compute/a100/meta-llama/Llama-2-7b-hf/mlp.csv"
VIDUR_COMM = SHARED / "profiles/vidur/network/h100_dgx/all_reduce.csv"  # one-node rows
MLP_TARGET = "compute/a100/meta-llama/Llama-2-7b-hf/mlp.csv"
COMM_TARGET = "network/h100_dgx/all_reduce.csv"
STREAMS = {
    # name: (setup, target, fmt, fields)
    "vidur-csv": (_cut(SHARED / "arrivals/vidur/splitwise_conv.csv", "trace.csv"), "trace.csv", "csv",
                  ("arrived_at", "num_prefill_tokens", "num_decode_tokens")),
    "azure-csv": (_cut(SHARED / "arrivals/azure-2023/AzureLLMInferenceTrace_conv.csv", "trace.csv"),
                  "trace.csv", "csv", ("TIMESTAMP", "ContextTokens", "GeneratedTokens")),
    "mooncake-jsonl": (_cut(SHARED / "arrivals/mooncake/conversation_trace.jsonl", "trace.jsonl", 100,
                            header=False), "trace.jsonl", "jsonl",
                       ("timestamp", "input_length", "output_length", "hash_ids")),
    "workload-jsonl": (_copy(SAMPLE / "workload.jsonl", "workload.jsonl"), "workload.jsonl", "jsonl",
                       ("input_toks", "output_toks", "arrival_time_ns", "input_tok_ids")),
    "vllm-bench": (_bench, "bench.json", "json",
                   ("input_lens", "output_lens", "ttfts", "latencies", "start_times", "itls", "errors",
                    "queue_times", "duration")),
}  # fmt: skip
PROFILES = {
    "vidur-mlp-csv": (_cut(VIDUR_MLP, MLP_TARGET), MLP_TARGET, "csv",
                      ("num_tokens", "num_tensor_parallel_workers", "use_gated_mlp",
                       "time_stats.emb.median", "time_stats.emb.mean", "time_stats.emb.std", "time_stats.mlp_act.median",
                       "time_stats.attn_pre_proj.min", "time_stats.attn_pre_proj.max")),
    "vidur-comm-csv": (_cut(VIDUR_COMM, COMM_TARGET), COMM_TARGET, "csv",
                       ("num_workers", "devices_per_node", "size", "collective",
                        "time_stats.all_reduce.median", "time_stats.all_reduce.mean", "time_stats.all_reduce.std",
                        "time_stats.all_reduce.min", "time_stats.all_reduce.max")),
    "splitwise-csv": (_cut(SHARED / "profiles/splitwise/perf_model.csv", "perf_model.csv"), "perf_model.csv",
                      "csv", ("model", "hardware", "tensor_parallel", "prompt_size", "batch_size",
                              "token_size", "prompt_time", "token_time")),
    "kineto-json": (_copy(ROOT / "traces/samples/kineto/cpu-mlp.json", "trace.json"), "trace.json", "json",
                    ("traceEvents", "traceEvents.ph", "traceEvents.cat", "traceEvents.name",
                     "traceEvents.ts", "traceEvents.dur", "traceEvents.pid", "traceEvents.tid",
                     "traceEvents.args", "traceEvents.args.Input Dims", "traceEvents.args.Input type",
                     "deviceProperties", "hardware", "model", "engine", "engine_version")),
}  # fmt: skip
# Outcomes other than `error` that are legitimate (the damaged value is a valid input):
NOTES = {
    "streams": "duplicate: CHANGED is legitimate, the streams have no request ids, so a repeated record is "
               "two identical requests (the real Mooncake trace has one such pair, lines 7728 and 7733); "
               "reversed: rows are sorted by arrival (stable), so only the order of equal arrivals changes",
    "mooncake-jsonl": "hash_ids:negative is a valid id (hashes are compared only for equality)",
    "workload-jsonl": "input_tok_ids:missing is legitimate (the list is optional per record)",
    "vllm-bench": "null/NaN ttfts, latencies, start_times are failed requests (counted skips, as vLLM "
                  "leaves them); errors:string is a failure message (counted skip); errors, queue_times and "
                  "itls are optional (missing/null: same)",
    "vidur-mlp-csv": "duplicate: a repeated measurement stays a row (as Vidur's files hold some); "
                     "use_gated_mlp, mean, min, max and std are optional columns (missing std: spread = max - min)",
    "vidur-comm-csv": "duplicate: a repeated measurement stays a row; mean, min, max, std optional columns",
    "splitwise-csv": "duplicate: a repeat of a configuration (the median of the repeats is read); model and "
                     "hardware are free names, so 'abc', 'nan', '-1' are names",
    "kineto-json": "ph/cat damaged: the event is not an operator (counted skip); name, pid, tid, hardware, "
                   "model, engine, engine_version and Input type entries are free names or ids; model, "
                   "engine, engine_version and deviceProperties are optional",
}  # fmt: skip
INGEST_NOTE = ("`mist ingest` writes no summary.json: the fingerprint is its stdout (row counts, skips), "
               "so a changed value inside a table shows as `same` (and any changed stdout as `skip`, "
               "because every ingest summary says 'skipped')")

KINDS = [
    *(Kind(f"replay-{fmt}", setup, target, ff, fields, _replay(target), table=ff != "json",
           notes=f"(`mist replay` summary.json) {NOTES['streams']}; {NOTES.get(fmt, '')}")
      for fmt, (setup, target, ff, fields) in STREAMS.items()),
    *(Kind(f"ingest-{fmt}", setup, target, ff, fields, _ingest(target), table=ff != "json",
           notes=f"{INGEST_NOTE}; {NOTES['streams'] + '; ' if fmt in STREAMS else ''}{NOTES.get(fmt, '')}")
      for fmt, (setup, target, ff, fields) in {**STREAMS, **PROFILES}.items()),
]
