"""mist: how well does a simulator of LLM serving match reality — and how to make it match.

The package's sub-packages follow the data flow, each importing only those to its left:
``mist.traces`` (canonical tables, readers) → ``mist.profiles`` (hardware, models,
operator profiles, live measurement) → ``mist.calibrate`` (latency models) →
``mist.replay`` (the simulation) → ``mist.validate`` (errors, reports, the ``mist`` CLI).
"""

from __future__ import annotations

__version__ = "0.1.0"
