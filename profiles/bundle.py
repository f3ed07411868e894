"""Reader for layer-profile bundles (LLMServingSim profiler layout, legacy tables).

A bundle root (``.../<hardware>/<org>/<model>/<variant>``) holds ``meta.yaml`` and
one folder per tensor-parallel degree, ``tp<N>/``, with:

``dense.csv``        ``layer,tokens,time_us`` — per-token ops of ONE decoder layer
                     (qkv/o/gate_up/down projections, norms, rotary, activation) and
                     the once-per-model ``embedding`` and ``final_layernorm``.
``per_sequence.csv`` ``layer,sequences,time_us`` — ``lm_head`` and ``sampler``.
``attention.csv``    ``prefill_chunk,kv_prefill,n_decode,kv_decode,time_us`` — one
                     layer's attention for a batch of one prefill chunk (with
                     ``kv_prefill`` tokens already cached) and ``n_decode`` decodes
                     of KV length ``kv_decode``.
``moe.csv``          ``tokens,activated_experts,time_us`` — one MoE layer for a
                     batch of tokens whose top-k routing hit that many distinct
                     experts (MoE models only; all experts on the one GPU).
``skew.csv`` / ``skew_fit.csv``  decode batches with uneven KV lengths.
``step_overhead.csv`` ``sequences,tokens,time_us`` — host time of one engine step
                     outside the model forward (written by ``mist profile`` on CPUs).
``engine_steps.csv`` every engine step ``mist profile`` measured: shape and wall time.

Times are microseconds on disk and seconds once read. The tables of ``tp<N>`` hold
the shapes of ONE tensor-parallel rank (heads, intermediate and vocab divided by N),
measured on a single GPU: they contain no collective communication, which the
cost model adds. ``meta.yaml``'s ``hf_overrides`` records the shard shapes of the
last degree profiled, with ``num_hidden_layers: 1``: tables are per layer.
"""

from __future__ import annotations

import csv
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import yaml

from mist.profiles.limits import check_engine_meta
from mist.traces.checks import CHECKS, MAX_TOKENS, check_columns, check_duplicates
from mist.traces.errors import TraceError, positive_numbers
from mist.traces.readers.vllm_run import PROBE_RULES
from mist.traces.rules import Rule, check_document
from mist.traces.schema import BUNDLE_TABLES, OPERATOR_PROFILE, from_columns

# tables read when present, without required columns (fits and diagnostic logs)
OPTIONAL_TABLES = ("skew", "skew_fit", "engine_steps")
# columns of text that name an operator (never empty)
TEXT_COLUMNS = ("layer",)
# table name -> the columns its CSV must have (the non-nullable ones of its schema in
# mist.traces.schema.BUNDLE_TABLES). Each of them but ``layer`` and ``time_us`` is a
# feature column of the same name in ``operator_profile``; tables without a ``layer``
# column hold one operator, named like the table.
TABLES = {name: tuple(f.name for f in schema if not f.nullable)
          for name, schema in BUNDLE_TABLES.items() if name not in OPTIONAL_TABLES}  # fmt: skip


#: the keys of ``meta.yaml`` a reader uses, when given (null = not given): the bundle's
#: identity (text), its engine's settings (an object; their values are checked with
#: the run's, :data:`mist.profiles.limits.ENGINE_RULES`), the skew fit and the speed probes
META_RULES: dict[str, Rule] = {
    **{key: Rule("text") for key in ("hardware", "gpu", "model", "variant", "vllm_version")},
    "engine_effective": Rule("object"), "skew_fit": Rule("object"),
    **{f"{probe}{key}": rule for probe in ("speed_probe", "speed_probe_end") for key, rule in PROBE_RULES.items()},
}


def _features(name: str) -> tuple[str, ...]:
    """Feature columns of bundle table ``name`` (named as in ``operator_profile``)."""
    return tuple(c for c in TABLES[name] if c not in ("layer", "time_us"))


@dataclass(frozen=True)
class Bundle:
    """A read layer-profile bundle.

    Attributes
    ----------
    root : Path
    meta : dict
        ``meta.yaml`` as parsed.
    tables : dict
        ``{(tp, name): DataFrame}``; ``time_us`` is replaced by ``latency_s`` (s).
    """

    root: Path
    meta: dict
    tables: dict = field(repr=False)

    @property
    def tp_degrees(self) -> list[int]:
        return sorted({tp for tp, _ in self.tables})

    @property
    def hardware(self) -> str:
        return str(self.meta.get("hardware") or self.meta.get("gpu") or "unknown")

    def table(self, tp: int, name: str) -> pd.DataFrame:
        """Return table ``name`` of degree ``tp``; TraceError naming the file if absent."""
        try:
            return self.tables[(tp, name)]
        except KeyError:
            raise TraceError(self.root / f"tp{tp}" / f"{name}.csv", "table not in bundle") from None


