"""Per-operator latency models: features, estimator, roofline fallback, artifacts."""
