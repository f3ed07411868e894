"""Per-kernel latency regressors from kernel databases, with provenance per query.

A kernel database measures GEMMs, attention and collectives on structured grids
(``m x n x k``; ``batch x length`` per head layout; message size per GPU count)
with holes where a shape did not fit in memory; :class:`KernelSet` answers every
kernel of a device through a :class:`mist.calibrate.kernels_grid.LogGrid` per
measured family (log-log interpolation, holes filled by the local power law) and
falls back on the device's :class:`Datasheet` where nothing was measured.

Every prediction carries where it came from (:data:`SOURCES`):

``measured``   inside the grid, every surrounding grid point measured;
``filled``     inside the grid, some surrounding point filled (a hole);
``extrapolated`` outside the measured range of a feature (log-log, last segment);
``scaled``     the head layout was not measured: the nearest measured layout,
               scaled by the work ratio;
``roofline``   no measurement of the kernel at all: datasheet peak x efficiency.

Nothing is extrapolated silently: :meth:`KernelSet.tally` counts queries by
source and the ``mist silicon`` report prints the counts.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa

from mist.calibrate.kernels_grid import LogGrid
from mist.profiles.hardware import get_hardware, load_catalog
from mist.traces.errors import TraceError
from mist.traces.readers.aiconfigurator import read_system_yaml

SOURCES = ("measured", "filled", "extrapolated", "scaled", "roofline")


@dataclass
class Datasheet:
    """Figures of one device used by roofline fallbacks (SI units)."""

    name: str
    mem_bw_bytes_s: float
    peak_flops: dict  # dtype -> FLOP/s
    mem_efficiency: float = 0.8
    mem_latency_s: float = 3e-6
    link_bw_bytes_s: float = 450e9
    link_latency_s: float = 1e-5
    memory_bytes: float = 80 * 2**30
    #: CUDA compute capability as major*10 + minor (90 Hopper, 100 Blackwell): the
    #: kernels an engine picks follow it; None when the datasheet does not say
    sm_version: int | None = None

    @classmethod
    def from_aiconfigurator(cls, name: str, system: dict) -> Datasheet:
        """From an aiconfigurator ``<system>.yaml`` (``gpu:`` and ``node:`` sections)."""
        gpu, node = system.get("gpu") or {}, system.get("node") or {}

        def get(section: dict, key: str, default: float) -> float:  # null: not given
            value = section.get(key)
            return float(default if value is None else value)

        flops = {"bfloat16": get(gpu, "bfloat16_tc_flops", 0.0)}
        for key, dt in (("fp8_tc_flops", "fp8"), ("int8_tc_flops", "int8"), ("fp4_tc_flops", "fp4")):
            if gpu.get(key):
                flops[dt] = float(gpu[key])
        return cls(name=name, mem_bw_bytes_s=float(gpu["mem_bw"]), peak_flops=flops,
                   mem_efficiency=get(gpu, "mem_bw_empirical_scaling_factor", 0.8),
                   mem_latency_s=get(gpu, "mem_empirical_constant_latency", 3e-6),
                   link_bw_bytes_s=get(node, "intra_node_bw", 450e9),
                   link_latency_s=get(node, "p2p_latency", 1e-5),
                   memory_bytes=get(gpu, "mem_capacity", 80 * 2**30),
                   sm_version=int(gpu["sm_version"]) if str(gpu.get("sm_version", "")).isdigit() else None)

    def memory_s(self, nbytes) -> np.ndarray:
        """Time of a memory-bound kernel moving ``nbytes``."""
        return self.mem_latency_s + np.asarray(nbytes, dtype=float) / (self.mem_bw_bytes_s * self.mem_efficiency)


#: bytes per weight of the formats narrower than 16 bits, by :func:`base_dtype`
NARROW_BYTES = {"fp8": 1.0, "int8": 1.0, "fp4": 0.5, "int4": 0.5, "int4_wo": 0.5}


def base_dtype(dtype: str) -> str:
    """The datasheet peak a dtype's tensor cores run at: ``"fp8"`` for every fp8 variant
    (``fp8_block``), ``"fp4"`` for the 4-bit float formats (``nvfp4``, ``mxfp4``),
    ``"bfloat16"`` for 16-bit floats, else the name itself."""
    name = str(dtype)
    if name.startswith("fp8"):
        return "fp8"
    if name in ("bf16", "bfloat16", "float16", "fp16"):
        return "bfloat16"
    return "fp4" if name in ("fp4", "nvfp4", "mxfp4") else name


@dataclass
class KernelSet:
    """Latency of every kernel family of one device, from an ``operator_profile`` table.

    Parameters
    ----------
    profile : pyarrow.Table
        Rows of operators ``gemm``, ``context_attention``, ``generation_attention``,
        ``nccl_all_reduce``, ``custom_all_reduce`` (e.g. from
        :func:`mist.traces.readers.aiconfigurator.read_kernel_db`).
    sheet : Datasheet
        Roofline figures for kernels the table lacks.
    """

    profile: pa.Table
    sheet: Datasheet
    counts: Counter = field(default_factory=Counter)

    def __post_init__(self):
        df = self.profile.to_pandas()
        self._frames = {op: g for op, g in df.groupby("operator")}
        self._grids: dict = {}
        g = self._frames.get("gemm")
        self._gemm_dtypes = sorted(g["dtype"].unique()) if g is not None else []

    # -- helpers -------------------------------------------------------------
    def _count(self, family: str, src) -> None:
        for s, c in zip(*np.unique(np.asarray(src), return_counts=True)):
            self.counts[(family, str(s))] += int(c)

    def tally(self) -> dict:
        """Queries answered so far, by kernel family and source."""
        out: dict = {}
        for (fam, src), c in sorted(self.counts.items()):
            out.setdefault(fam, {})[src] = c
        return out

    def _grid(self, key, build):
        if key not in self._grids:
            self._grids[key] = build()
        return self._grids[key]

    # -- GEMM ----------------------------------------------------------------
    def gemm_dtypes(self) -> list[str]:
        return list(self._gemm_dtypes)

    def weight_only(self, dtype: str) -> bool:
        """Whether GEMMs of ``dtype`` run weight-only here: a format narrower than 16 bits
        that the database did not measure and the device has no tensor cores for, while
        bf16 GEMMs are measured. vLLM runs such checkpoints through its Marlin kernels
        (fp8 on Ampere, 4-bit formats on Ampere and Hopper): the weights are read at their
        own width, dequantised and multiplied in bf16."""
        base = base_dtype(dtype)
        have = self._gemm_dtypes
        return (dtype not in have and base in NARROW_BYTES and base not in self.sheet.peak_flops
                and "bfloat16" in have)

    def gemm(self, m, n: int, k: int, dtype: str = "bfloat16") -> np.ndarray:
        """Latency (s) of ``(m x k) @ (k x n)`` GEMMs for each ``m`` (array). A dtype run
        weight-only (:meth:`weight_only`, source ``weight-only``) takes the measured bf16
        GEMM less the time its 16-bit weights took to read beyond the narrow ones, but no
        less than its multiplications (the bf16 GEMM's time where that is compute-bound:
        FLOPs at the device's GEMM efficiency) and the memory time of the narrow weights
        and bf16 activations — it reads narrow weights at small ``m`` and multiplies as
        bf16 at large ``m``."""
        m = np.atleast_1d(np.asarray(m, dtype=float))
        frame = self._frames.get("gemm")
        if self.weight_only(dtype):
            t, _ = self._gemm_measured(frame, m, n, k, "bfloat16")
            width = NARROW_BYTES[base_dtype(dtype)]
            saved = self.sheet.memory_s(2.0 * k * n) - self.sheet.memory_s(width * k * n)
            compute = np.minimum(t, 2.0 * m * n * k / (self.sheet.peak_flops["bfloat16"] * self.gemm_efficiency()))
            self._count("gemm", np.full(len(m), "weight-only"))
            return np.maximum.reduce([t - saved, compute,
                                      self.sheet.memory_s(width * k * n + 2.0 * (m * k + m * n))])
        if dtype not in self._gemm_dtypes:
            t = self._gemm_roofline(m, n, k, dtype)
            self._count("gemm", np.full(len(m), "roofline"))
            return t
        t, src = self._gemm_measured(frame, m, n, k, dtype)
        self._count("gemm", src)
        return t

    def _gemm_measured(self, frame, m, n: int, k: int, dtype: str):
        grid = self._grid(("gemm", dtype), lambda: LogGrid(
            frame.loc[frame["dtype"] == dtype, ["m", "n", "k"]].to_numpy(float),
            frame.loc[frame["dtype"] == dtype, "latency_s"].to_numpy(float)))
        return grid.predict(np.column_stack([m, np.full(len(m), n), np.full(len(m), k)]))

    def gemm_efficiency(self) -> float:
        """Fraction of the datasheet peak the device's measured large GEMMs reach
        (median over measured compute-bound shapes, m, n, k >= 4096; 0.7 with none)."""
        if not hasattr(self, "_gemm_efficiency"):
            eff = []
            frame = self._frames.get("gemm")
            if frame is not None:
                big = frame[(frame["m"] >= 4096) & (frame["n"] >= 4096) & (frame["k"] >= 4096)]
                for dtype, part in big.groupby("dtype"):
                    peak = self.sheet.peak_flops.get(base_dtype(dtype))
                    if peak:
                        achieved = 2.0 * part["m"] * part["n"] * part["k"] / part["latency_s"]
                        eff.append(np.clip(achieved / peak, 0.05, 1.0))
            self._gemm_efficiency = float(np.median(np.concatenate(eff))) if eff else 0.7
        return self._gemm_efficiency

    def _gemm_roofline(self, m, n, k, dtype) -> np.ndarray:
        """A GEMM the database did not measure: datasheet peak of its dtype times the
        efficiency the device's measured GEMMs reach, or memory time if longer."""
        base = base_dtype(dtype)
        peak = self.sheet.peak_flops.get(base) or self.sheet.peak_flops["bfloat16"]
        width = NARROW_BYTES.get(base, 2.0)
        flops = 2.0 * m * n * k
        nbytes = width * (m * k + k * n) + 2.0 * m * n
        return np.maximum(flops / (peak * self.gemm_efficiency()), self.sheet.memory_s(nbytes))

    # -- attention -------------------------------------------------------------
    def _attention(self, op: str, feature: str, b, length, heads: int, kv_heads: int, head_dim: int,
                   kv_dtype: str) -> np.ndarray:
        b = np.atleast_1d(np.asarray(b, dtype=float))
        length = np.broadcast_to(np.asarray(length, dtype=float), b.shape)
        frame = self._frames.get(op)
        if frame is not None:
            frame = frame[frame["head_dim"] == head_dim]
            if kv_dtype in set(frame["dtype"]):
                frame = frame[frame["dtype"] == kv_dtype]
            elif len(frame):
                frame = frame[frame["dtype"] == frame["dtype"].iloc[0]]
        if frame is None or not len(frame):  # nothing measured for this head size
            t = self._attention_roofline(op, b, length, heads, kv_heads, head_dim)
            self._count(op, np.full(len(t), "roofline"))
            return t
        layouts = frame[["num_heads", "num_kv_heads"]].drop_duplicates().to_numpy()
        exact = any((h == heads and kh == kv_heads) for h, kh in layouts)
        if exact:
            h, kh, scale = heads, kv_heads, 1.0
        else:
            # nearest layout with the same query heads per KV head, then by heads;
            # attention work scales with the number of query heads
            ratio = heads / max(kv_heads, 1)
            h, kh = min(layouts, key=lambda L: (abs(np.log(L[0] / L[1] / ratio)), abs(np.log(L[0] / heads))))
            scale = heads / h
        sel = frame[(frame["num_heads"] == h) & (frame["num_kv_heads"] == kh)]
        grid = self._grid((op, h, kh, head_dim, kv_dtype), lambda: LogGrid(
            sel[["sequences", feature]].to_numpy(float), sel["latency_s"].to_numpy(float)))
        t, src = grid.predict(np.column_stack([np.maximum(b, 1), np.maximum(length, 1)]))
        if not exact:
            src = np.full(len(t), "scaled")
        self._count(op, src)
        return t * scale

    def _attention_roofline(self, op: str, b, length, heads, kv_heads, head_dim) -> np.ndarray:
        """Attention no table measured: causal score and value FLOPs for prefill, KV
        bytes read for decode, at the device's GEMM efficiency / memory bandwidth."""
        if op == "context_attention":
            flops = 2.0 * b * length * length * heads * head_dim  # QK^T and PV, causal half
            peak = self.sheet.peak_flops["bfloat16"] * self.gemm_efficiency()
            return self.sheet.mem_latency_s + flops / peak
        return self.sheet.memory_s(b * length * kv_heads * head_dim * 2 * 2)

    def context_attention(self, b, isl, heads, kv_heads, head_dim, kv_dtype="bfloat16") -> np.ndarray:
        """Prefill attention (s) of ``b`` prompts of ``isl`` tokens each, no cached prefix."""
        return self._attention("context_attention", "tokens", b, isl, heads, kv_heads, head_dim, kv_dtype)

    def generation_attention(self, b, kv, heads, kv_heads, head_dim, kv_dtype="bfloat16") -> np.ndarray:
        """Decode attention (s) of ``b`` sequences with ``kv`` cached tokens each."""
        return self._attention("generation_attention", "kv_decode", b, kv, heads, kv_heads, head_dim, kv_dtype)

    # -- collectives -----------------------------------------------------------
    def _collective(self, family: str, ops: tuple, nbytes, gpus: int, ring_share: float) -> np.ndarray:
        """The fastest measured of ``ops`` (``(operator, engine or None)``) for messages of
        ``nbytes`` over ``gpus``, else a ring over the datasheet link moving ``ring_share``
        x the message per rank."""
        nbytes = np.atleast_1d(np.asarray(nbytes, dtype=float))
        if gpus <= 1:
            return np.zeros(len(nbytes))
        best = None
        for op, engine in ops:
            frame = self._frames.get(op)
            if frame is None:
                continue
            sel = frame[(frame["tp"] == gpus) & (frame["dtype"].isin(["half", "bfloat16"]))]
            if engine is not None and "engine" in sel and (sel["engine"] == engine).any():
                sel = sel[sel["engine"] == engine]
            if not len(sel):
                continue
            grid = self._grid((op, gpus), lambda sel=sel: LogGrid(
                sel[["message_bytes"]].to_numpy(float), sel["latency_s"].to_numpy(float)))
            t, src = grid.predict(np.maximum(nbytes, 1)[:, None])
            if best is None:
                best, best_src = t, src
            else:
                take = t < best
                best = np.where(take, t, best)
                best_src = np.where(take, src, best_src)
        if best is None:
            best = self.sheet.link_latency_s + ring_share * (gpus - 1) / gpus * nbytes / self.sheet.link_bw_bytes_s
            best_src = np.full(len(nbytes), "roofline")
        self._count(family, best_src)
        return best

    def all_reduce(self, nbytes, gpus: int) -> np.ndarray:
        """TP all-reduce time (s) of ``nbytes`` over ``gpus``: the faster of vLLM's custom
        all-reduce (CUDA-graph variant) and NCCL where measured, else a ring over the link."""
        return self._collective("all_reduce", (("custom_all_reduce", "vllm_graph"), ("nccl_all_reduce", None)),
                                nbytes, gpus, 2.0)

    def all_gather(self, nbytes, gpus: int) -> np.ndarray:
        """NCCL all-gather time (s) of a tensor of ``nbytes`` in all (nccl-tests' size: the
        gathered output), ``1/gpus`` of it from each rank, else a ring over the link."""
        return self._collective("all_gather", (("nccl_all_gather", None),), nbytes, gpus, 1.0)

    # -- memory-bound elementwise kernels ------------------------------------------
    def elementwise(self, nbytes) -> np.ndarray:
        """A memory-bound kernel (norm, activation, rotary, sampling) moving ``nbytes``."""
        nbytes = np.atleast_1d(np.asarray(nbytes, dtype=float))
        self._count("elementwise", np.full(len(nbytes), "roofline"))
        return self.sheet.memory_s(nbytes)


def system_datasheet(kernels_dir, system: str, catalogs=()) -> tuple[Datasheet, str]:
    """The datasheet of a kernel database's system, and where it came from.

    The aiconfigurator ``<folder>.yaml`` beside the kernel folder when there is one,
    else the device named ``system`` in the hardware catalog (plus ``catalogs``: extra
    catalog files, read and checked even when the YAML is found).

    Raises
    ------
    TraceError
        Neither a YAML beside the folder nor a catalogued device of that name.
    """
    kernels_dir = Path(kernels_dir)
    catalog = load_catalog(extra=catalogs) if catalogs else None  # read (and checked) even when unused
    sheet = read_system_yaml(kernels_dir)
    if sheet is not None:
        return Datasheet.from_aiconfigurator(system, sheet), f"{kernels_dir.name}.yaml beside the kernels"
    try:
        hw = get_hardware(system, catalog)
    except KeyError:
        raise TraceError(kernels_dir, f"no datasheet: neither {kernels_dir.name}.yaml beside the folder "
                                      f"nor a catalogued device named {system!r} (give one with "
                                      "--hardware FILE)") from None
    flops = {("bfloat16" if k == "bf16" else k): v for k, v in hw.peak_flops.items()}
    return Datasheet(name=system, mem_bw_bytes_s=hw.memory_bw_bytes_s, peak_flops=flops,
                     link_bw_bytes_s=hw.interconnect_bw_bytes_s or 64e9, memory_bytes=hw.memory_bytes,
                     sm_version=hw.sm_version), f"hardware catalog: {hw.name}"
