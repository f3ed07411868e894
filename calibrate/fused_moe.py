"""How fast a device's fused-MoE kernel multiplies, fitted on published kernel benchmarks.

A kernel database times dense GEMMs; it has no MoE kernel. Composing a MoE layer from
it (:func:`mist.calibrate.kernel_profile.moe_layer`) prices the experts' multiplications as one
dense GEMM over all token-expert pairs. vLLM's fused-MoE kernel is a grouped GEMM over
many small per-expert blocks, and at prefill sizes it is far slower than that: the
published ``benchmark_moe.py`` times of the kernel on H100 are 1.7-3.2x the dense-GEMM
composition at 1024-4096 tokens (Qwen3-30B-A3B fp8), while decode-sized calls, which
stream the experts' weights, agree within ~10-30 %.

This module fits, per compute dtype, the share of the datasheet peak the kernel's
multiplications reach (``efficiency``) so that the composed layer matches those
published times; :func:`mist.calibrate.kernel_profile.moe_layer` then gives the multiplications at
least their FLOPs at that rate. The measurements are an input file with its source
(``profiles/fused_moe_measurements.yaml``); the fitted file
(``profiles/fused_moe_efficiency.yaml``) is written by ``mist silicon
--fit-moe-efficiency`` and applies to the system it was fitted for and to systems of
the same compute capability (``sm_version`` of the aiconfigurator datasheet: vLLM
picks its MoE kernels by it, so an H200 runs the H100's); other devices get none. The
silicon rows are never used in the fit, so MoE rows there are held out.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from mist.calibrate.kernel_profile import TOKENS_PER_EXPERT_HALF, moe_layer, moe_rate_key
from mist.calibrate.kernels import KernelSet, base_dtype
from mist.profiles.limits import MAX_EXPERTS, MAX_RANKS, MAX_STEP_TOKENS
from mist.profiles.model import ModelConfig, dtype_bytes
from mist.traces.checks import MAX_OPERATOR_S
from mist.traces.errors import InputWarning, TraceError
from mist.traces.io import read_yaml_object, write_yaml
from mist.traces.rules import Rule

#: the efficiency a fit may return: shares of the datasheet peak in steps of 0.01
GRID = np.round(np.arange(0.01, 1.0 + 1e-9, 0.01), 2)
#: the tokens per expert at half rate a fit may return (0: one rate at every size)
HALF_GRID = np.arange(0.0, 64.0 + 1e-9, 4.0)
#: the fused-MoE efficiency ``mist silicon`` applies unless told otherwise
DEFAULT_EFFICIENCY = Path(__file__).resolve().parents[1] / "profiles" / "fused_moe_efficiency.yaml"
SERIES_KEYS = ("label", "dtype", "tp", "hidden_size", "moe_intermediate_size", "num_experts", "top_k",
               "tokens", "time_us")
#: optional per series: where its times were published, when not the file's ``source``
OPTIONAL_SERIES_KEYS = ("source",)
#: a series' sizes: positive integers up to physical ceilings (far above any real layer)
SERIES_RULES: dict[str, Rule] = {
    "tp": Rule("int", 1, MAX_RANKS), "hidden_size": Rule("int", 1, 2**24),
    "moe_intermediate_size": Rule("int", 1, 2**24), "num_experts": Rule("int", 1, MAX_EXPERTS),
    "top_k": Rule("int", 1, MAX_EXPERTS), "tokens": Rule("int", 1, MAX_STEP_TOKENS),
    "time_us": Rule("number", 0, MAX_OPERATOR_S * 1e6, above=True),
}


@dataclass(frozen=True)
class Series:
    """Published times (us) of one fused-MoE layer shape at several token counts."""

    label: str
    dtype: str
    tp: int
    hidden_size: int
    moe_intermediate_size: int
    num_experts: int
    top_k: int
    tokens: tuple
    time_us: tuple
    source: str = ""

    def model(self) -> ModelConfig:
        """A one-layer MoE with this series' shape (what :func:`moe_layer` reads)."""
        return ModelConfig(name=self.label, architecture="moe", num_layers=1, hidden_size=self.hidden_size,
                           num_heads=1, num_kv_heads=1, head_dim=self.hidden_size, intermediate_size=0,
                           vocab_size=1, num_experts=self.num_experts, num_experts_per_tok=self.top_k,
                           moe_intermediate_size=self.moe_intermediate_size, tie_word_embeddings=False,
                           torch_dtype="bfloat16", max_position_embeddings=1)

    def composed_us(self, ks: KernelSet, efficiency: dict | None) -> np.ndarray:
        """The layer composed from ``ks`` at every token count (us); experts hit as
        uniform random routing hits them, ``E (1 - (1 - k/E)^T)``."""
        t = np.asarray(self.tokens, dtype=float)
        hit = self.num_experts * (1.0 - (1.0 - self.top_k / self.num_experts) ** t)
        return moe_layer(ks, self.model(), self.tp, 1, self.dtype, t, hit, efficiency) * 1e6


