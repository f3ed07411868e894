"""Engine settings of a replay (frozen; built from a run's ``meta.json``)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class EngineConfig:
    """What the simulated vLLM instance is configured with.

    Attributes
    ----------
    max_num_seqs : int
        Most requests running at once.
    max_num_batched_tokens : int
        Token budget of one step (prefill chunks plus decodes).
    block_size : int
        KV-cache block size in tokens (vLLM: 16 on GPUs, 128 on CPUs).
    num_gpu_blocks : int
        KV-cache capacity in blocks (per replica).
    tensor_parallel : int
    data_parallel : int
        Number of independent replicas requests are routed across.
    expert_parallel : bool
        MoE experts spread over all TP x DP ranks (vLLM ``enable_expert_parallel``);
        the DP ranks then step in lockstep.
    router : str
        How requests are spread over data-parallel replicas (``mist.replay.engine.ROUTERS``).
    enable_prefix_caching : bool
    enable_chunked_prefill : bool
        When off, a waiting prompt that does not fit the step's remaining token
        budget waits for a later step (it is never split).
    async_scheduling : bool
        vLLM's overlap of scheduling step k+1 with executing step k: a request that
        arrives while step k runs is admitted no earlier than step k+2, and a request
        that finishes in step k still occupies its slot in step k+1.
    reserve_full_prompt : bool
        Admit a waiting request only when KV blocks for its whole prompt are free.
    step_overhead_s : float
        Host time added to every step (s), beyond the profiled operators.
    """

    max_num_seqs: int = 256
    max_num_batched_tokens: int = 2048
    block_size: int = 16
    num_gpu_blocks: int = 1 << 20
    tensor_parallel: int = 1
    data_parallel: int = 1
    expert_parallel: bool = False
    router: str = "least_loaded"
    enable_prefix_caching: bool = True
    enable_chunked_prefill: bool = True
    async_scheduling: bool = True
    reserve_full_prompt: bool = False
    step_overhead_s: float = 0.0