def _read_csv(path: Path, required: tuple[str, ...]) -> pd.DataFrame:
    try:
        df = pd.read_csv(path)
    except Exception as exc:
        raise TraceError(path, f"unreadable CSV ({exc})") from exc
    missing = [c for c in required if c not in df.columns]
    if missing:
        raise TraceError(path, f"missing columns {missing}; found {list(df.columns)}", line=1)
    _check_rows(path, len(df.columns))
    for col in [c for c in TEXT_COLUMNS if c in df.columns]:
        empty = np.flatnonzero(df[col].isna().to_numpy())
        if empty.size:
            raise TraceError(path, f"{col}: must name an operator, found an empty cell", line=int(empty[0]) + 2)
    if "time_us" in df.columns:
        t = positive_numbers(df["time_us"], path, "time_us", first_line=2)
        df = df.drop(columns="time_us").assign(latency_s=t * 1e-6)
    _check(path, df, [c for c in required if c not in ("layer", "time_us")])
    return df


def _check_rows(path: Path, width: int) -> None:
    """Every data row has the header's number of fields: a shorter one is a truncated or
    damaged row, which pandas would read with its last cells empty."""
    with open(path, newline="", encoding="utf-8") as f:
        for line, row in enumerate(csv.reader(f), start=1):
            if row and len(row) != width:
                raise TraceError(path, f"{len(row)} fields, the header has {width} (a truncated or damaged row)",
                                 line=line)


def _check(path: Path, df: pd.DataFrame, features: list[str]) -> None:
    """The declared ``operator_profile`` checks of a bundle table's feature columns
    (whole counts, 0..2^53) and latency (at most an hour); for the tables with required
    columns, no two rows of one shape whose times conflict (mist.traces.checks)."""
    lines = df.index.to_numpy() + 2
    checked = [c for c in df.columns if c in CHECKS["operator_profile"] and c not in ("samples", "spread_s")]
    # required columns as arrays (an empty or non-numeric cell is NaN: "must be a finite
    # number"); optional ones as Series (an empty cell is null, allowed)
    cols = {c: pd.to_numeric(df[c], errors="coerce") for c in checked}
    cols = {c: v.to_numpy(dtype=float) if c in features or c == "latency_s" else v for c, v in cols.items()}
    check_columns(path, "operator_profile", cols, lines)
    if features:
        keys = [c for c in ("layer", *features) if c in df.columns]
        table = pa.table({**{c: df[c].astype(str).tolist() for c in keys}, "latency_s": df["latency_s"]})
        check_duplicates(path, table, lines)


#: the engine-step log's columns: optional as a table, but whole when present (the host
#: residual fit, :mod:`mist.calibrate.host`, reads every one of them)
STEP_LOG_COLUMNS = tuple(BUNDLE_TABLES["engine_steps"].names)
_PREFILL = re.compile(r"\d+:\d+")


def _check_step_log(path: Path, df: pd.DataFrame) -> None:
    """``engine_steps.csv``: counts are whole numbers in 0..2^53 (``step``, ``sequences``,
    ``tokens``, ``n_decode``, ``kv_decode_*``) and ``prefills`` is empty or
    ``chunk:cached`` pairs joined by ``;`` (``time_us`` is checked with every table's)."""
    missing = [c for c in STEP_LOG_COLUMNS if c not in df.columns and not (c == "time_us" and "latency_s" in df)]
    if missing:
        raise TraceError(path, f"missing columns {missing}; found {list(df.columns)}", line=1)
    lines = df.index.to_numpy() + 2
    counts = [c for c in STEP_LOG_COLUMNS if c not in ("prefills", "time_us")]
    for col in counts:
        values = pd.to_numeric(df[col], errors="coerce").to_numpy(float)
        bad = np.flatnonzero(~np.isfinite(values) | (values < 0) | (values > MAX_TOKENS)
                             | (values != np.floor(values)))
        if bad.size:
            raise TraceError(path, f"{col}: must be a whole number in 0..2^53, got {df[col].iloc[bad[0]]!r}",
                             line=int(lines[bad[0]]))
    for i, text in enumerate(df["prefills"].to_numpy(object)):
        if isinstance(text, float) and np.isnan(text):
            continue  # an empty cell: no prefill in that step
        parts = str(text).split(";")
        if not all(_PREFILL.fullmatch(p) and int(p.split(":")[0]) <= MAX_TOKENS
                   and int(p.split(":")[1]) <= MAX_TOKENS for p in parts):
            raise TraceError(path, f"prefills: expected chunk:cached token pairs joined by ';' (e.g. 16:0), "
                                   f"got {str(text)[:80]!r}", line=int(lines[i]))


