"""Canonical Arrow tables of LLM-serving traces, their readers and Parquet I/O."""
