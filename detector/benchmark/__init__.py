"""Benchmarks of the decoder and the whole model: the operating points (:mod:`.decoder`) and the GPU
suite (:mod:`.gpu_suite`); ``tools/benchmark.py`` runs them."""
