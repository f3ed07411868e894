"""Live measurement on this machine: speed probe, operator profiler, engine-step capture, recorder, bundle writer."""
