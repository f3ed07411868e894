"""Capture a small, real PyTorch-profiler (Kineto) trace of a tiny Llama-like block.

Run with a Python that has torch (e.g. the vLLM CPU venv)::

    /work/vllm-venv/bin/python profiles/measure/kineto_capture.py \\
        --out traces/samples/kineto/cpu-mlp.json

One decoder block of ``profiles/samples/tiny-llama.json``'s shapes (hidden 512, 8
query / 2 KV heads of 64, intermediate 1408, float32, random weights) runs on one
CPU thread for a few token counts: RMSNorm, a qkv projection with a bias (as in
Qwen2, so the trace has ``aten::addmm``), causal attention with explicit
``torch.bmm``/``torch.matmul``, an ``o_proj`` through ``torch.mm``, and the SiLU-gated
MLP. Each shape is warmed up, then run ``--repeats`` times under
``torch.profiler.profile(record_shapes=True)`` and exported with
``export_chrome_trace``. To keep the file small, ``cpu_op`` events of pure view and
allocation ops are dropped (:data:`KEEP` lists the ops kept); every kept event is
written as Kineto wrote it. Top-level metadata added with ``prof.add_metadata``
names the hardware (``CPU``; the CPU model under ``device``), model and torch version,
which :mod:`mist.traces.readers.kineto` reads.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
from pathlib import Path

from mist.traces.io import atomic_write_text

CONFIG = Path(__file__).resolve().parents[1] / "samples" / "tiny-llama.json"

# cpu_op events kept in the sample: GEMM-like ops and the block's arithmetic.
KEEP = frozenset({
    "aten::linear", "aten::matmul", "aten::mm", "aten::addmm", "aten::bmm",
    "aten::mul", "aten::add", "aten::pow", "aten::mean", "aten::rsqrt",
    "aten::silu", "aten::softmax", "aten::repeat_interleave",
})  # fmt: skip


def make_block(cfg: dict, seed: int = 0):
    """A decoder-block function ``x (tokens, hidden) -> (tokens, hidden)`` with random weights."""
    import torch
    import torch.nn.functional as F

    h, inter = cfg["hidden_size"], cfg["intermediate_size"]
    nh, nkv = cfg["num_attention_heads"], cfg["num_key_value_heads"]
    d = cfg.get("head_dim") or h // nh
    g = torch.Generator().manual_seed(seed)
    shapes = {"qkv": ((nh + 2 * nkv) * d, h), "qkv_bias": ((nh + 2 * nkv) * d,),
              "o": (h, nh * d), "gate_up": (2 * inter, h), "down": (h, inter), "norm": (h,)}  # fmt: skip
    w = {k: torch.randn(s, generator=g) * 0.02 for k, s in shapes.items()}

    def rms_norm(x):
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + cfg["rms_norm_eps"]) * w["norm"]

    def block(x):
        t = x.shape[0]
        qkv = F.linear(rms_norm(x), w["qkv"], w["qkv_bias"])
        q, k, v = qkv.split([nh * d, nkv * d, nkv * d], dim=-1)
        q = q.view(t, nh, d).transpose(0, 1)
        k = k.view(t, nkv, d).transpose(0, 1).repeat_interleave(nh // nkv, 0)
        v = v.view(t, nkv, d).transpose(0, 1).repeat_interleave(nh // nkv, 0)
        scores = torch.bmm(q, k.transpose(1, 2)) * d**-0.5
        mask = torch.full((t, t), float("-inf")).triu(1)
        attn = torch.matmul(torch.softmax(scores + mask, dim=-1), v)
        x = x + torch.mm(attn.transpose(0, 1).reshape(t, nh * d), w["o"].t())
        gate, up = torch.matmul(rms_norm(x), w["gate_up"].t()).chunk(2, dim=-1)
        return x + F.linear(F.silu(gate) * up, w["down"])

    return block


def capture(cfg: dict, tokens: list[int], repeats: int) -> dict:
    """Profile the block at each token count; return the trimmed chrome-trace object."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    from mist.profiles.measure.profiler import cpu_model_name

    torch.set_num_threads(1)
    block = make_block(cfg)
    g = torch.Generator().manual_seed(1)
    inputs = [torch.randn(t, cfg["hidden_size"], generator=g) for t in tokens]
    with torch.inference_mode():
        for x in inputs:
            block(x)  # warm-up: allocator, oneDNN primitive cache
        with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
            for x in inputs:
                for _ in range(repeats):
                    block(x)
            meta = {"hardware": "CPU", "device": cpu_model_name(),
                    "model": cfg.get("_name_or_path", "tiny-llama"),
                    "engine": "torch", "engine_version": torch.__version__, "threads": "1"}  # fmt: skip
            for key, value in meta.items():
                prof.add_metadata(key, value)
    with tempfile.TemporaryDirectory() as tmp:
        raw = Path(tmp) / "trace.json"
        prof.export_chrome_trace(str(raw))
        trace = json.loads(raw.read_text())
    trace["traceEvents"] = [
        e for e in trace["traceEvents"] if e.get("cat") != "cpu_op" or e.get("name") in KEEP
    ]
    trace.pop("traceName", None)  # the temporary path, meaningless in the sample
    return trace


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, type=Path, help="chrome-trace JSON to write")
    parser.add_argument("--config", type=Path, default=CONFIG, help="Hugging Face config.json")
    parser.add_argument("--tokens", type=int, nargs="+", default=[8, 32, 128])
    parser.add_argument("--repeats", type=int, default=5, help="profiled runs per token count")
    args = parser.parse_args(argv)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    cfg = json.loads(args.config.read_text())
    trace = capture(cfg, args.tokens, args.repeats)
    atomic_write_text(args.out, json.dumps(trace, separators=(",", ":")) + "\n")
    events = sum(e.get("cat") == "cpu_op" for e in trace["traceEvents"])
    print(f"wrote {args.out}: {events} cpu_op events, {args.out.stat().st_size} bytes")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