def _checked(path, where, key, value):
    problem = SERIES_RULES[key].problem(value)
    if problem:
        raise TraceError(path, f"{where}: {problem}, got {value!r}")
    return value


def read_measurements(path) -> tuple[str, str, list[Series]]:
    """``(system, source, series)`` of a measurements file (see the shipped one)."""
    path = Path(path)
    doc = read_yaml_object(path, "fused-MoE measurements")
    if not isinstance(doc.get("series"), list) or not doc["series"]:
        raise TraceError(path, "expected a mapping with system, source and a non-empty list of series")
    for key in ("system", "source"):
        if not isinstance(doc.get(key), str) or not doc[key]:
            raise TraceError(path, f"{key} must be a non-empty string")
    out = []
    for i, s in enumerate(doc["series"]):
        where = f"series[{i}]"
        if not isinstance(s, dict) or any(k not in s for k in SERIES_KEYS):
            raise TraceError(path, f"{where}: needs {', '.join(SERIES_KEYS)}")
        ints = {k: _checked(path, f"{where}.{k}", k, s[k])
                for k in ("tp", "hidden_size", "moe_intermediate_size", "num_experts", "top_k")}
        tokens, times = s["tokens"], s["time_us"]
        if not isinstance(tokens, list) or not isinstance(times, list) or len(tokens) != len(times) or not tokens:
            raise TraceError(path, f"{where}: tokens and time_us must be lists of the same, non-zero length")
        tokens = tuple(_checked(path, f"{where}.tokens", "tokens", t) for t in tokens)
        for t in times:
            _checked(path, f"{where}.time_us", "time_us", t)
        if len(set(tokens)) != len(tokens):
            raise TraceError(path, f"{where}.tokens: a token count is given twice")
        if ints["top_k"] > ints["num_experts"] or ints["moe_intermediate_size"] % ints["tp"]:
            raise TraceError(path, f"{where}: top_k above num_experts, or width not divisible by tp")
        if not isinstance(s["label"], str) or not s["label"] or not isinstance(s["dtype"], str) or not s["dtype"]:
            raise TraceError(path, f"{where}: label and dtype must be non-empty strings")
        try:
            dtype_bytes(s["dtype"])
        except ValueError as exc:
            raise TraceError(path, f"{where}.dtype: {exc}") from None
        unknown = set(s) - set(SERIES_KEYS) - set(OPTIONAL_SERIES_KEYS)
        if unknown:
            raise TraceError(path, f"{where}: unknown keys {', '.join(sorted(map(str, unknown)))}")
        if "source" in s and (not isinstance(s["source"], str) or not s["source"]):
            raise TraceError(path, f"{where}.source must be a non-empty string")
        out.append(Series(str(s["label"]), str(s["dtype"]), tokens=tokens,
                          time_us=tuple(float(t) for t in times), source=s.get("source", ""), **ints))
    return doc["system"], doc["source"], out


