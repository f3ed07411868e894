"""Shared fixtures: where the real measured data lives, skipping when it is absent.

Every path into ``../shared/data`` that a test uses is named once here, on the
:class:`SharedData` that the ``shared`` fixture returns (``shared.llama_run``,
``shared.silicon_csv`` …); a test never retypes one.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"


@dataclass(frozen=True)
class SharedData:
    """Named paths of ``../shared/data`` (see its README for what each file is)."""

    root: Path

    def __truediv__(self, rel: str) -> Path:  # for a file no name below covers
        return self.root / rel

    # the two real vLLM GPU runs (RTX PRO 6000) and what replays them
    @property
    def runs(self) -> Path:
        return self.root / "vllm-runs" / "RTXPRO6000"

    @property
    def llama_run(self) -> Path:
        return self.runs / "Llama-3.1-8B"

    @property
    def qwen_run(self) -> Path:
        return self.runs / "Qwen3-32B"

    @property
    def gpu_bundles(self) -> Path:
        return self.root / "profiles" / "llmservingsim" / "RTXPRO6000"

    @property
    def llama_bundle(self) -> Path:
        return self.gpu_bundles / "meta-llama" / "Llama-3.1-8B" / "bf16"

    @property
    def qwen_bundle(self) -> Path:
        return self.gpu_bundles / "Qwen" / "Qwen3-32B" / "bf16"

    @property
    def llama_config(self) -> Path:
        return self.root / "models" / "llmservingsim" / "meta-llama" / "Llama-3.1-8B.json"

    @property
    def qwen_config(self) -> Path:
        return self.root / "models" / "llmservingsim" / "Qwen" / "Qwen3-32B.json"

    @property
    def llama_workload(self) -> Path:
        return self.root / "workloads" / "sharegpt-llama-3.1-8b-300-sps10.jsonl"

    @property
    def qwen_workload(self) -> Path:
        return self.root / "workloads" / "sharegpt-qwen3-32b-300-sps10.jsonl"

    # kernel databases, measured deployments, offline batches
    @property
    def models(self) -> Path:
        return self.root / "models"

    @property
    def silicon_csv(self) -> Path:
        return self.root / "silicon" / "aiconfigurator_silicon_sample.csv"

    @property
    def aiconfigurator(self) -> Path:
        return self.root / "profiles" / "aiconfigurator"

    @property
    def h100_kernels(self) -> Path:
        return self.aiconfigurator / "h100_sxm"

    @property
    def llm_bench_csv(self) -> Path:
        return self.root / "benchmarks" / "llm-inference-bench" / "All_results.csv"

    # request streams and CPU vLLM bench runs
    @property
    def azure_conv_csv(self) -> Path:
        return self.root / "arrivals" / "vidur" / "splitwise_conv.csv"

    @property
    def vllm_bench_cpu(self) -> Path:
        return self.root / "vllm-bench-cpu"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """``../shared/data`` beside the checkout; skip when a fresh clone has no such folder."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real measured data not found at {SHARED_DATA} (clone the project beside ../shared)")
    return SHARED_DATA


@pytest.fixture(scope="session")
def shared(shared_data: Path) -> SharedData:
    """The named paths of ``../shared/data``; skips like ``shared_data`` when it is absent."""
    return SharedData(shared_data)
