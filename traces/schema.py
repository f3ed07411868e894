"""The canonical table schemas, declared once.

All times are seconds (float64). In ``requests`` the time origin is the first
request's arrival (``arrival_s == 0`` for the earliest request); the original epoch
of that instant, when known, is kept in the table metadata ``mist.origin_epoch_s``.
TTFT, TPOT and E2E are derived (see :mod:`mist.traces.derive`), never stored.
"""

from __future__ import annotations

import pyarrow as pa

SCHEMA_VERSION = "1"


def _schema(name: str, fields: list[pa.Field], version: str = SCHEMA_VERSION) -> pa.Schema:
    """A table's schema, labelled with its name and version in the metadata
    (``mist.table``, ``mist.version``: what :func:`mist.traces.io.read_table` checks)."""
    return pa.schema(fields, metadata={"mist.table": name, "mist.version": version})


REQUESTS = _schema(
    "requests",
    [
        pa.field("request_id", pa.string(), nullable=False),
        pa.field("session_id", pa.string()),
        pa.field("round", pa.int32()),
        pa.field("client", pa.string()),
        pa.field("model", pa.string()),
        pa.field("pipeline", pa.string()),
        pa.field("arrival_s", pa.float64(), nullable=False),
        pa.field("input_tokens", pa.int64(), nullable=False),
        pa.field("output_tokens", pa.int64(), nullable=False),
        pa.field("cached_tokens", pa.int64()),
        pa.field("queued_s", pa.float64()),
        pa.field("scheduled_s", pa.float64()),
        pa.field("first_token_s", pa.float64()),
        pa.field("finished_s", pa.float64()),
        # Prompt token ids (exact prefix-cache modelling) or, when only block hashes
        # are known (Mooncake), one hash per block of ``mist.hash_block_tokens`` tokens.
        pa.field("prompt_token_ids", pa.list_(pa.int32())),
        pa.field("block_hashes", pa.list_(pa.int64())),
    ],
)

TOKENS = _schema(
    "tokens",
    [
        pa.field("request_id", pa.string(), nullable=False),
        pa.field("token_index", pa.int32(), nullable=False),
        pa.field("time_s", pa.float64(), nullable=False),
    ],
)

STEPS = _schema(
    "steps",
    [
        pa.field("step_id", pa.int64(), nullable=False),
        pa.field("replica", pa.int32(), nullable=False),
        pa.field("start_s", pa.float64(), nullable=False),
        pa.field("duration_s", pa.float64(), nullable=False),
        pa.field("num_prefill_seqs", pa.int32(), nullable=False),
        pa.field("prefill_tokens", pa.int64(), nullable=False),
        pa.field("num_decode_seqs", pa.int32(), nullable=False),
        pa.field("kv_tokens", pa.int64(), nullable=False),
        pa.field("num_running", pa.int32(), nullable=False),
        pa.field("num_waiting", pa.int32(), nullable=False),
        pa.field("kv_blocks_used", pa.int64(), nullable=False),
        pa.field("num_preempted", pa.int32(), nullable=False),
    ],
)

OPERATOR_PROFILE = _schema(
    "operator_profile",
    [
        pa.field("hardware", pa.string(), nullable=False),
        pa.field("engine", pa.string()),
        pa.field("engine_version", pa.string()),
        pa.field("model", pa.string()),
        pa.field("operator", pa.string(), nullable=False),
        pa.field("dtype", pa.string()),
        pa.field("tp", pa.int32()),
        pa.field("pp", pa.int32()),
        pa.field("ep", pa.int32()),
        # feature columns; null where the operator does not use them
        pa.field("tokens", pa.int64()),
        pa.field("sequences", pa.int64()),
        pa.field("prefill_chunk", pa.int64()),
        pa.field("kv_prefill", pa.int64()),
        pa.field("n_decode", pa.int64()),
        pa.field("kv_decode", pa.int64()),
        pa.field("activated_experts", pa.int64()),
        pa.field("m", pa.int64()),
        pa.field("n", pa.int64()),
        pa.field("k", pa.int64()),
        pa.field("message_bytes", pa.int64()),
        # attention kernels measured per head layout (kernel databases)
        pa.field("num_heads", pa.int32()),
        pa.field("num_kv_heads", pa.int32()),
        pa.field("head_dim", pa.int32()),
        pa.field("latency_s", pa.float64(), nullable=False),
        pa.field("spread_s", pa.float64()),
        pa.field("samples", pa.int32()),
        pa.field("source", pa.string()),
    ],
)