def _present(path: Path) -> bool:
    """Whether a table is there to read: a file, or anything else in its place (a
    folder, a dangling link, a symlink loop), which reading then rejects by name."""
    return path.is_symlink() or path.exists()


def _read_meta(path: Path) -> dict:
    """``meta.yaml`` as a checked mapping (:data:`META_RULES`); an empty file is an error
    (every bundle names at least its hardware and model)."""
    try:
        # libyaml's safe loader where built (the same documents, ten times faster than PyYAML's)
        meta = yaml.load(path.read_text(encoding="utf-8"), Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        reason = " ".join(str(getattr(exc, "problem", None) or exc).split())  # one line
        raise TraceError(path, f"invalid YAML ({reason})", line=None if mark is None else mark.line + 1) from exc
    except (OSError, UnicodeDecodeError, RecursionError) as exc:
        raise TraceError(path, f"cannot read file ({type(exc).__name__}: {str(exc)[:200]})") from exc
    if meta is None:
        raise TraceError(path, "empty: a bundle's meta.yaml names at least its hardware and model")
    if not isinstance(meta, dict):
        raise TraceError(path, f"expected a mapping at the top level, found {type(meta).__name__}")
    check_document(meta, META_RULES, path)
    check_engine_meta({"engine_effective": meta.get("engine_effective")}, path)
    return meta


def read_bundle(root) -> Bundle:
    """Read ``meta.yaml`` and every ``tp<N>/*.csv`` table of a bundle.

    Raises
    ------
    TraceError
        Missing ``meta.yaml`` or tp folders, missing columns, non-positive times.
    """
    root = Path(root)
    meta_path = root / "meta.yaml"
    if not meta_path.is_file():
        raise TraceError(meta_path, "bundle has no meta.yaml (is --profiles the bundle root, e.g. .../<model>/bf16?)")
    meta = _read_meta(meta_path)
    tables = {}
    for tp_dir in sorted(p for p in root.iterdir() if p.is_dir() and re.fullmatch(r"tp\d+", p.name)):
        tp = int(tp_dir.name[2:])
        for name, required in TABLES.items():
            path = tp_dir / f"{name}.csv"
            if _present(path):
                tables[(tp, name)] = _read_csv(path, required)
        for name in OPTIONAL_TABLES:
            path = tp_dir / f"{name}.csv"
            if _present(path):
                tables[(tp, name)] = _read_csv(path, ())
                if name == "engine_steps":
                    _check_step_log(path, tables[(tp, name)])
    if not tables:
        raise TraceError(root, "no tp<N>/ folders with profile tables")
    return Bundle(root=root, meta=meta, tables=tables)


def to_operator_profile(bundle: Bundle) -> pa.Table:
    """Flatten the dense, per-sequence and attention tables into ``operator_profile``."""
    cols: dict[str, list] = {name: [] for name in OPERATOR_PROFILE.names}
    engine_version = str(bundle.meta.get("vllm_version", ""))
    for (tp, name), df in sorted(bundle.tables.items(), key=lambda kv: kv[0]):
        if name not in TABLES:
            continue
        features = _features(name)
        ops = df["layer"].astype(str) if "layer" in df.columns else pd.Series([name] * len(df))
        n = len(df)
        fixed = {
            "hardware": bundle.hardware, "engine": "vllm", "engine_version": engine_version,
            "model": str(bundle.meta.get("model", "")), "dtype": str(bundle.meta.get("variant", "")),
            "tp": tp, "pp": 1, "ep": 1, "source": f"llmservingsim-bundle:tp{tp}/{name}.csv",
        }
        for key in OPERATOR_PROFILE.names:
            if key in fixed:
                cols[key].extend([fixed[key]] * n)
            elif key == "operator":
                cols[key].extend(ops.tolist())
            elif key == "latency_s":
                cols[key].extend(df["latency_s"].tolist())
            elif key in features:
                cols[key].extend(df[key].astype("int64").tolist())
            else:
                cols[key].extend([None] * n)
    return from_columns(OPERATOR_PROFILE, cols, metadata={"mist.bundle": str(bundle.root)})
