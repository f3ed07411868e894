"""mist: how well does a simulator of LLM serving match reality — and how to make it match.

Every job the ``mist`` command runs is a library function here, with a frozen settings
dataclass in and a result dataclass out::

    import mist
    result = mist.validate_run(mist.ValidateSettings(
        run_dir="traces/samples/cpu-tiny-llama",
        profiles="profiles/samples/cpu-tiny-llama/fp32",
        model="traces/samples/cpu-tiny-llama/model_config.json"))
    result.metrics["e2e"]["mape"]          # per-request MAPE, %

The sub-packages follow the data flow, each importing only those to its left:
``mist.traces`` (canonical tables, readers) → ``mist.profiles`` (hardware, models,
operator profiles, live measurement) → ``mist.calibrate`` (latency models) →
``mist.replay`` (the simulation) → ``mist.validate`` (errors, reports, the ``mist`` CLI).
Names are imported on first use, so ``import mist`` itself is cheap.
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

#: public name -> module that defines it
_API = {
    # validate a recorded run; the real engine's own run-to-run spread
    "validate_run": "mist.validate.run",
    "ValidateSettings": "mist.validate.run",
    "ValidationResult": "mist.validate.run",
    "noise_floor": "mist.validate.noise",
    "NoiseSettings": "mist.validate.noise",
    "NoiseResult": "mist.validate.noise",
    # replay any request stream
    "replay_trace": "mist.replay.run",
    "ReplaySettings": "mist.replay.run",
    "ReplayResult": "mist.replay.run",
    # predict measured deployments from a kernel database
    "predict_deployments": "mist.replay.silicon",
    "SiliconSettings": "mist.replay.silicon",
    "SiliconResult": "mist.replay.silicon",
    # calibrate: per-operator latency models of a bundle; a new accelerator from K rows
    "calibrate_profiles": "mist.calibrate.bundle_job",
    "write_calibration": "mist.calibrate.bundle_job",
    "CalibrateSettings": "mist.calibrate.bundle_job",
    "CalibrationResult": "mist.calibrate.bundle_job",
    "calibrate_accelerator": "mist.calibrate.accelerator",
    "AcceleratorSettings": "mist.calibrate.accelerator",
    "AcceleratorResult": "mist.calibrate.accelerator",
    "LatencyModel": "mist.calibrate.estimator",
    # read traces and profiles into canonical tables
    "ingest": "mist.profiles.ingest",
    "IngestSettings": "mist.profiles.ingest",
    "IngestResult": "mist.profiles.ingest",
    "read_trace": "mist.traces.formats",
    "read_table": "mist.traces.io",
    "write_table": "mist.traces.io",
    # live measurement on this machine (the [record] extra)
    "record_run": "mist.profiles.measure.recording",
    "RecordSettings": "mist.profiles.measure.settings",
    "VllmSettings": "mist.profiles.measure.settings",
    "RecordResult": "mist.profiles.measure.recording",
    "profile_machine": "mist.profiles.measure.profiler",
    "write_profile": "mist.profiles.measure.profiler",
    "ProfileSettings": "mist.profiles.measure.settings",
    "MachineProfile": "mist.profiles.measure.profiler",
}

__all__ = sorted(_API)


def __getattr__(name: str):
    module = _API.get(name)
    if module is None:
        raise AttributeError(f"module 'mist' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later look-ups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_API))
