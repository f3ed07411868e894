"""Synthetic request streams in the ``workload-jsonl`` format.

Each record is ``{"input_toks", "output_toks", "arrival_time_ns", "input_tok_ids"}``
(tokens; ns from the start of the stream, first arrival at 0), exactly what
:mod:`mist.traces.readers.streams` reads and ``mist record`` replays.

Arrivals (:data:`ARRIVALS`)
    ``poisson``: exponential inter-arrival times of mean ``1/rate`` s.
    ``gamma``: gamma inter-arrival times of mean ``1/rate`` s and shape
    ``burstiness`` (vLLM's convention: 1 is Poisson, below 1 burstier, above 1
    more regular).
Lengths (:data:`LENGTHS`), for the input and the output separately
    ``fixed``: always ``mean``. ``uniform``: integers in ``[mean*(1-spread),
    mean*(1+spread)]``. ``lognormal``: median ``mean``, log-space sigma ``spread``.
    Draws are rounded and floored at the smallest valid length (1 output token;
    ``prefix + 1`` input tokens) — a generator choice, documented, not a reading.
Prefix
    ``prefix`` > 0 makes the first ``prefix`` token ids of every prompt identical
    (one shared "system prompt", for prefix caching); ``input_toks`` counts them.

Everything random comes from one ``numpy.random.Generator`` made from ``seed`` in
each call, so the same arguments give a byte-identical file.
"""

from __future__ import annotations

import json

import numpy as np

from mist.traces.errors import TraceError
from mist.traces.io import atomic_write_text


def _poisson(rng: np.random.Generator, n: int, rate: float, burstiness: float) -> np.ndarray:
    return rng.exponential(1.0 / rate, size=n)


def _gamma(rng: np.random.Generator, n: int, rate: float, burstiness: float) -> np.ndarray:
    return rng.gamma(shape=burstiness, scale=1.0 / (rate * burstiness), size=n)


def _fixed(rng: np.random.Generator, n: int, mean: float, spread: float) -> np.ndarray:
    return np.full(n, mean, dtype=np.float64)


def _uniform(rng: np.random.Generator, n: int, mean: float, spread: float) -> np.ndarray:
    lo, hi = round(mean * (1 - spread)), round(mean * (1 + spread))
    return rng.integers(lo, hi + 1, size=n).astype(np.float64)


def _lognormal(rng: np.random.Generator, n: int, mean: float, spread: float) -> np.ndarray:
    return rng.lognormal(np.log(mean), spread, size=n)


ARRIVALS = {"poisson": _poisson, "gamma": _gamma}
LENGTHS = {"fixed": _fixed, "uniform": _uniform, "lognormal": _lognormal}


def _check(n, rate, burstiness, input_len, output_len, prefix, vocab_size, dists) -> None:
    if n < 1 or rate <= 0 or burstiness <= 0:
        raise ValueError(f"need n >= 1, rate > 0 and burstiness > 0 (got {n}, {rate}, {burstiness})")
    if input_len < 1 or output_len < 1 or vocab_size < 2 or prefix < 0:
        raise ValueError(
            f"need input_len, output_len >= 1, vocab_size >= 2, prefix >= 0 "
            f"(got {input_len}, {output_len}, {vocab_size}, {prefix})"
        )
    if prefix >= input_len:
        raise ValueError(f"prefix ({prefix}) must be shorter than input_len ({input_len})")
    for d in dists:
        if d not in LENGTHS:
            raise ValueError(f"unknown length distribution {d!r}; known: {', '.join(LENGTHS)}")


