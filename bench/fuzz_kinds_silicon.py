"""Fuzz-campaign kinds (:mod:`fuzz_campaign`) of the silicon group: `mist silicon`'s inputs
(the silicon CSV, each kernel-database table, the system datasheet beside it, the model
config, a ``--hardware`` catalog, the step-overhead, fused-MoE efficiency and fused-MoE
measurement YAMLs), `mist calibrate-accelerator`'s (an LLM-Inference-Bench CSV and a
``--hardware`` catalog) and `mist ingest`'s of the same sources.

Parquet kinds damage the kernel tables' numeric columns and their names (dtype, op_name,
backend): the harness writes a wrong-typed value into a typed Parquet column only once
``_field_damage`` falls back to a text column where Arrow refuses the mixed one.

Every kind runs on a small cut of ../shared/data copied into the scratch folder: three
Qwen3-32B rows of h100_sxm/vLLM (plus one Qwen3-30B-A3B row where the fused-MoE rate is
read), the h100_sxm kernel database (both vLLM versions: the rows, of vLLM 0.12.0, read
the 0.14.0 tables, which are the ones damaged — a damaged table must be an error, never
a fall-back to the 0.19.0 one), and 240 Llama-2-7B rows of four accelerator/framework
groups of LLM-Inference-Bench.
"""

from __future__ import annotations

import csv
import io
import shutil
from pathlib import Path

import yaml
from fuzz_campaign import ROOT, SHARED, Kind

SILICON = SHARED / "silicon/aiconfigurator_silicon_sample.csv"
KERNELS = SHARED / "profiles/aiconfigurator"
MODELS = SHARED / "models"
BENCH = SHARED / "benchmarks/llm-inference-bench/All_results.csv"
MOE_MODEL = "Qwen/Qwen3-30B-A3B"


def _cut_silicon(path: Path, moe: bool = False) -> None:
    rows = list(csv.reader(io.StringIO(SILICON.read_text())))
    header, body = rows[0], rows[1:]
    col = {name: i for i, name in enumerate(header)}
    keep = [r for r in body if r[col["system"]] == "h100_sxm" and r[col["backend"]] == "vllm"
            and r[col["model_path"]] == "Qwen/Qwen3-32B" and r[col["mode"]] == "agg"
            and r[col["isl"]] == "1024" and r[col["osl"]] == "128" and r[col["batch_size"]] == "8"][:3]
    if moe:  # one MoE deployment, the experts sharded over the TP ranks: the fused-MoE rate is read
        row = list(keep[0])
        row[col["model_path"]], row[col["moe_tp_size"]], row[col["moe_ep_size"]] = MOE_MODEL, row[col["tp_size"]], "1"
        row[col["id"]] += "_moe"
        keep.append(row)
    buf = io.StringIO()
    csv.writer(buf, lineterminator="\n").writerows([header, *keep])
    path.write_text(buf.getvalue())


def _kernels(work: Path, system_yaml: bool = True) -> None:
    """The h100_sxm database, its tables cut to the bf16 GEMMs and KV caches (the rows are
    bf16) so that a run takes seconds."""
    import pandas as pd

    shutil.copytree(KERNELS / "h100_sxm", work / "kernels/h100_sxm")
    for path in (work / "kernels/h100_sxm").glob("*/*/*/*.parquet"):
        df = pd.read_parquet(path)
        for col in ("gemm_dtype", "kv_cache_dtype"):
            if col in df.columns:
                df = df[df[col] == "bfloat16"]
        if "num_heads" in df.columns:
            df = df[df["num_heads"].isin((8, 16, 32)) & (df["batch_size"] <= 64)]
        df.to_parquet(path, index=False)
    if system_yaml:
        shutil.copy(KERNELS / "h100_sxm.yaml", work / "kernels/h100_sxm.yaml")


def _models(work: Path) -> None:
    (work / "models").mkdir()
    for name in ("Qwen--Qwen3-32B_config.json", "Qwen--Qwen3-30B-A3B_config.json"):
        shutil.copy(MODELS / name, work / "models" / name)


def _hardware_yaml(path: Path, key: str = "H100_SXM") -> None:
    catalog = yaml.safe_load((ROOT / "profiles/hardware.yaml").read_text())
    path.write_text(yaml.safe_dump({"devices": {key: catalog["devices"][key]}}, sort_keys=False))