@dataclass(frozen=True)
class FusedMoEEfficiency:
    """Share of the datasheet peak a system's fused-MoE kernel multiplies at, per
    compute dtype (``"bfloat16"``, ``"fp8"``, ``"w4a16"``), reached when each expert
    gets many tokens: with ``m`` tokens per expert it is scaled by ``m / (m +
    tokens_per_expert_half)``; ``fitted_on`` says on what."""

    system: str
    efficiency: dict
    fitted_on: dict = field(default_factory=dict)
    sm_version: int | None = None
    tokens_per_expert_half: float = 0.0

    def rates(self) -> dict:
        """What :func:`mist.calibrate.kernel_profile.moe_layer` takes as ``efficiency``."""
        out = dict(self.efficiency)
        if self.tokens_per_expert_half:
            out[TOKENS_PER_EXPERT_HALF] = self.tokens_per_expert_half
        return out

    def to_dict(self) -> dict:
        return {"system": self.system, "sm_version": self.sm_version,
                "efficiency": dict(sorted(self.efficiency.items())),
                TOKENS_PER_EXPERT_HALF: self.tokens_per_expert_half, "fitted_on": self.fitted_on}

    def applies_to(self, system: str, sm_version: int | None) -> bool:
        """Fitted for ``system``, or for a device of the same compute capability."""
        return self.system.casefold() == str(system).casefold() or (self.sm_version is not None and self.sm_version == sm_version)

    def save(self, path) -> None:
        write_yaml(path, "Share of the datasheet peak the fused-MoE kernel's multiplications reach, per\n"
                         "compute dtype, on one system, and the tokens per expert at which it reaches half\n"
                         "of that. Written by `mist silicon --fit-moe-efficiency` from published kernel\n"
                         "benchmarks; see docs/kernels.md.", self.to_dict())

    @classmethod
    def load(cls, path) -> FusedMoEEfficiency:
        path = Path(path)
        doc = read_yaml_object(path, "fused-MoE efficiency")
        if not isinstance(doc.get("system"), str) or not isinstance(doc.get("efficiency"), dict) \
                or not doc["efficiency"]:
            raise TraceError(path, "expected a mapping with system and a non-empty efficiency mapping")
        eff = {}
        for dtype, v in doc["efficiency"].items():
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 < v <= 1:
                raise TraceError(path, f"efficiency of {dtype!r} must be in (0, 1], got {v!r}")
            eff[base_dtype(str(dtype))] = float(v)
        fitted_on = doc.get("fitted_on") or {}
        if not isinstance(fitted_on, dict):
            raise TraceError(path, "fitted_on must be a mapping")
        sm = doc.get("sm_version")
        if sm is not None and (isinstance(sm, bool) or not isinstance(sm, int) or sm < 1):
            raise TraceError(path, f"sm_version must be a positive integer or null, got {sm!r}")
        half = doc.get(TOKENS_PER_EXPERT_HALF, 0.0)
        if isinstance(half, bool) or not isinstance(half, (int, float)) or not math.isfinite(half) or half < 0 \
                or half > MAX_STEP_TOKENS:
            raise TraceError(path, f"{TOKENS_PER_EXPERT_HALF} must be a non-negative number of tokens "
                                   f"(at most {MAX_STEP_TOKENS}), got {half!r}")
        missing = [d for d in RATE_DTYPES if d not in eff]
        if missing:  # a file fitted for some dtypes only: the others fall back, said so
            warnings.warn(f"{path}: no fused-MoE rate for {', '.join(missing)}; MoE layers computed in "
                          f"{'that dtype' if len(missing) == 1 else 'those dtypes'} are composed from the GEMM "
                          "table alone (the efficiency is skipped for them)", InputWarning, stacklevel=2)
        return cls(doc["system"], eff, fitted_on, sm, float(half))


#: the compute dtypes a fused-MoE rate is fitted for (the packaged file gives each)
RATE_DTYPES = ("bfloat16", "fp8", "w4a16")


