"""The shared real runs the benchmarks and the fidelity gate replay (paths only)."""

from __future__ import annotations

from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data"

# name -> (run dir, bundle root, model config, workload)
RUNS = {
    "RTXPRO6000/Llama-3.1-8B": (
        "vllm-runs/RTXPRO6000/Llama-3.1-8B",
        "profiles/llmservingsim/RTXPRO6000/meta-llama/Llama-3.1-8B/bf16",
        "models/llmservingsim/meta-llama/Llama-3.1-8B.json",
        "workloads/sharegpt-llama-3.1-8b-300-sps10.jsonl",
    ),
    "RTXPRO6000/Qwen3-32B": (
        "vllm-runs/RTXPRO6000/Qwen3-32B",
        "profiles/llmservingsim/RTXPRO6000/Qwen/Qwen3-32B/bf16",
        "models/llmservingsim/Qwen/Qwen3-32B.json",
        "workloads/sharegpt-qwen3-32b-300-sps10.jsonl",
    ),
}


def validate_args(name: str, shared: Path = SHARED) -> list[str]:
    """``mist validate`` arguments for run ``name`` (without --out/--json)."""
    run, bundle, model, workload = (shared / p for p in RUNS[name])
    return ["validate", "--run", str(run), "--profiles", str(bundle), "--model", str(model),
            "--workload", str(workload)]