# --- calibration_grids: ``grids.parquet`` of a calibration artifact (mist.calibrate.calibration) ---
# One row per (operator, tp): the fitted model's feature names, axis values and filled
# grid (latency, s) row-major; ``n_measured`` grid cells held a measurement and
# ``out_of_range`` is the model's policy outside the axes. Version 2 added those two
# columns; version 1 files (without them) still load.
CALIBRATION_GRIDS = _schema(
    "calibration_grids",
    [
        pa.field("operator", pa.string()),
        pa.field("tp", pa.int64()),
        pa.field("features", pa.list_(pa.string())),
        pa.field("axes", pa.list_(pa.list_(pa.float64()))),
        pa.field("values", pa.list_(pa.float64())),
        pa.field("n_measured", pa.int64()),
        pa.field("out_of_range", pa.string()),
    ],
    version="2",
)

SCHEMAS = {
    s.metadata[b"mist.table"].decode(): s
    for s in (REQUESTS, TOKENS, STEPS, OPERATOR_PROFILE, CALIBRATION_GRIDS)
}


# --- layer-profile bundle tables: ``tp<N>/<name>.csv`` (mist.profiles.bundle) ---
# CSV files on disk, so their times stay in µs as written (``time_us`` is the median of
# ``samples`` runs, ``spread_us`` their p90 - p10); the bundle reader turns ``time_us``
# into ``latency_s`` (s). Non-nullable columns are the ones a bundle must have; the
# nullable ones are absent from bundles written before they were added.
def _bundle(name: str, required: list[pa.Field], optional: list[pa.Field]) -> pa.Schema:
    fields = [f.with_nullable(False) for f in required] + [f.with_nullable(True) for f in optional]
    return _schema(f"bundle_{name}", fields)


_TIME_US = pa.field("time_us", pa.float64())
_SUMMARY = [pa.field("spread_us", pa.float64()), pa.field("samples", pa.int64())]
BUNDLE_TABLES = {
    # per-token operators of one decoder layer (``layer`` names the operator) by tokens
    "dense": _bundle("dense", [pa.field("layer", pa.string()), pa.field("tokens", pa.int64()), _TIME_US],
                     _SUMMARY),
    # per-sequence operators (lm_head, sampler) by sequences
    "per_sequence": _bundle("per_sequence", [pa.field("layer", pa.string()),
                                             pa.field("sequences", pa.int64()), _TIME_US], _SUMMARY),
    # one layer's attention: a prefill chunk over cached tokens and a batch of decodes
    "attention": _bundle("attention", [pa.field(c, pa.int64()) for c in
                                       ("prefill_chunk", "kv_prefill", "n_decode", "kv_decode")]
                         + [_TIME_US], _SUMMARY),
    # one MoE layer (router, experts, combine) by tokens and distinct experts activated
    "moe": _bundle("moe", [pa.field("tokens", pa.int64()), pa.field("activated_experts", pa.int64()),
                           _TIME_US], _SUMMARY),
    # host time of an engine step outside the model forward (CPU profiles)
    "step_overhead": _bundle("step_overhead", [pa.field("sequences", pa.int64()),
                                               pa.field("tokens", pa.int64()), _TIME_US],
                             [*_SUMMARY, pa.field("step_us", pa.float64()),
                              pa.field("model_us", pa.float64())]),
    # every engine step the profiler timed, in the order they ran (a diagnostic log:
    # the reader requires none of its columns)
    "engine_steps": _bundle("engine_steps", [], [
        pa.field(c, pa.int64()) for c in ("step", "sequences", "tokens", "n_decode", "kv_decode_sum",
                                          "kv_decode_max", "kv_decode_min")
    ] + [pa.field("prefills", pa.string()), _TIME_US]),
}  # fmt: skip


def empty(schema: pa.Schema) -> pa.Table:
    """Return a zero-row table of ``schema``."""
    return schema.empty_table()


def from_columns(schema: pa.Schema, columns: dict, metadata: dict | None = None) -> pa.Table:
    """Build a table of ``schema`` from a dict of column arrays.

    Columns missing from ``columns`` are filled with nulls (they must be nullable);
    unknown keys raise ``KeyError`` so a typo cannot silently drop data.
    """
    unknown = set(columns) - set(schema.names)
    if unknown:
        raise KeyError(f"unknown columns for {schema.metadata[b'mist.table'].decode()}: {sorted(unknown)}")
    n = len(next(iter(columns.values()))) if columns else 0
    arrays = []
    for field in schema:
        if field.name in columns:
            arrays.append(pa.array(columns[field.name], type=field.type))
        else:
            if not field.nullable:
                raise KeyError(f"column {field.name!r} is required")
            arrays.append(pa.nulls(n, type=field.type))
    meta = dict(schema.metadata)
    for k, v in (metadata or {}).items():
        meta[k.encode() if isinstance(k, str) else k] = str(v).encode()
    return pa.Table.from_arrays(arrays, schema=schema.with_metadata(meta))