class _Memo:
    """A :class:`KernelSet` whose GEMM and elementwise lookups are remembered: a fit
    composes the same layers at a hundred efficiencies, and only the rate changes."""

    def __init__(self, ks: KernelSet):
        self.ks, self.sheet, self._seen = ks, ks.sheet, {}

    def gemm_dtypes(self):
        return self.ks.gemm_dtypes()

    def weight_only(self, dtype):
        return self.ks.weight_only(dtype)

    def _call(self, name, *args):
        key = (name,) + tuple(np.asarray(a).tobytes() if isinstance(a, np.ndarray) else a for a in args)
        if key not in self._seen:
            self._seen[key] = getattr(self.ks, name)(*args)
        return self._seen[key]

    def gemm(self, m, n, k, dtype):
        return self._call("gemm", np.asarray(m, dtype=float), n, k, dtype)

    def elementwise(self, nbytes):
        return self._call("elementwise", np.asarray(nbytes, dtype=float))


def _log_errors(series: list[Series], ks: KernelSet, efficiency: dict | None) -> np.ndarray:
    return np.concatenate([np.log(s.composed_us(ks, efficiency) / np.asarray(s.time_us)) for s in series])


def fit_efficiency(ks: KernelSet, system: str, source: str, series: list[Series],
                   note: dict | None = None) -> FusedMoEEfficiency:
    """Per rate key (compute dtype, or :data:`mist.calibrate.kernel_profile.W4A16` for experts run
    weight-only at 4 bits), the efficiency on :data:`GRID`, and one tokens-per-expert
    half point on :data:`HALF_GRID` shared by all keys, minimising the mean absolute log
    error of the composed layer over the published times (per key for a given half
    point, then over all points; ties: the larger efficiency and the smaller half
    point, i.e. the smaller correction). Deterministic."""
    ks = _Memo(ks)
    by_dtype: dict[str, list[Series]] = {}
    for s in series:
        by_dtype.setdefault(moe_rate_key(s.dtype, ks), []).append(s)

    def shares(half: float) -> tuple[dict, float]:
        eff, total, count = {}, 0.0, 0
        for dtype, group in sorted(by_dtype.items()):
            errs = [np.abs(_log_errors(group, ks, {dtype: float(e), TOKENS_PER_EXPERT_HALF: half})) for e in GRID]
            best = min(range(len(GRID)), key=lambda i: (round(float(errs[i].mean()), 12), -GRID[i]))
            eff[dtype] = float(GRID[best])
            total, count = total + float(errs[best].sum()), count + errs[best].size
        return eff, total / max(count, 1)

    fits = [(shares(float(h)), float(h)) for h in HALF_GRID]
    (eff, _), half = min(fits, key=lambda f: (round(f[0][1], 12), f[1]))
    report = {}
    for dtype, group in sorted(by_dtype.items()):
        before = np.abs(np.expm1(_log_errors(group, ks, None))) * 100
        after = np.abs(np.expm1(_log_errors(group, ks, {dtype: eff[dtype], TOKENS_PER_EXPERT_HALF: half}))) * 100
        report[dtype] = {"series": [s.label for s in group], "points": int(after.size),
                         **({"sources": sorted({s.source.split()[0] for s in group if s.source})}
                            if any(s.source for s in group) else {}),
                         "mape_before": round(float(before.mean()), 2),
                         "mape_after": round(float(after.mean()), 2)}
    fitted_on = dict(note or {})
    fitted_on.update(source=source, by_dtype=report,
                     method="efficiency per dtype on a grid of 0.01 over (0, 1] and one tokens-per-expert "
                            "half point on a grid of 4 over [0, 64], mean |log(composed / published)|")
    return FusedMoEEfficiency(system, eff, fitted_on, ks.sheet.sm_version, half)


def for_system(path, system: str, sm_version: int | None = None) -> FusedMoEEfficiency | None:
    """The efficiency in ``path`` when it applies to ``system`` (fitted for it, or for a
    device of the same ``sm_version``), else None: a kernel's speed on one architecture
    says nothing about another's, whose engine runs other kernels."""
    eff = FusedMoEEfficiency.load(path)
    return eff if eff.applies_to(system, sm_version) else None