def _silicon_setup(work: Path, moe: bool = False, system_yaml: bool = True) -> None:
    _cut_silicon(work / "silicon.csv", moe)
    _kernels(work, system_yaml)
    _models(work)
    shutil.copy(ROOT / "profiles/silicon_step_overhead.yaml", work / "overhead.yaml")
    shutil.copy(ROOT / "profiles/fused_moe_efficiency.yaml", work / "moe_efficiency.yaml")
    shutil.copy(ROOT / "profiles/fused_moe_measurements.yaml", work / "moe_measurements.yaml")
    _hardware_yaml(work / "hardware.yaml")


def _silicon(*extra: str):
    def argv(work: Path, out: Path) -> list[str]:
        # inputs relative to ``work`` (the command's folder), so that the summary, which
        # names them, is the same for the clean and the damaged copy
        args = ["silicon", "--silicon", "silicon.csv", "--kernels", "kernels/h100_sxm", "--models", "models",
                "--system", "h100_sxm", "--requests-per-user", "2", "--step-overhead", "overhead.yaml",
                "--json", str(out / "summary.json")]
        return args + [a.replace("{out}", str(out)) for a in extra]
    return argv


def _cut_bench(path: Path) -> None:
    rows = list(csv.reader(io.StringIO(BENCH.read_text())))
    groups = {("Nvidia A100 GPU", "vLLM"), ("Nvidia A100 GPU", "TensorRT-LLM"), ("AMD MI250 GPU", "vLLM"),
              ("Nvidia H100 GPU", "vLLM")}
    keep = [r for r in rows[1:] if r[3] == "meta-llama/Llama-2-7b-hf" and (r[0], r[2]) in groups]
    buf = io.StringIO()
    csv.writer(buf, lineterminator="\n").writerows([rows[0], *keep])
    path.write_text(buf.getvalue())


def _bench_setup(work: Path) -> None:
    _cut_bench(work / "bench.csv")
    _hardware_yaml(work / "hardware.yaml")


def _calibrate(work: Path, out: Path) -> list[str]:
    return ["calibrate-accelerator", "--bench", "bench.csv", "--target", "Nvidia H100 GPU",
            "--points", "6", "--seed", "0", "--hardware", "hardware.yaml",
            "--json", str(out / "summary.json")]


def _ingest(target: str, fmt: str | None = None):
    def argv(work: Path, out: Path) -> list[str]:
        # --out inside the command's folder: the printed "wrote ..." lines are then the
        # same for the clean and the damaged copy
        return ["ingest", target, "--out", "tables", *(["--format", fmt] if fmt else [])]
    return argv


V = "0.14.0"  # the tables the rows (vLLM 0.12.0) read
ATTENTION = ("batch_size", "num_heads", "num_key_value_heads", "head_dim", "kv_cache_dtype", "window_size",
             "latency")
GPU = ("gpu.mem_bw", "gpu.mem_bw_empirical_scaling_factor", "gpu.mem_empirical_constant_latency",
       "gpu.mem_capacity", "gpu.bfloat16_tc_flops", "gpu.fp8_tc_flops", "gpu.int8_tc_flops", "gpu.sm_version",
       "node.intra_node_bw", "node.p2p_latency")
DEVICE = tuple(f"devices.H100_SXM.{f}" for f in (
    "peak_tflops.bf16", "peak_tflops.fp8", "peak_tflops.fp16", "memory_gib", "memory_bw_gbps",
    "interconnect.bw_gbps_per_direction", "aliases", "tdp_w", "price_per_hour_usd"))
SILICON_FIELDS = ("system", "backend", "backend_version", "model_path", "precision", "mode", "isl", "osl",
                  "gemm_quant_mode", "batch_size", "tp_size", "pp_size", "attention_dp_size", "moe_tp_size",
                  "moe_ep_size", "silicon_ttft_ms", "silicon_tpot_ms")
MODEL_FIELDS = ("hidden_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads", "head_dim",
                "intermediate_size", "vocab_size", "max_position_embeddings", "torch_dtype",
                "tie_word_embeddings", "architectures", "model_type")
MOE_FIELDS = ("num_experts", "num_experts_per_tok", "moe_intermediate_size", "hidden_size", "num_hidden_layers",
              "decoder_sparse_step", "mlp_only_layers")
BENCH_FIELDS = ("Hardware", "Num of Hardware", "Framework", "Model", "Input Output Length", "Batch Size",
                "Latency", "Throughput")

