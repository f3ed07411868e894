"""Measured-vs-simulated alignment, error metrics, reports, baselines and the `mist` CLI."""