# --- offline_batch_bench: LLM-Inference-Bench offline batches (argonne-lcf/LLM-Inference-Bench) ---
# One row per batch: ``batch_size`` requests of ``input_tokens`` prompt tokens, each
# generating ``output_tokens``, on ``num_devices`` accelerators of one kind, served by one
# framework. ``line`` is the row's line in its CSV (header = 1); ``parallelism`` is
# ``""`` or ``tp``/``pp``/``ep``/``tp+pp``/``tp+ep``. Times in s: ``latency_s`` is the
# whole batch, ``ttft_s``/``itl_s`` only where the source gives them; throughput in
# tokens/s as the source states it. Read by :mod:`mist.traces.readers.llm_inference_bench`.
OFFLINE_BATCH_BENCH = _schema(
    "offline_batch_bench",
    [
        pa.field("line", pa.int64(), nullable=False),
        pa.field("hardware", pa.string(), nullable=False),
        pa.field("num_devices", pa.int64(), nullable=False),
        pa.field("framework", pa.string(), nullable=False),
        pa.field("model", pa.string(), nullable=False),
        pa.field("input_tokens", pa.int64(), nullable=False),
        pa.field("output_tokens", pa.int64(), nullable=False),
        pa.field("batch_size", pa.int64(), nullable=False),
        pa.field("parallelism", pa.string(), nullable=False),
        pa.field("latency_s", pa.float64(), nullable=False),
        pa.field("throughput_tok_s", pa.float64()),
        pa.field("ttft_s", pa.float64()),
        pa.field("itl_s", pa.float64()),
    ],
)
SCHEMAS["offline_batch_bench"] = OFFLINE_BATCH_BENCH


# --- silicon_rows: measured deployments at fixed concurrency (aiconfigurator silicon CSV) ---
# One row per benchmarked deployment: a model (``model_path``, a Hugging Face id) served
# by ``backend`` at ``backend_version`` on ``system``; ``mode`` ``agg`` (aggregated) or
# ``disagg``; ``isl``/``osl`` tokens; ``batch_size`` the concurrency (per attention-DP
# rank); the parallel sizes; and the measured whole-run mean TTFT and TPOT. Those two stay
# in ms as the source gives them, the one exception to seconds: the prediction outputs
# echo them to 17 digits, and float64 ms -> s -> ms does not give every value back
# (x / 1000 maps two doubles to one when x's mantissa is in [1.953, 2): 21 of the 4254
# TTFTs of ai-dynamo/aiconfigurator's ``silicon_sample.csv``). Columns whose field
# metadata says ``mist.required: column`` must be present even where a row leaves them
# empty (``batch_size`` of a disaggregated row). Read by :mod:`mist.traces.readers.silicon`.
_COLUMN = {"mist.required": "column"}
SILICON_ROWS = _schema(
    "silicon_rows",
    [
        pa.field("id", pa.string()),
        pa.field("system", pa.string(), nullable=False),
        pa.field("backend", pa.string(), nullable=False),
        pa.field("backend_version", pa.string()),
        pa.field("model_path", pa.string(), nullable=False),
        pa.field("precision", pa.string()),
        pa.field("gemm_quant_mode", pa.string()),
        pa.field("moe_quant_mode", pa.string()),
        pa.field("mode", pa.string(), nullable=False),
        pa.field("isl", pa.int64(), nullable=False),
        pa.field("osl", pa.int64(), nullable=False),
        pa.field("batch_size", pa.int64(), metadata=_COLUMN),
        pa.field("tp_size", pa.int64(), metadata=_COLUMN),
        pa.field("pp_size", pa.int64()),
        pa.field("attention_dp_size", pa.int64()),
        pa.field("moe_tp_size", pa.int64()),
        pa.field("moe_ep_size", pa.int64()),
        pa.field("silicon_ttft_ms", pa.float64(), nullable=False),
        pa.field("silicon_tpot_ms", pa.float64(), nullable=False),
    ],
)
SCHEMAS["silicon_rows"] = SILICON_ROWS
