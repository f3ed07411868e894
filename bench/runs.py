"""The shared real runs the benchmarks and the fidelity gate replay: their paths, the
settings of `mist validate`'s library job for each, and what a benchmark that drives the
replay library directly needs to replay one."""

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


def validate_settings(name: str, shared: Path = SHARED, **changes):
    """:class:`mist.validate.run.ValidateSettings` of run ``name`` as ``mist validate``
    without ``--out`` replays it, with ``changes`` (settings fields) on top."""
    from mist.validate.run import ValidateSettings

    run, bundle, model, workload = (shared / p for p in RUNS[name])
    return ValidateSettings(run_dir=run, profiles=bundle, model=model, workload=workload, timeseries=False,
                            **changes)


def replay_inputs(name: str, shared: Path = SHARED):
    """``(requests, cfg, cost)`` of run ``name``, built as ``mist validate`` builds them
    (its workload attached, engine settings from its ``meta.json``), for
    :func:`mist.replay.run.simulate`."""
    from mist.replay.run import load_deployment, prepare
    from mist.traces.readers.vllm_run import attach_workload, read_vllm_run

    run, bundle, model, workload = (shared / p for p in RUNS[name])
    measured = read_vllm_run(run)
    requests = attach_workload(measured.requests, workload)
    cfg, cost, _ = prepare(measured.meta, *load_deployment(bundle, model))
    return requests, cfg, cost
