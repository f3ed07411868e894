"""Reader for aiconfigurator kernel databases (one system's folder).

A system folder (``.../aiconfigurator/h100_sxm``) holds Parquet tables of kernel
latencies measured on one GPU type, by family, framework and version::

    gemm/vllm/0.19.0/gemm_perf.parquet                     framework,version,device,gemm_dtype,m,n,k,latency
    attention/vllm/0.19.0/context_attention_perf.parquet   batch_size,isl,num_heads,num_key_value_heads,
                                                           head_dim,kv_cache_dtype,window_size,step,latency
    attention/vllm/0.19.0/generation_attention_perf.parquet  (same columns; ``step`` = KV length, isl = 1)
    comm/nccl/2.27.3/nccl_perf.parquet                     op_name,nccl_dtype,num_gpus,message_size,latency
    comm/vllm/0.19.0/custom_allreduce_perf.parquet         allreduce_dtype,num_gpus,message_size,backend,latency

Latencies are milliseconds; ``message_size`` counts elements of the row's dtype
(ai-dynamo/aiconfigurator ``collector/README.md``; its ``PerfDatabase`` queries
all-reduce by ``num_tokens * hidden_size`` elements). A sibling ``<system>.yaml``
carries the datasheet figures the collector used.

Rows become ``operator_profile`` rows (seconds):

=======================  ===========================================================
operator                 features
=======================  ===========================================================
``gemm``                 ``m, n, k``; ``dtype`` = GEMM dtype (bfloat16, fp8, fp8_block…)
``context_attention``    ``sequences`` (batch), ``tokens`` (prompt length each),
                         heads / KV heads / head dim; ``dtype`` = KV-cache dtype
``generation_attention`` ``sequences`` (batch), ``kv_decode`` (KV length each), heads…
``nccl_<op>``            ``tp`` (GPUs), ``message_bytes``; all_reduce, all_gather, …
``custom_all_reduce``    ``tp``, ``message_bytes``; ``engine`` = graph or eager
=======================  ===========================================================

Sliding-window attention rows (``window_size > 0``) are left out: the dense
models this project composes use full attention.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import yaml

from mist.traces.checks import (
    MAX_TOKENS,
    Check,
    check_columns,
    check_duplicates,
    raise_at,
    violation,
)
from mist.traces.errors import TraceError, positive_numbers
from mist.traces.rules import Rule, check_document
from mist.traces.schema import OPERATOR_PROFILE, from_columns

# table file stem -> (family folder, columns it must have)
TABLES = {
    "gemm_perf": ("gemm", ("gemm_dtype", "m", "n", "k", "latency")),
    "context_attention_perf": ("attention", ("batch_size", "isl", "num_heads", "num_key_value_heads",
                                             "head_dim", "kv_cache_dtype", "latency")),
    "generation_attention_perf": ("attention", ("batch_size", "step", "num_heads", "num_key_value_heads",
                                                "head_dim", "kv_cache_dtype", "latency")),
    "nccl_perf": ("comm", ("op_name", "nccl_dtype", "num_gpus", "message_size", "latency")),
    "custom_allreduce_perf": ("comm", ("allreduce_dtype", "num_gpus", "message_size", "backend", "latency")),
}
#: the datasheet figures of a ``<system>.yaml`` the kernel composition reads (SI units), with
#: physical ceilings far above any device: 1e16 bytes/s of memory or link bandwidth, 1e18
#: FLOP/s, 2^60 bytes of memory, a second of latency
SYSTEM_RULES: dict[str, Rule] = {
    "gpu": Rule("object", required=True),
    "gpu.mem_bw": Rule("number", 0, 1e16, above=True, required=True),
    "gpu.mem_bw_empirical_scaling_factor": Rule("number", 0, 1, above=True),
    "gpu.mem_empirical_constant_latency": Rule("number", 0, 1),
    "gpu.mem_capacity": Rule("number", 0, 2.0**60, above=True),
    "gpu.bfloat16_tc_flops": Rule("number", 0, 1e18, above=True, required=True),
    **{f"gpu.{dt}_tc_flops": Rule("number", 0, 1e18) for dt in ("fp8", "int8", "fp4")},  # 0: none
    "gpu.sm_version": Rule("int", 1, 1000),
    "node": Rule("object"),
    "node.intra_node_bw": Rule("number", 0, 1e16, above=True),
    "node.p2p_latency": Rule("number", 0, 1),
}
ELEMENT_BYTES = {"half": 2, "bfloat16": 2, "float16": 2, "fp16": 2, "bf16": 2, "int8": 1, "fp8": 1,
                 "float": 4, "float32": 4}


def _version_key(version: str) -> tuple:
    text = str(version).strip().lower().removeprefix("v")
    return tuple(int(p) if p.isdigit() else 0 for p in re.split(r"[.\-+]", text))


def _unnumbered(version: str) -> bool:
    """A build named without a release number ("nightly-5b8c30d", "main", "latest"):
    newer than every release, so it reads the newest tables."""
    return not re.match(r"\d", str(version).strip().lower().removeprefix("v"))


def available(system_dir) -> dict[str, list[tuple[str, str, Path]]]:
    """Tables present under ``system_dir``: stem -> [(framework, version, path)], oldest first."""
    root = Path(system_dir)
    if not root.is_dir():
        raise TraceError(root, "not a kernel-database folder (aiconfigurator system directory expected)")
    found: dict[str, list[tuple[str, str, Path]]] = {}
    for stem, (family, _) in TABLES.items():
        # every entry of that name, a broken link or a folder too (glob would leave a
        # link loop out, and the next version's table would silently stand in for it:
        # :func:`_read` refuses what is not a readable table)
        for folder in sorted(p for p in root.glob(f"{family}/*/*") if p.is_dir()):
            path = folder / f"{stem}.parquet"
            if os.path.lexists(path):
                found.setdefault(stem, []).append((folder.parent.name, folder.name, path))
    for stem in found:
        found[stem].sort(key=lambda t: _version_key(t[1]))
    if not found:
        raise TraceError(root, "no kernel tables found (expected e.g. gemm/vllm/<version>/gemm_perf.parquet)")
    return found


def _release_number(key: tuple) -> float:
    """A version key as one number on the release line (major, minor, patch weighted)."""
    parts = (key + (0, 0, 0))[:3]
    return parts[0] * 1e6 + parts[1] * 1e3 + parts[2]


def pick_version(choices: list[tuple[str, str, Path]], version: str | None):
    """The table whose framework version is nearest ``version`` on the release line
    (ties: the newer): a version newer than every table reads the newest, one older
    than every table the oldest; the newest too when ``version`` is None or names no
    release (a nightly build). ``choices`` are oldest first."""
    if version is None or _unnumbered(version):
        return choices[-1]
    want = _release_number(_version_key(version))
    return min(choices, key=lambda c: (abs(_release_number(_version_key(c[1])) - want),
                                       -_release_number(_version_key(c[1]))))


def _read(path: Path, required: tuple[str, ...]) -> pd.DataFrame:
    """A kernel table; unreadable, empty or not a file is an error naming it (never a
    skip: a skipped table would silently fall back to other versions' tables)."""
    if not path.is_file():
        raise TraceError(path, "not a readable Parquet file (not a regular file)")
    try:
        df = pd.read_parquet(path)
    except Exception as exc:  # pyarrow raises several types for corrupt files
        reason = " ".join(str(exc).split())  # one line: pyarrow's messages span several
        raise TraceError(path, f"not a readable Parquet file ({reason})") from exc
    if df.empty:
        raise TraceError(path, "kernel table has no rows")
    missing = [c for c in required if c not in df.columns]
    if missing:
        raise TraceError(path, f"missing columns {missing}")
    positive_numbers(df["latency"], path, "latency", first_line=1, unit=" (ms)")
    for col in required:  # shape columns are cast to int64 later: whole, >= 0, <= 2^53
        if col in ("op_name", "backend") or col.endswith("dtype"):
            empty = np.flatnonzero(df[col].isna().to_numpy())
            if empty.size:
                raise_at(path, col, int(empty[0]), None, "must be a name")
        elif col != "latency":
            values = pd.to_numeric(df[col], errors="coerce").to_numpy(dtype=float)
            bad = violation(values, np.ones(values.size, dtype=bool), Check(0, MAX_TOKENS, whole=True))
            if bad is not None:
                raise_at(path, col, bad[0], df[col].iloc[bad[0]], bad[1])
    return df


def _rows(stem: str, df: pd.DataFrame, hardware: str, framework: str, version: str, path: Path) -> dict:
    n = len(df)
    cols: dict[str, object] = {
        "hardware": [hardware] * n, "engine": [framework] * n, "engine_version": [version] * n,
        "latency_s": (df["latency"].to_numpy(dtype=float) * 1e-3), "samples": [None] * n,
        "source": [f"aiconfigurator:{path.parent.parent.parent.name}/{framework}/{version}/{stem}"] * n,
    }
    if stem == "gemm_perf":
        cols.update(operator=["gemm"] * n, dtype=df["gemm_dtype"].astype(str).tolist(),
                    m=df["m"].astype("int64"), n=df["n"].astype("int64"), k=df["k"].astype("int64"))
    elif stem in ("context_attention_perf", "generation_attention_perf"):
        op = "context_attention" if stem.startswith("context") else "generation_attention"
        cols.update(operator=[op] * n, dtype=df["kv_cache_dtype"].astype(str).tolist(),
                    sequences=df["batch_size"].astype("int64"),
                    num_heads=df["num_heads"].astype("int32"),
                    num_kv_heads=df["num_key_value_heads"].astype("int32"),
                    head_dim=df["head_dim"].astype("int32"))
        if op == "context_attention":
            cols["tokens"] = df["isl"].astype("int64")
        else:
            cols["kv_decode"] = df["step"].astype("int64")
    else:
        dt_col = "nccl_dtype" if stem == "nccl_perf" else "allreduce_dtype"
        dtypes = df[dt_col].astype(str)
        unknown = sorted(set(dtypes) - set(ELEMENT_BYTES))
        if unknown:
            raise TraceError(path, f"unknown collective dtype {unknown[0]!r}")
        nbytes = df["message_size"].to_numpy(dtype=float) * dtypes.map(ELEMENT_BYTES).to_numpy(dtype=float)
        if stem == "nccl_perf":
            ops = ("nccl_" + df["op_name"].astype(str)).tolist()
        else:
            ops = ["custom_all_reduce"] * n
            cols["engine"] = df["backend"].astype(str).tolist()  # graph or eager
        cols.update(operator=ops, dtype=dtypes.tolist(), tp=df["num_gpus"].astype("int32"),
                    message_bytes=nbytes.astype("int64"))
    return {k: (v.tolist() if isinstance(v, (pd.Series, np.ndarray)) else v) for k, v in cols.items()}


def picked_tables(system_dir, version: str | None = None,
                  framework: str | None = None) -> dict[str, tuple[str, str, Path]]:
    """The table :func:`read_kernel_db` reads for each kernel family: stem ->
    ``(framework, version, path)``, the serving engine's own tables preferred, then
    the version nearest ``version``."""
    out = {}
    for stem, choices in available(system_dir).items():
        if framework is not None:
            same = [c for c in choices if c[0].lower() == framework.lower()]
            choices = same or choices
        out[stem] = pick_version(choices, version)
    return out


def read_kernel_db(system_dir, version: str | None = None, hardware: str | None = None,
                   framework: str | None = None) -> pa.Table:
    """All kernel tables of one system as an ``operator_profile`` table.

    Parameters
    ----------
    system_dir : path
        The system folder (``.../aiconfigurator/<system>``).
    version : str, optional
        Engine version to prefer: per table, the measured version nearest to it
        (e.g. a vLLM 0.12 deployment reads the 0.14.0 tables when 0.14.0 and
        0.19.0 exist). Default: the newest of each table.
    hardware : str, optional
        Name written into the ``hardware`` column (default: the folder name).
    framework : str, optional
        Serving engine to prefer (``vllm``): its tables are used where measured, so
        versions of different engines are never compared. Collectives measured with
        NCCL itself are used as they are.
    """
    root = Path(system_dir)
    hardware = hardware or root.name
    parts = []
    for stem, (fw, ver, path) in picked_tables(root, version, framework).items():
        df = _read(path, TABLES[stem][1])
        if stem.endswith("attention_perf") and "window_size" in df.columns:
            df = df[df["window_size"].fillna(0).astype(int) == 0]
        if not len(df):
            continue
        lines = df.index.to_numpy() + 1  # 1-based Parquet row, for errors
        cols = _rows(stem, df.reset_index(drop=True), hardware, fw, ver, path)
        check_columns(path, "operator_profile", cols, lines)
        parts.append(from_columns(OPERATOR_PROFILE, cols))
        check_duplicates(path, parts[-1], lines)
    table = pa.concat_tables(parts)
    meta = dict(table.schema.metadata or {})
    meta[b"mist.kernel_db"] = str(root).encode()
    return table.replace_schema_metadata(meta)


def read_kernel_db_profile(system_dir, resolve_hardware=None):
    """:func:`read_kernel_db` as a ``mist ingest`` profile reader (newest tables).

    The hardware column keeps the system folder's name unless ``resolve_hardware``
    maps it to a catalogue name.
    """
    from mist.traces.readers.profile_base import ProfileResult

    root = Path(system_dir)
    name = root.name
    if resolve_hardware is not None:
        try:
            name = resolve_hardware(root.name)
        except (KeyError, ValueError):
            name = root.name
    table = read_kernel_db(root, hardware=name)
    meta = {"source_format": "aiconfigurator-dir", "source_path": str(root),
            "hardware_names": {root.name: name},
            "tables": {stem: [f"{fw}/{ver}" for fw, ver, _ in choices] for stem, choices in available(root).items()}}
    return ProfileResult(table=table, meta=meta, rows_read=table.num_rows)


def is_kernel_db(path) -> bool:
    """Whether ``path`` is a folder laid out like an aiconfigurator system."""
    root = Path(path)
    return root.is_dir() and any(any(root.glob(f"{family}/*/*/{stem}.parquet"))
                                 for stem, (family, _) in TABLES.items())


def read_system_yaml(system_dir) -> dict | None:
    """The datasheet ``<system>.yaml`` beside (or inside) a system folder, if present,
    its figures checked against :data:`SYSTEM_RULES`."""
    root = Path(system_dir)
    for path in (root.parent / f"{root.name}.yaml", root / f"{root.name}.yaml", root / "system.yaml"):
        if os.path.lexists(path):  # a folder or a broken link there is an error, never a fall-back
            if not path.is_file():
                raise TraceError(path, "cannot read the system datasheet: not a regular file")
            try:
                data = yaml.safe_load(path.read_text(encoding="utf-8"))
            except yaml.YAMLError as exc:
                raise TraceError(path, f"not valid YAML ({exc})") from exc
            except (OSError, UnicodeDecodeError, RecursionError) as exc:
                raise TraceError(path, f"cannot read file ({type(exc).__name__}: {str(exc)[:200]})") from exc
            if not isinstance(data, dict):
                raise TraceError(path, "expected a mapping at the top level")
            return check_document(data, SYSTEM_RULES, path)
    return None
