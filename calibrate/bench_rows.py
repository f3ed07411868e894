"""Whose rows are these: the hardware and model of every benchmark row, and the target's rows.

Leave-one-accelerator-out (:mod:`mist.calibrate.accelerator`) needs, for every row of an
``offline_batch_bench`` table, its datasheet (:mod:`mist.profiles.hardware`) and model
architecture (:mod:`mist.profiles.model_catalog`) — None where there is none, never
guessed — and which rows belong to the accelerator treated as new.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from mist.profiles.hardware import get_hardware, load_catalog
from mist.profiles.model_catalog import load_model_catalog, resolve_model


def _lookup(names, fn) -> list:
    """``fn`` of each name, None where it raises KeyError (computed once per distinct name)."""
    cache = {}
    for name in dict.fromkeys(names):
        try:
            cache[name] = fn(name)
        except KeyError:
            cache[name] = None
    return [cache[n] for n in names]


class NoDatasheet(ValueError):
    """The target accelerator has no entry in the hardware catalog."""


def _norm(name: str) -> str:
    return str(name).strip().casefold()


def resolve(table: pd.DataFrame, catalog=None, models=None, configs_dir=None):
    """Hardware, model and device key of every row.

    Returns
    -------
    hardware : list of Hardware or None
    model : list of ModelConfig or None
    device : np.ndarray of str
        Catalogue key of the hardware, or ``"?" + name`` when it has no datasheet.
    """
    catalog = load_catalog() if catalog is None else catalog
    models = load_model_catalog() if models is None else models
    hw = _lookup(list(table["hardware"]), lambda n: get_hardware(n, catalog))
    mdl = _lookup(list(table["model"]), lambda n: resolve_model(n, models, configs_dir))
    device = np.array([h.name if h is not None else "?" + _norm(n) for h, n in zip(hw, table["hardware"])])
    return hw, mdl, device


def target_mask(table: pd.DataFrame, device: np.ndarray, name: str, catalog=None) -> np.ndarray:
    """Rows of accelerator ``name``: same ``hardware`` text (case-insensitive), else same
    datasheet (``"h100_sxm"`` selects "Nvidia H100 GPU" rows), else hardware whose words
    include all of the name's (``"a100"`` selects "Nvidia A100 GPU").

    Raises
    ------
    ValueError
        When no row matches; the message lists the table's hardware.
    """
    exact = table["hardware"].map(_norm).to_numpy() == _norm(name)
    if exact.any():
        return exact
    try:
        key = get_hardware(name, load_catalog() if catalog is None else catalog).name
    except KeyError:
        key = None
    mask = device == key
    if not mask.any():
        words = set(_norm(name).split())
        mask = table["hardware"].map(lambda h: words <= set(_norm(h).split())).to_numpy()
    if not mask.any():
        known = ", ".join(sorted(table["hardware"].unique()))
        raise ValueError(f"no rows for target {name!r}; the table has: {known}")
    return mask