def generate(
    n: int,
    rate: float,
    *,
    arrival: str = "poisson",
    burstiness: float = 1.0,
    input_len: int = 256,
    output_len: int = 64,
    input_dist: str = "fixed",
    output_dist: str = "fixed",
    input_spread: float = 0.0,
    output_spread: float = 0.0,
    prefix: int = 0,
    vocab_size: int = 32000,
    seed: int = 0,
) -> list[dict]:
    """A request stream of ``n`` records (see the module docstring).

    Parameters
    ----------
    n, rate : int, float
        Number of requests; their mean arrival rate, requests/s.
    arrival : {"poisson", "gamma"}
        Inter-arrival law; ``burstiness`` is the gamma shape (ignored by poisson).
    input_len, output_len : int
        Mean (fixed, uniform) or median (lognormal) prompt / output length, tokens.
    input_dist, output_dist : {"fixed", "uniform", "lognormal"}
        Length distributions; ``*_spread`` is the relative half-width (uniform) or
        the log-space sigma (lognormal).
    prefix : int
        Tokens of a prompt prefix shared by every request (0: none).
    vocab_size : int
        Token ids are drawn uniformly from ``[0, vocab_size)``.
    seed : int
        Seed of the call's random generator.

    Returns
    -------
    list of dict
        Records in arrival order, first ``arrival_time_ns`` = 0.

    Raises
    ------
    ValueError
        Unknown law or distribution, or a non-positive size, rate or length.
    """
    if arrival not in ARRIVALS:
        raise ValueError(f"unknown arrival law {arrival!r}; known: {', '.join(ARRIVALS)}")
    _check(n, rate, burstiness, input_len, output_len, prefix, vocab_size, (input_dist, output_dist))
    rng = np.random.default_rng(seed)
    gaps = ARRIVALS[arrival](rng, n, rate, burstiness)
    # The first request arrives at 0; the stream then spans n-1 gaps.
    arrival_s = np.concatenate(([0.0], np.cumsum(gaps[:-1])))
    arrival_ns = np.round(arrival_s * 1e9).astype(np.int64)
    ins = LENGTHS[input_dist](rng, n, input_len, input_spread)
    outs = LENGTHS[output_dist](rng, n, output_len, output_spread)
    ins = np.maximum(np.round(ins), prefix + 1).astype(np.int64)
    outs = np.maximum(np.round(outs), 1).astype(np.int64)
    return _records(rng, arrival_ns, ins, outs, prefix, vocab_size)


def _records(rng: np.random.Generator, arrival_ns: np.ndarray, ins: np.ndarray, outs: np.ndarray,
             prefix: int, vocab_size: int) -> list[dict]:
    """Workload records with token ids drawn from ``rng``: the shared prefix, then each
    prompt's own ids in request order (the order fixes the file for a seed)."""
    shared = rng.integers(0, vocab_size, size=prefix).tolist()
    records = []
    for i in range(len(ins)):
        own = rng.integers(0, vocab_size, size=int(ins[i]) - prefix).tolist()
        records.append({"input_toks": int(ins[i]), "output_toks": int(outs[i]),
                        "arrival_time_ns": int(arrival_ns[i]), "input_tok_ids": shared + own})
    return records


def write_workload(path, records: list[dict]) -> None:
    """Write ``records`` as workload JSONL to ``path``, atomically (one object per line)."""
    atomic_write_text(path, "".join(json.dumps(r, separators=(", ", ": ")) + "\n" for r in records))


# --generate SPEC keys -> generate() keyword and type.
SPEC_KEYS = {
    "n": ("n", int), "rate": ("rate", float), "burst": ("burstiness", float),
    "in": ("input_len", int), "out": ("output_len", int),
    "in_dist": ("input_dist", str), "out_dist": ("output_dist", str),
    "in_spread": ("input_spread", float), "out_spread": ("output_spread", float),
    "prefix": ("prefix", int), "vocab": ("vocab_size", int), "seed": ("seed", int),
}  # fmt: skip
SPEC_HELP = (
    "LAW:key=value,... with LAW poisson or gamma and keys n (requests), rate (req/s), "
    "burst (gamma shape; <1 burstier), in/out (mean tokens), in_dist/out_dist "
    "(fixed|uniform|lognormal), in_spread/out_spread, prefix (shared prompt tokens), "
    "vocab, seed; e.g. poisson:n=60,rate=1.5,in=256,out=64,prefix=0"
)


def parse_spec(spec: str) -> dict:
    """Keyword arguments of :func:`generate` from a ``LAW:key=value,...`` spec.

    ``n`` and ``rate`` are required; see :data:`SPEC_HELP` for the keys.

    Raises
    ------
    TraceError
        Unknown law or key, a value of the wrong type, or ``n``/``rate`` missing.
    """
    law, _, rest = spec.partition(":")
    if law not in ARRIVALS:
        raise TraceError("--generate", f"unknown arrival law {law!r} in {spec!r}; {SPEC_HELP}")
    kwargs: dict = {"arrival": law}
    for item in filter(None, rest.split(",")):
        key, eq, value = item.partition("=")
        if not eq or key.strip() not in SPEC_KEYS:
            raise TraceError("--generate", f"bad item {item!r}; known keys: {', '.join(SPEC_KEYS)}")
        name, kind = SPEC_KEYS[key.strip()]
        try:
            kwargs[name] = kind(value.strip())
        except ValueError as exc:
            raise TraceError("--generate", f"{key}={value!r} is not a {kind.__name__}") from exc
    missing = [k for k in ("n", "rate") if k not in kwargs]
    if missing:
        raise TraceError("--generate", f"spec {spec!r} lacks {missing}; {SPEC_HELP}")
    return kwargs
