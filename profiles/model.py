"""Model architecture read from a Hugging Face ``config.json``.

Configs name the same quantity differently across families; :data:`FIELD_ALIASES`
maps each canonical field to the raw keys tried, first match wins.  Multimodal
configs (Kimi-K2.5, Llava-style) keep the language model under ``text_config``;
the text part is what serving cost depends on, so it is read from there.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from mist.profiles.limits import MODEL_FIELD_MAX, Rule, check_model_raw, checked
from mist.traces.errors import TraceError
from mist.traces.io import read_json_object

#: canonical field -> raw config keys, first present wins.
FIELD_ALIASES: dict[str, tuple[str, ...]] = {
    "num_layers": ("num_hidden_layers", "n_layer", "num_layers"),
    "hidden_size": ("hidden_size", "n_embd", "d_model"),
    "num_heads": ("num_attention_heads", "n_head"),
    "num_kv_heads": ("num_key_value_heads", "num_kv_heads", "multi_query_group_num"),
    "intermediate_size": ("intermediate_size", "ffn_hidden_size", "n_inner"),
    "vocab_size": ("vocab_size", "padded_vocab_size"),
    # Qwen-MoE: num_experts; Mixtral/gpt-oss/MiniMax: num_local_experts;
    # DeepSeek/Kimi: n_routed_experts.
    "num_experts": ("num_experts", "num_local_experts", "n_routed_experts", "moe_num_experts"),
    "num_experts_per_tok": ("num_experts_per_tok", "experts_per_token", "moe_topk"),
    "moe_intermediate_size": ("moe_intermediate_size",),
    "max_position_embeddings": ("max_position_embeddings", "n_positions", "seq_length"),
    "torch_dtype": ("torch_dtype", "dtype"),
}

_REQUIRED = ("num_layers", "hidden_size", "num_heads", "vocab_size")

#: bytes per element -> dtype names (lower case); "auto" is what vLLM resolves a
#: bf16/fp16 checkpoint to; "fp8_block" (block-scaled fp8) and "int4_wo" (weight-only
#: int4) are the quantisation modes of kernel databases and silicon rows.
_DTYPE_GROUPS: dict[float, tuple[str, ...]] = {
    8.0: ("float64", "fp64", "double"),
    4.0: ("float32", "fp32", "float", "tf32"),
    2.0: ("bfloat16", "bf16", "float16", "fp16", "half", "auto"),
    1.0: ("fp8", "float8", "float8_e4m3fn", "float8_e5m2", "e4m3", "e5m2", "int8", "uint8",
          "fp8_block"),
    0.5: ("int4", "uint4", "fp4", "nvfp4", "mxfp4", "awq", "gptq", "int4_wo"),
}
DTYPE_BYTES: dict[str, float] = {n: size for size, names in _DTYPE_GROUPS.items() for n in names}


def dtype_bytes(name: str) -> float:
    """Bytes per element of a dtype name.

    Parameters
    ----------
    name : str
        ``"bfloat16"``, ``"bf16"``, ``"float16"``, ``"auto"`` (2 bytes), ``"float32"`` (4),
        ``"fp8"``/``"float8_e4m3fn"``/``"int8"`` (1), ``"int4"``/``"mxfp4"`` (0.5) …;
        a ``"torch."`` prefix and case are ignored.

    Returns
    -------
    float
        Bytes per element.

    Raises
    ------
    ValueError
        For an unknown name (the message lists the known ones).
    """
    key = str(name).strip().lower().removeprefix("torch.")
    if key not in DTYPE_BYTES:
        raise ValueError(f"unknown dtype {name!r}; known: {', '.join(sorted(DTYPE_BYTES))}")
    return DTYPE_BYTES[key]


@dataclass(frozen=True)
class ModelConfig:
    """Decoder-only transformer architecture (the text model only).

    Sizes are element counts; bytes come from :meth:`weight_bytes` and
    :meth:`kv_bytes_per_token` given a dtype width.

    Mixed dense/MoE stacks: ``num_dense_layers`` layers use a dense MLP of
    ``intermediate_size`` and the rest are MoE.  It is read from DeepSeek/Kimi
    ``first_k_dense_replace`` (+ ``moe_layer_freq``) or Qwen-MoE ``mlp_only_layers``
    (+ ``decoder_sparse_step``).  Shared experts (DeepSeek ``n_shared_experts``,
    Qwen2-MoE ``shared_expert_intermediate_size``) run on every token of every MoE
    layer and are counted in ``shared_expert_intermediate_size`` (total width, all
    shared experts together).  When an MoE config gives no ``moe_intermediate_size``
    (Mixtral, gpt-oss, MiniMax), ``intermediate_size`` is the expert width and is
    copied there.

    Multi-head latent attention (DeepSeek-V3, Kimi-K2): ``kv_lora_rank`` > 0;
    ``head_dim`` is the query/key head width ``qk_nope_head_dim + qk_rope_head_dim``,
    ``v_head_dim`` the value width, and the KV cache holds the compressed latent.

    Sliding-window attention: ``sliding_window`` tokens, in ``num_sliding_layers`` of
    the layers — those ``layer_types`` lists as ``sliding_attention`` (gpt-oss: every
    other layer), or all layers when a window is declared without ``layer_types``
    (Mistral-7B-v0.1). :meth:`kv_bytes_per_token` still counts every layer (the
    cache of a windowed layer stops growing at the window).

    Not modelled: multi-token-prediction heads (MiniMax ``use_mtp``, DeepSeek
    ``num_nextn_predict_layers``), vision towers, expert and router biases.
    """

    name: str
    architecture: str
    num_layers: int
    hidden_size: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    intermediate_size: int
    vocab_size: int
    num_experts: int
    num_experts_per_tok: int
    moe_intermediate_size: int
    tie_word_embeddings: bool
    torch_dtype: str
    max_position_embeddings: int
    num_dense_layers: int = 0
    shared_expert_intermediate_size: int = 0
    attention_bias: bool = False
    qk_norm: bool = False
    q_lora_rank: int = 0
    kv_lora_rank: int = 0
    qk_rope_head_dim: int = 0
    v_head_dim: int = 0
    quantization: str = ""
    #: weight matrices per MLP (and per expert): 3 for gated MLPs (gate, up, down), 2 for
    #: plain up/down MLPs (GPT-J, OPT, BLOOM, GPT-2).
    mlp_matrices: int = 3
    #: tokens a layer attends back over when the config declares a sliding window shorter
    #: than its context (Mistral-7B-v0.1: 4096); 0 = full attention.
    sliding_window: int = 0
    #: layers that attend over ``sliding_window`` tokens only (0 with no window)
    num_sliding_layers: int = 0

    def is_moe(self) -> bool:
        """True when the MLP of some layer is a mixture of experts."""
        return self.num_experts > 0

    @property
    def num_moe_layers(self) -> int:
        """Layers whose MLP is a mixture of experts."""
        return self.num_layers - self.num_dense_layers if self.is_moe() else 0

    def attention_params(self) -> int:
        """Parameters of one attention block (projections, biases, q/k norms)."""
        h, hd, nh, nkv = self.hidden_size, self.head_dim, self.num_heads, self.num_kv_heads
        if self.kv_lora_rank:  # MLA: low-rank q and kv, value width v_head_dim
            q = (
                h * self.q_lora_rank + self.q_lora_rank + self.q_lora_rank * nh * hd
                if self.q_lora_rank
                else h * nh * hd
            )
            kv = (
                h * (self.kv_lora_rank + self.qk_rope_head_dim)
                + self.kv_lora_rank
                + self.kv_lora_rank * nh * (hd - self.qk_rope_head_dim + self.v_head_dim)
            )
            return q + kv + nh * self.v_head_dim * h
        params = h * nh * hd + 2 * h * nkv * hd + nh * hd * h
        if self.attention_bias:
            params += nh * hd + 2 * nkv * hd + h
        if self.qk_norm:
            params += 2 * hd
        return params

    def _moe_layer_params(self, active: bool) -> int:
        h = self.hidden_size
        experts = self.num_experts_per_tok if active else self.num_experts
        return (
            experts * self.mlp_matrices * h * self.moe_intermediate_size  # gate, up, down
            + 3 * h * self.shared_expert_intermediate_size
            + h * self.num_experts
        )  # router

    def _params(self, active: bool) -> int:
        h = self.hidden_size
        dense_layers = self.num_layers - self.num_moe_layers
        layers = (
            self.num_layers * (self.attention_params() + 2 * h)  # + 2 RMSNorms
            + dense_layers * self.mlp_matrices * h * self.intermediate_size
            + self.num_moe_layers * self._moe_layer_params(active)
        )
        embed = self.vocab_size * h
        return layers + embed + h + (0 if self.tie_word_embeddings else embed)

    def param_count(self) -> int:
        """Total parameters: embeddings, attention, MLPs or all experts and routers,
        norms, and the LM head unless tied to the embeddings."""
        return self._params(active=False)

    def active_param_count(self) -> int:
        """Parameters touched per token: as :meth:`param_count` but only the
        ``num_experts_per_tok`` routed experts of each MoE layer."""
        return self._params(active=True)

    def routed_expert_param_count(self) -> int:
        """Parameters of all routed experts (gate, up, down of every MoE layer)."""
        return self.num_moe_layers * self.num_experts * self.mlp_matrices * self.hidden_size * self.moe_intermediate_size

    def weight_bytes(self, dtype_bytes: float = 2.0, expert_dtype_bytes: float | None = None) -> int:
        """Bytes of all weights at ``dtype_bytes`` bytes per parameter (the routed
        experts at ``expert_dtype_bytes`` when given: gpt-oss keeps them in MXFP4)."""
        if expert_dtype_bytes is None:
            return int(round(self.param_count() * dtype_bytes))
        experts = self.routed_expert_param_count()
        return int(round((self.param_count() - experts) * dtype_bytes + experts * expert_dtype_bytes))

    def kv_bytes_per_token(self, dtype_bytes: float = 2.0) -> int:
        """KV-cache bytes one token occupies across all layers.

        ``2 * num_layers * num_kv_heads * head_dim * dtype_bytes`` (keys and values);
        for MLA the cached latent ``num_layers * (kv_lora_rank + qk_rope_head_dim)
        * dtype_bytes`` instead, as vLLM stores it.
        """
        if self.kv_lora_rank:
            per_layer = self.kv_lora_rank + self.qk_rope_head_dim
        else:
            per_layer = 2 * self.num_kv_heads * self.head_dim
        return int(round(self.num_layers * per_layer * dtype_bytes))


def _first(cfg: dict, field: str, default=None):
    for key in FIELD_ALIASES[field]:
        if cfg.get(key) is not None:
            return cfg[key]
    return default


def _dense_layers(cfg: dict, num_layers: int, num_experts: int) -> int:
    """How many layers use a dense MLP in an MoE stack (see :class:`ModelConfig`)."""
    if not num_experts:
        return num_layers
    if "first_k_dense_replace" in cfg or "moe_layer_freq" in cfg:
        first_k, freq = (
            int(cfg.get("first_k_dense_replace") or 0),
            int(cfg.get("moe_layer_freq") or 1),
        )
        return sum(1 for i in range(num_layers) if i < first_k or i % freq != 0)
    dense_only = {int(i) for i in cfg.get("mlp_only_layers") or ()}
    step = int(cfg.get("decoder_sparse_step") or 1)
    return sum(1 for i in range(num_layers) if i in dense_only or (i + 1) % step != 0)


def _sliding_window(cfg: dict, max_positions: int) -> int:
    """Declared sliding window, 0 when absent, switched off (Qwen2 ``use_sliding_window``)
    or not shorter than the context."""
    window = cfg.get("sliding_window")
    if not isinstance(window, int) or isinstance(window, bool) or window <= 0:
        return 0
    if cfg.get("use_sliding_window") is False or (max_positions and window >= max_positions):
        return 0
    return window


def _sliding_layers(cfg: dict, num_layers: int, window: int) -> int:
    """Layers with a sliding window: ``layer_types`` entries ``sliding_attention``, or
    every layer when a window is declared without ``layer_types``."""
    if not window:
        return 0
    types = cfg.get("layer_types")
    if isinstance(types, list) and types:
        return sum(1 for t in types[:num_layers] if str(t) == "sliding_attention")
    return num_layers


def _quant_method(cfg: dict) -> str:
    """``quant_method`` of the checkpoint; block-scaled fp8 (``weight_block_size``) is
    ``fp8_block``, the GEMM kind kernel databases measure separately."""
    q = cfg.get("quantization_config") or {}
    if not isinstance(q, dict):
        return ""
    method = str(q.get("quant_method") or q.get("fmt") or "")
    if method == "fp8" and q.get("weight_block_size"):
        return "fp8_block"
    return method


def _torch_dtype(cfg: dict, top: dict, path) -> str:
    """The config's weight dtype (``"auto"`` when it names none): a dtype name
    :func:`dtype_bytes` knows, or TraceError naming the key."""
    value = _first(cfg, "torch_dtype") or _first(top, "torch_dtype") or "auto"
    if not isinstance(value, str) or str(value).strip().lower().removeprefix("torch.") not in DTYPE_BYTES:
        raise TraceError(path, f"{_key_used(cfg, 'torch_dtype')!r} must name a dtype ({', '.join(sorted(DTYPE_BYTES))}), "
                               f"got {value!r}")
    return value


def _key_used(cfg: dict, field: str) -> str:
    """The key of ``field`` this config gives (its first alias when it gives none)."""
    return next((k for k in FIELD_ALIASES[field] if cfg.get(k) is not None), FIELD_ALIASES[field][0])


def _int_fields(cfg: dict, path: Path) -> dict[str, int]:
    out = {}
    for field in FIELD_ALIASES:
        if field == "torch_dtype":
            continue
        value = _first(cfg, field)
        if value is None:
            if field in _REQUIRED:
                raise TraceError(path, f"missing {field!r} (tried keys {FIELD_ALIASES[field]})")
            value = 0
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise TraceError(path, f"{_key_used(cfg, field)!r} must be a non-negative integer, got {value!r}")
        out[field] = checked(value, Rule("int", 0, MODEL_FIELD_MAX[field]), path, repr(_key_used(cfg, field)))
    for field in _REQUIRED:
        if out[field] == 0:
            raise TraceError(path, f"{_key_used(cfg, field)!r} must be positive")
    if out["num_experts"] and out["num_experts_per_tok"] > out["num_experts"]:
        raise TraceError(path, f"{_key_used(cfg, 'num_experts_per_tok')!r} ({out['num_experts_per_tok']}) must be "
                               f"at most the experts, {_key_used(cfg, 'num_experts')!r} ({out['num_experts']})")
    kv_key = next((k for k in FIELD_ALIASES["num_kv_heads"] if cfg.get(k) is not None), None)
    if kv_key is not None and out["num_kv_heads"] == 0:
        raise TraceError(path, f"{kv_key!r} must be positive (omit it for multi-head attention)")
    if out["num_kv_heads"] and out["num_heads"] % out["num_kv_heads"]:
        raise TraceError(path, f"{out['num_heads']} attention heads cannot be shared by "
                               f"{out['num_kv_heads']} key/value heads ({kv_key!r} must divide the heads)")
    return out


def _head_dim(cfg: dict, default: int, kv_lora: int) -> int:
    """Query/key head dimension: with latent attention (``kv_lora`` > 0) the no-RoPE plus
    RoPE parts; else ``head_dim``, or ``default`` (hidden size / heads) when absent."""
    if kv_lora:
        return int(cfg.get("qk_nope_head_dim") or 0) + int(cfg.get("qk_rope_head_dim") or 0)
    return int(cfg.get("head_dim") or default)


def _shared_expert_size(cfg: dict, moe_inter: int) -> int:
    """Intermediate size of the always-active shared experts, all together (0 if none):
    a given size, plus ``n_shared_experts`` experts of ``moe_inter`` each."""
    shared = int(
        cfg.get("shared_expert_intermediate_size") or cfg.get("shared_intermediate_size") or 0
    )
    return shared + int(cfg.get("n_shared_experts") or 0) * moe_inter


def load_model_config(path) -> ModelConfig:
    """Read a Hugging Face ``config.json`` into a :class:`ModelConfig`.

    Parameters
    ----------
    path : str or Path
        The JSON file.  ``name`` is its ``_name_or_path`` when non-empty, else the
        file stem; ``architecture`` is the top-level ``architectures[0]``.

    Raises
    ------
    TraceError
        Naming the file and reason: unreadable file, bad JSON, a missing required
        key (layers, hidden size, heads, vocab) or a non-integer size.
    """
    path = Path(path)
    top = read_json_object(path)
    cfg = top.get("text_config") if isinstance(top.get("text_config"), dict) else top
    f = _int_fields(cfg, path)
    check_model_raw(cfg, path)
    nh = f["num_heads"]
    kv_lora = int(cfg.get("kv_lora_rank") or 0)
    head_dim = _head_dim(cfg, f["hidden_size"] // nh, kv_lora)
    experts = f["num_experts"]
    moe_inter = f["moe_intermediate_size"] or (f["intermediate_size"] if experts else 0)
    archs = top.get("architectures") or cfg.get("architectures") or [""]
    window = _sliding_window(cfg, f["max_position_embeddings"])
    return ModelConfig(
        name=str(top.get("_name_or_path") or cfg.get("_name_or_path") or path.stem),
        architecture=str(archs[0]),
        num_layers=f["num_layers"],
        hidden_size=f["hidden_size"],
        num_heads=nh,
        num_kv_heads=f["num_kv_heads"] or nh,
        head_dim=head_dim,
        intermediate_size=f["intermediate_size"],
        vocab_size=f["vocab_size"],
        num_experts=experts,
        num_experts_per_tok=f["num_experts_per_tok"] if experts else 0,
        moe_intermediate_size=moe_inter,
        tie_word_embeddings=bool(
            top.get("tie_word_embeddings", cfg.get("tie_word_embeddings", False))
        ),
        torch_dtype=_torch_dtype(cfg, top, path),
        max_position_embeddings=f["max_position_embeddings"],
        num_dense_layers=_dense_layers(cfg, f["num_layers"], experts),
        shared_expert_intermediate_size=_shared_expert_size(cfg, moe_inter),
        attention_bias=bool(cfg.get("attention_bias", False)),
        qk_norm=bool(cfg.get("use_qk_norm")) or str(cfg.get("model_type", "")).startswith("qwen3"),
        q_lora_rank=int(cfg.get("q_lora_rank") or 0),
        kv_lora_rank=kv_lora,
        qk_rope_head_dim=int(cfg.get("qk_rope_head_dim") or 0) if kv_lora else 0,
        v_head_dim=int(cfg.get("v_head_dim") or head_dim) if kv_lora else 0,
        quantization=_quant_method(cfg),
        sliding_window=window,
        num_sliding_layers=_sliding_layers(cfg, f["num_layers"], window),
    )
