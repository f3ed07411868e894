"""Settings of the two measurement jobs: ``mist profile`` and ``mist record``.

Plain frozen dataclasses, importable without torch or vLLM; every other module of
:mod:`mist.profiles.measure` imports its settings from here (never from a sibling job).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path


@dataclass(frozen=True)
class ProfileSettings:
    """What to profile and how hard (:func:`mist.profiles.measure.profiler.profile_machine`).

    Attributes
    ----------
    model_config : str
        Path of the Hugging Face ``config.json`` (Llama-style decoder).
    max_num_batched_tokens, max_num_seqs : int
        Engine limits; the dense grid runs to the first, the per-sequence grid to
        the second.
    max_kv : int
        Largest KV length (tokens) of the attention grid; also the engine's
        ``max_model_len``.
    repeats : int
        Timed samples per grid point (more for ops shorter than ``min_time_s``).
    threads_bind : str
        CPUs the measurement runs on (``VLLM_CPU_OMP_THREADS_BIND`` syntax,
        e.g. ``"0"`` or ``"0-1"``); one compute thread per CPU listed.
    quick : bool
        Coarser grids and fewer engine scenarios (a smoke test, about 30 s).
    temperature : float
        Sampling temperature of the sampler and the engine's requests; 0 (greedy)
        like ``mist record``, 1.0 for runs served with vLLM's server default.
    enable_prefix_caching : bool
        Prefix caching in the engine (off, like ``mist record``'s default).
    block_size : int
        KV-cache block size (tokens); vLLM's CPU default is 128.
    min_time_s : float
        Ops faster than this (s) get extra samples, up to four times ``repeats``
        (twice when flushing caches).
    flush_mb : int
        Buffer (MiB) read before every sample to evict the op's data from the
        caches, as the rest of the forward pass does; GEMMs instead rotate over
        ``2 * flush_mb`` of weight copies. 0 times warm caches.
    name : str
        Model name for ``meta.yaml`` (default: from the config).
    serving_steps : bool
        Also log the engine steps of a synthetic stream served like ``mist record``
        (``tp1/serving_steps.csv``, a diagnostic the replay does not use).

    Every field is stored in the bundle's ``meta.yaml`` under ``settings``.
    """

    model_config: str
    max_num_batched_tokens: int = 512
    max_num_seqs: int = 64
    max_kv: int = 2048
    repeats: int = 5
    threads_bind: str = "0"
    quick: bool = False
    temperature: float = 0.0
    enable_prefix_caching: bool = False
    block_size: int = 128
    min_time_s: float = 2e-3
    flush_mb: int = 64
    name: str = ""
    serving_steps: bool = False

    def __post_init__(self):
        if self.flush_mb < 0:
            raise ValueError(f"flush_mb must be >= 0, got {self.flush_mb}")
        for name in ("max_num_batched_tokens", "max_num_seqs", "max_kv", "repeats", "block_size"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.max_kv < 32:
            raise ValueError(f"max_kv must be at least 32 tokens, got {self.max_kv}")
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")


@dataclass(frozen=True)
class VllmSettings:
    """Settings of the real vLLM engine a recording drives.

    Attributes
    ----------
    max_num_seqs : int
        Most sequences in one engine step.
    max_num_batched_tokens : int
        Token budget of one engine step.
    enable_prefix_caching : bool
        Passed to vLLM explicitly (vLLM's own default would be on).
    seed : int
        Seed of the model weights, the engine and the warm-up prompts (and of a
        generated stream, unless its spec names another).
    kv_cache_space_gib : int
        CPU KV cache size, GiB (``VLLM_CPU_KVCACHE_SPACE``).
    threads_bind : str
        ``VLLM_CPU_OMP_THREADS_BIND`` (e.g. ``"0"``: one compute thread on core 0).
    warmup : int
        Warm-up requests before the stream (not recorded).
    enforce_eager : bool
        No torch.compile / graphs (CPU graphs do not help a model this small).
    """

    max_num_seqs: int = 64
    max_num_batched_tokens: int = 512
    enable_prefix_caching: bool = False
    seed: int = 0
    kv_cache_space_gib: int = 2
    threads_bind: str = "0"
    warmup: int = 4
    enforce_eager: bool = True


@dataclass(frozen=True)
class RecordSettings:
    """One recording (:func:`mist.profiles.measure.recording.record_run`).

    Attributes
    ----------
    model_config : Path
        Hugging Face ``config.json`` of the model (random weights, seeded).
    out : Path
        Run directory to create (written all at once, or not at all).
    workload : Path, optional
        Request stream to replay (workload JSONL with ``input_tok_ids``).
    generate : str, optional
        Instead of ``workload``: a generated stream, as a
        :func:`mist.traces.workload_gen.parse_spec` spec
        (``"poisson:n=60,rate=1.5,in=256,out=64"``); written to ``out/workload.jsonl``.
    force : bool
        Replace a non-empty ``out``.
    engine : VllmSettings
        The engine's settings.
    """

    model_config: Path
    out: Path
    workload: Path | None = None
    generate: str | None = None
    force: bool = False
    engine: VllmSettings = field(default_factory=VllmSettings)

    def __post_init__(self):
        if (self.workload is None) == (self.generate is None):
            raise ValueError("give exactly one of workload and generate")
