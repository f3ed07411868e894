"""Hardware datasheet catalog: each device is a data entry in ``hardware.yaml``.

Adding a device means adding a YAML entry, never a class.  The YAML keeps datasheet
units (TFLOP/s, GB, GB/s); :class:`Hardware` holds SI units (FLOP/s, bytes, bytes/s).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from mist.traces.errors import TraceError

DEFAULT_CATALOG = Path(__file__).with_name("hardware.yaml")

KINDS = ("gpu", "cpu", "asic")
#: dtypes a ``peak_tflops`` table may name.
PEAK_DTYPES = ("fp64", "fp32", "tf32", "bf16", "fp16", "fp8", "int8", "fp4", "int4")
#: other spellings of those dtypes, for :meth:`Hardware.peak`.
_DTYPE_ALIASES = {
    "float64": "fp64",
    "float32": "fp32",
    "float": "fp32",
    "bfloat16": "bf16",
    "float16": "fp16",
    "half": "fp16",
    "auto": "bf16",
    "float8": "fp8",
    "float8_e4m3fn": "fp8",
    "float8_e5m2": "fp8",
    "e4m3": "fp8",
    "nvfp4": "fp4",
    "mxfp4": "fp4",
}
_KNOWN_KEYS = {
    "full_name",
    "aliases",
    "vendor",
    "kind",
    "architecture",
    "peak_tflops",
    "memory_gb",
    "memory_gib",
    "memory_bw_gbps",
    "interconnect",
    "tdp_w",
    "price_per_hour_usd",
    "price_source",
    "source",
}


@dataclass(frozen=True)
class Hardware:
    """Datasheet figures of one device.

    Attributes
    ----------
    name : str
        Catalog key, e.g. ``"RTXPRO6000"``.
    vendor, kind : str
        ``kind`` is ``"gpu"``, ``"cpu"`` or ``"asic"``.
    peak_flops : dict[str, float]
        Dense peak FLOP/s (OP/s for integer dtypes) by dtype: ``"bf16"``, ``"fp8"`` …
    memory_bytes : float
        Device memory, bytes.
    memory_bw_bytes_s : float
        Memory bandwidth, bytes/s.
    interconnect_bw_bytes_s : float or None
        Device-to-device link bandwidth, bytes/s in one direction; None when the vendor
        publishes no figure (the YAML entry then has no ``interconnect``).
    tdp_w : float or None
        Board power, W.
    price_per_hour_usd : float or None
        On-demand price of one device for one hour, USD.
    sources : dict[str, str]
        ``"datasheet"`` and ``"price"``: where the figures come from.
    full_name, aliases, interconnect : str, tuple of str, str
        Marketing name, other names :func:`get_hardware` accepts, link name.
    architecture : str
        As the catalog states it, e.g. ``"Hopper (GH100, sm_90)"``.
    """

    name: str
    vendor: str
    kind: str
    peak_flops: dict[str, float]
    memory_bytes: float
    memory_bw_bytes_s: float
    interconnect_bw_bytes_s: float | None
    tdp_w: float | None
    price_per_hour_usd: float | None
    sources: dict[str, str]
    full_name: str = ""
    aliases: tuple[str, ...] = field(default=())
    interconnect: str = ""
    architecture: str = ""

    @property
    def sm_version(self) -> int | None:
        """CUDA compute capability (major*10 + minor) when the architecture names one."""
        m = re.search(r"\bsm_(\d+)", self.architecture)
        return int(m.group(1)) if m else None

    def peak(self, dtype: str) -> float:
        """Dense peak FLOP/s for ``dtype`` (``"bfloat16"``, ``"bf16"``, ``"auto"`` …).

        Raises
        ------
        KeyError
            When the datasheet gives no figure for that dtype.
        """
        key = str(dtype).strip().lower().removeprefix("torch.")
        key = _DTYPE_ALIASES.get(key, key)
        if key not in self.peak_flops:
            raise KeyError(f"{self.name} has no peak for {dtype!r}; has {sorted(self.peak_flops)}")
        return self.peak_flops[key]


def _norm(name: str) -> str:
    """Lookup key: case-folded, spaces/dashes/underscores/dots dropped."""
    return re.sub(r"[^0-9a-z]", "", str(name).casefold())


#: ceiling of every datasheet figure in its YAML unit (TFLOP/s, GB, GB/s, W, USD/h): a
#: thousand times a wafer-scale engine's, low enough that SI conversions stay finite
DATASHEET_MAX = 1e9


def _number(entry: dict, key: str, path, dev: str, *, optional: bool = False) -> float | None:
    value = entry.get(key)
    if value is None:
        if optional:
            return None
        raise TraceError(path, f"device {dev!r}: missing field {key!r}")
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, float))
        or not math.isfinite(value)
        or value <= 0
    ):
        raise TraceError(
            path, f"device {dev!r}: field {key!r} must be a positive number, got {value!r}"
        )
    if value > DATASHEET_MAX:
        raise TraceError(path, f"device {dev!r}: field {key!r} must be at most {DATASHEET_MAX:g} "
                               f"(a physical ceiling), got {value!r}")
    return float(value)


def _text(entry: dict, key: str, path, dev: str) -> str:
    value = entry.get(key)
    if not isinstance(value, str) or not value.strip():
        raise TraceError(
            path, f"device {dev!r}: field {key!r} must be a non-empty string, got {value!r}"
        )
    return value.strip()


def _peaks(entry: dict, path, dev: str) -> dict[str, float]:
    table = entry.get("peak_tflops")
    if not isinstance(table, dict) or not table:
        raise TraceError(path, f"device {dev!r}: field 'peak_tflops' must be a non-empty mapping")
    unknown = sorted(set(table) - set(PEAK_DTYPES))
    if unknown:
        raise TraceError(
            path,
            f"device {dev!r}: field 'peak_tflops' has unknown dtype(s) {unknown}; known {PEAK_DTYPES}",
        )
    return {k: _number(table, k, path, f"{dev}.peak_tflops") * 1e12 for k in table}


def _memory_bytes(entry: dict, path, dev: str) -> float:
    given = [k for k in ("memory_gb", "memory_gib") if k in entry]
    if len(given) != 1:
        raise TraceError(
            path, f"device {dev!r}: give exactly one of 'memory_gb' or 'memory_gib', got {given}"
        )
    scale = 1e9 if given[0] == "memory_gb" else 2.0**30
    return _number(entry, given[0], path, dev) * scale


def _interconnect(entry: dict, path, dev: str) -> tuple[str, float | None]:
    link = entry.get("interconnect")
    if link is None:  # not published (e.g. SambaNova's RDU-to-RDU links): say so, never guess
        return "", None
    if not isinstance(link, dict):
        raise TraceError(
            path,
            f"device {dev!r}: field 'interconnect' must be a mapping with 'name' and 'bw_gbps_per_direction'",
        )
    name = _text(link, "name", path, f"{dev}.interconnect")
    return name, _number(link, "bw_gbps_per_direction", path, f"{dev}.interconnect") * 1e9


def _parse_device(dev: str, entry, path) -> Hardware:
    if not isinstance(entry, dict):
        raise TraceError(
            path, f"device {dev!r}: entry must be a mapping, got {type(entry).__name__}"
        )
    unknown = sorted(set(entry) - _KNOWN_KEYS)
    if unknown:
        raise TraceError(path, f"device {dev!r}: unknown field(s) {unknown}")
    kind = _text(entry, "kind", path, dev)
    if kind not in KINDS:
        raise TraceError(path, f"device {dev!r}: field 'kind' must be one of {KINDS}, got {kind!r}")
    price = _number(entry, "price_per_hour_usd", path, dev, optional=True)
    sources = {"datasheet": _text(entry, "source", path, dev)}
    if price is not None:
        sources["price"] = _text(entry, "price_source", path, dev)
    aliases = entry.get("aliases") or []
    if not isinstance(aliases, list) or not all(isinstance(a, str) and a.strip() for a in aliases):
        raise TraceError(path, f"device {dev!r}: field 'aliases' must be a list of names")
    link_name, link_bw = _interconnect(entry, path, dev)
    return Hardware(
        name=dev,
        vendor=_text(entry, "vendor", path, dev),
        kind=kind,
        peak_flops=_peaks(entry, path, dev),
        memory_bytes=_memory_bytes(entry, path, dev),
        memory_bw_bytes_s=_number(entry, "memory_bw_gbps", path, dev) * 1e9,
        interconnect_bw_bytes_s=link_bw,
        tdp_w=_number(entry, "tdp_w", path, dev, optional=True),
        price_per_hour_usd=price,
        sources=sources,
        full_name=str(entry.get("full_name") or ""),
        aliases=tuple(a.strip() for a in aliases),
        interconnect=link_name,
        architecture=str(entry.get("architecture") or ""),
    )


def _check_names(catalog: dict[str, Hardware], path) -> None:
    owner: dict[str, str] = {}
    for hw in catalog.values():
        for name in {hw.name, hw.full_name, *hw.aliases} - {""}:
            key = _norm(name)
            if owner.setdefault(key, hw.name) != hw.name:
                raise TraceError(
                    path, f"device {hw.name!r}: name {name!r} already belongs to {owner[key]!r}"
                )


def load_catalog(path=None, extra=()) -> dict[str, Hardware]:
    """Read and validate a hardware catalog.

    Parameters
    ----------
    path : str or Path, optional
        YAML file with a top-level ``devices:`` mapping; default the packaged
        ``profiles/hardware.yaml``.
    extra : iterable of str or Path, optional
        More catalogs in the same format (a user's own devices), read in order: an
        entry whose key is already known replaces that device, any other is added.

    Returns
    -------
    dict[str, Hardware]
        By catalog key, in file order.

    Raises
    ------
    TraceError
        Naming the file, the device and the field: missing or non-positive numbers,
        unknown fields or dtypes, a price without ``price_source``, clashing aliases.
    """
    path = Path(path) if path is not None else DEFAULT_CATALOG
    catalog = _read_catalog(path)
    for more in extra:
        catalog.update(_read_catalog(Path(more)))
        _check_names(catalog, more)
    return catalog


def _read_catalog(path: Path) -> dict[str, Hardware]:
    try:
        doc = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        raise TraceError(path, f"cannot read hardware catalog: {exc}") from exc
    except RecursionError as exc:
        raise TraceError(path, "cannot read hardware catalog: YAML nested too deeply") from exc
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        reason = " ".join(str(exc).split())  # one line: PyYAML's messages span several
        raise TraceError(path, f"not valid YAML: {reason}", line=mark.line + 1 if mark else None) from exc
    devices = doc.get("devices") if isinstance(doc, dict) else None
    if not isinstance(devices, dict) or not devices:
        raise TraceError(path, "expected a top-level 'devices:' mapping of device name -> entry")
    catalog = {str(dev): _parse_device(str(dev), entry, path) for dev, entry in devices.items()}
    _check_names(catalog, path)
    return catalog


def get_hardware(name: str, catalog: dict[str, Hardware] | None = None) -> Hardware:
    """Look a device up by catalog key, full name or alias.

    Matching ignores case, spaces, dashes, underscores and dots, so ``"h100_sxm"``,
    ``"H100 SXM"`` and ``"NVIDIA RTX PRO 6000 Blackwell Server Edition"`` all resolve.

    Parameters
    ----------
    name : str
        Name to look up.
    catalog : dict[str, Hardware], optional
        From :func:`load_catalog`; default the packaged catalog (read on each call).

    Raises
    ------
    KeyError
        Listing the known catalog keys when nothing matches.
    """
    catalog = load_catalog() if catalog is None else catalog
    key = _norm(name)
    for hw in catalog.values():
        if key in {_norm(n) for n in (hw.name, hw.full_name, *hw.aliases) if n}:
            return hw
    # then without vendor and generic words ("Nvidia H200 GPU" is the H200's "NVIDIA
    # H200"), when exactly one device answers to it
    core = _core(name)
    found = [hw for hw in catalog.values()
             if core and core in {_core(n) for n in (hw.name, hw.full_name, *hw.aliases) if n}]
    if len(found) == 1:
        return found[0]
    raise KeyError(f"unknown hardware {name!r}; known: {', '.join(catalog)}")


#: words a benchmark's hardware name may add around a device's own name
GENERIC_WORDS = frozenset({"nvidia", "amd", "intel", "habana", "gpu", "gpus", "accelerator", "instinct",
                           "tesla", "the"})


def _core(name: str) -> str:
    """A device name without vendor and generic words, normalised as :func:`_norm`."""
    words = re.split(r"[\s_\-./()]+", str(name).casefold())
    return "".join(w for w in words if w and w not in GENERIC_WORDS)
