"""Writing a layer-profile bundle: the CSV tables and ``meta.yaml``, all or nothing.

Used by ``mist profile``; the layout is the one :mod:`mist.profiles.bundle` reads.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
import yaml

from mist.traces.staging import check_output, replace_folder, staging_prefix, sweep_stale

# table -> column order written to disk (features first, then the summary columns)
SUMMARY_COLUMNS = ("time_us", "spread_us", "samples")
TABLE_COLUMNS = {
    "dense": ("layer", "tokens") + SUMMARY_COLUMNS,
    "per_sequence": ("layer", "sequences") + SUMMARY_COLUMNS,
    "attention": ("prefill_chunk", "kv_prefill", "n_decode", "kv_decode") + SUMMARY_COLUMNS,
    "step_overhead": ("sequences", "tokens") + SUMMARY_COLUMNS + ("step_us", "model_us"),
    # one row per engine step of the overhead scenarios, in the order they ran
    "engine_steps": ("step", "sequences", "tokens", "n_decode", "kv_decode_sum", "kv_decode_max",
                     "kv_decode_min", "prefills", "time_us"),
}
TABLE_COLUMNS["serving_steps"] = TABLE_COLUMNS["engine_steps"]


def _fmt(v) -> str:
    if isinstance(v, (int, np.integer)):
        return str(int(v))
    if isinstance(v, float):
        return f"{v:.3f}"
    return str(v)


def render_csv(name: str, rows: list[dict]) -> str:
    """CSV text of table ``name``: fixed column order, µs to 3 decimals, sorted rows."""
    cols = TABLE_COLUMNS[name]
    for i, r in enumerate(rows):
        missing = [c for c in cols if c not in r]
        if missing:
            raise ValueError(f"{name} row {i} lacks columns {missing}")
    keyed = sorted(rows, key=lambda r: tuple(r[c] for c in cols[: cols.index("time_us")]))
    if "step" in cols:  # a log, not a grid: keep the order the steps ran in
        keyed = sorted(rows, key=lambda r: r["step"])
    lines = [",".join(cols)] + [",".join(_fmt(r[c]) for c in cols) for r in keyed]
    return "\n".join(lines) + "\n"


def plain(obj):
    """``obj`` with only YAML-safe builtins: str subclasses, numpy scalars, tuples converted."""
    if isinstance(obj, dict):
        return {str(k): plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [plain(v) for v in obj]
    if isinstance(obj, (bool, np.bool_)):
        return bool(obj)
    if isinstance(obj, (int, np.integer)):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        return float(obj)
    if obj is None:
        return None
    return str(obj)


def occupied(out) -> bool:
    """Whether ``out`` exists and is not an empty folder (writing there needs ``force``)."""
    out = Path(out)
    return out.exists() and not (out.is_dir() and not any(out.iterdir()))


def write_bundle(out, meta: dict, tables: dict[str, list[dict]], force: bool = False) -> Path:
    """Write ``meta.yaml`` and ``tp1/<table>.csv`` to ``out``, all or nothing.

    Everything is rendered in memory, written into a staging folder beside ``out`` and
    swapped into place in one atomic exchange (:func:`mist.traces.staging.replace_folder`),
    so ``out`` is always the whole old bundle or the whole new one; a killed run's
    staging folder is deleted by the next run.

    Raises
    ------
    FileExistsError
        ``out`` exists and is not an empty folder, unless ``force``.
    """
    out = Path(out)
    if occupied(out) and not force:
        raise FileExistsError(f"{out} exists and is not empty (use --force to replace it)")
    texts = {"meta.yaml": yaml.safe_dump(plain(meta), sort_keys=False, default_flow_style=None)}
    for name, rows in tables.items():
        texts[f"tp1/{name}.csv"] = render_csv(name, rows)
    out.parent.mkdir(parents=True, exist_ok=True)
    check_output(out, folder=True)
    sweep_stale(out)  # a killed run's staging folder
    tmp = Path(tempfile.mkdtemp(prefix=staging_prefix(out), suffix=".tmp", dir=out.parent))
    os.chmod(tmp, 0o755)  # mkdtemp makes it private; a bundle is ordinary data
    try:
        for rel, text in texts.items():
            (tmp / rel).parent.mkdir(parents=True, exist_ok=True)
            (tmp / rel).write_text(text)
        replace_folder(tmp, out)  # one atomic exchange: old bundle or new, never none
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out
