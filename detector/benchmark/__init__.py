"""Benchmarks and device checks, run by ``tools/benchmark.py`` and ``tools/cuda_check.py``.

:mod:`.timing` (the one timing helper), :mod:`.decoder` (operating points and inputs),
:mod:`.candidates` (kernels considered), :mod:`.workers` and :mod:`.cpu_suite` (one process per
measurement, and the tables), :mod:`.gpu_suite` (one process, the GPU's operating points),
:mod:`.cuda_check` (GPU smoke checks).
"""
