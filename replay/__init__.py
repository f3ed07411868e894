"""Event-driven replay: event loop, vLLM-like scheduler, KV cache, cost model."""
