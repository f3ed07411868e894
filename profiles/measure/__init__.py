"""Live measurement on this machine: ``mist profile`` and ``mist record`` as library jobs.

Imports go one way: ``settings`` (the jobs' frozen settings) ← ``grids``, ``cpus``,
``progress``, ``probe``, ``bundle_writer``, ``run_writer`` (pure Python) ← ``operators``,
``engine_steps``, ``recorder``, ``serving_steps`` (torch and vLLM, imported lazily)
← the jobs: :func:`~mist.profiles.measure.profiler.profile_machine` (operator profile
→ layer-profile bundle) and :func:`~mist.profiles.measure.recording.record_run`
(request stream → recorded run directory). ``kineto_capture`` is a stand-alone script.
"""