KINDS = [
    Kind("silicon-csv", _silicon_setup, "silicon.csv", "csv", SILICON_FIELDS, _silicon(),
         notes="(a system/backend other than h100_sxm/vllm selects the row out: another deployment's "
               "row, valid; model_path, precision, mode the composition lacks: a counted skip; "
               "'skip' also matches the summary's 'skipped: none')"),
    Kind("silicon-gemm", _silicon_setup, f"kernels/h100_sxm/gemm/vllm/{V}/gemm_perf.parquet", "parquet",
         ("gemm_dtype", "m", "n", "k", "latency"), _silicon()),
    Kind("silicon-context-attn", _silicon_setup,
         f"kernels/h100_sxm/attention/vllm/{V}/context_attention_perf.parquet", "parquet",
         ("isl", *ATTENTION), _silicon()),
    Kind("silicon-generation-attn", _silicon_setup,
         f"kernels/h100_sxm/attention/vllm/{V}/generation_attention_perf.parquet", "parquet",
         ("step", *ATTENTION), _silicon()),
    Kind("silicon-nccl", _silicon_setup, "kernels/h100_sxm/comm/nccl/2.27.3/nccl_perf.parquet", "parquet",
         ("op_name", "nccl_dtype", "num_gpus", "message_size", "latency"), _silicon()),
    Kind("silicon-custom-allreduce", _silicon_setup,
         f"kernels/h100_sxm/comm/vllm/{V}/custom_allreduce_perf.parquet", "parquet",
         ("allreduce_dtype", "num_gpus", "message_size", "backend", "latency"), _silicon()),
    Kind("silicon-system-yaml", _silicon_setup, "kernels/h100_sxm.yaml", "yaml", GPU, _silicon(), table=False,
         notes="(an optional figure missing or null takes aiconfigurator's default: same)"),
    Kind("silicon-model-config", _silicon_setup, "models/Qwen--Qwen3-32B_config.json", "json", MODEL_FIELDS,
         _silicon(), table=False),
    Kind("silicon-moe-config", lambda w: _silicon_setup(w, moe=True), "models/Qwen--Qwen3-30B-A3B_config.json",
         "json", MOE_FIELDS, _silicon(), table=False),
    Kind("silicon-hardware-yaml", lambda w: _silicon_setup(w, system_yaml=False), "hardware.yaml", "yaml",
         DEVICE, _silicon("--hardware", "hardware.yaml"), table=False),
    Kind("silicon-step-overhead", _silicon_setup, "overhead.yaml", "yaml",
         ("per_step_ms", "per_sequence_us", "fitted_on.model", "fitted_on"), _silicon(), table=False,
         notes="(fitted_on is provenance, echoed into the summary as given: a change there is no "
               "wrong prediction)"),
    Kind("silicon-moe-efficiency", lambda w: _silicon_setup(w, moe=True), "moe_efficiency.yaml", "yaml",
         ("system", "sm_version", "efficiency.bfloat16", "efficiency.fp8", "efficiency", "tokens_per_expert_half"),
         _silicon("--moe-efficiency", "moe_efficiency.yaml"), table=False),
    Kind("silicon-moe-measurements", lambda w: _silicon_setup(w, moe=True), "moe_measurements.yaml", "yaml",
         ("system", "series", "series.dtype", "series.tp", "series.hidden_size", "series.moe_intermediate_size",
          "series.num_experts", "series.top_k", "series.tokens", "series.time_us"),
         _silicon("--moe-measurements", "moe_measurements.yaml", "--fit-moe-efficiency",
                  "{out}/moe_fit.yaml"), table=False),
    Kind("calibrate-bench-csv", _bench_setup, "bench.csv", "csv", BENCH_FIELDS, _calibrate,
         notes="(the K rows are drawn, seeded, over the rows in file order: reversed or duplicated rows "
               "are another draw; a new Hardware/Framework/Model name is a valid other group, rows "
               "without a datasheet counted in training.skipped_rows)"),
    Kind("calibrate-hardware-yaml", _bench_setup, "hardware.yaml", "yaml", DEVICE, _calibrate, table=False),
    Kind("ingest-kernel-db", lambda w: _kernels(w), "kernels/h100_sxm/gemm/vllm/0.19.0/gemm_perf.parquet",
         "parquet", ("gemm_dtype", "m", "n", "k", "latency"), _ingest("kernels/h100_sxm", "aiconfigurator-dir"),
         notes="(stdout only: table values are fuzzed through mist silicon)"),
]
