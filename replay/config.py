"""Engine settings of a replay (frozen; built from a run's ``meta.json``)."""

from __future__ import annotations

from dataclasses import dataclass, fields
from numbers import Integral

from mist.profiles.limits import MAX_KV_BLOCKS, MAX_RANKS, MAX_SEQS, MAX_STEP_TOKENS
from mist.traces.errors import ReplayError

# vLLM's defaults where a run's settings do not say (v1 engine on a GPU; the OpenAI
# server on a device under 70 GiB): each defined here once, for the engine settings of
# a replay (:class:`EngineConfig`), the engine settings read from a run
# (:func:`mist.replay.deployment.engine_config`) and the KV capacity sized from memory.
#: KV-cache block size (tokens)
BLOCK_SIZE = 16
#: share of device memory vLLM may use for weights, activations and KV cache
GPU_MEMORY_UTILIZATION = 0.9
#: most requests running at once
MAX_NUM_SEQS = 256
#: token budget of one step
MAX_NUM_BATCHED_TOKENS = 2048
#: how requests are spread over data-parallel replicas (``mist.replay.engine.ROUTERS``)
ROUTER = "least_loaded"
#: how a recorded run's requests are fed to the replay: the real engine's stamp, the
#: stamp aligned to the nearest replayed step boundary (vLLM takes it between steps), or
#: the client's send time (:func:`mist.replay.run.simulate`)
ARRIVALS = ("engine", "engine-aligned", "client")
#: the rule :func:`mist.replay.run.simulate` applies unless told otherwise
ARRIVAL = "engine"
#: (least, most) of the sizes a replay allocates for (:mod:`mist.profiles.limits`),
#: checked however an :class:`EngineConfig` is built; 0 KV blocks is left to the
#: replay's own "no room for a KV cache" message
SIZES = {"max_num_seqs": (1, MAX_SEQS), "max_num_batched_tokens": (1, MAX_STEP_TOKENS),
         "block_size": (1, 2**16), "num_gpu_blocks": (0, MAX_KV_BLOCKS),
         "tensor_parallel": (1, MAX_RANKS), "data_parallel": (1, MAX_RANKS)}


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

    max_num_seqs: int = MAX_NUM_SEQS
    max_num_batched_tokens: int = MAX_NUM_BATCHED_TOKENS
    block_size: int = BLOCK_SIZE
    num_gpu_blocks: int = 1 << 20
    tensor_parallel: int = 1
    data_parallel: int = 1
    expert_parallel: bool = False
    router: str = ROUTER
    enable_prefix_caching: bool = True
    enable_chunked_prefill: bool = True
    async_scheduling: bool = True
    reserve_full_prompt: bool = False
    step_overhead_s: float = 0.0

    def __post_init__(self):
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name in SIZES and (isinstance(value, bool) or not isinstance(value, Integral)
                                    or not SIZES[f.name][0] <= value <= SIZES[f.name][1]):
                raise ReplayError(f"engine setting {f.name} must be an integer in {SIZES[f.name][0]} .. "
                                  f"{SIZES[f.name][1]}, got {value!r}")
