"""The one timing helper of the benchmarks: :func:`measure`, used by every CPU worker and the GPU suite.

Memory, per device, in MB:

* **CUDA**: ``peak_mb`` is ``torch.cuda.max_memory_allocated`` during the timed runs (the peak
  statistics are reset after the warm-up); ``rise_mb`` is that peak above what was allocated after
  the warm-up, i.e. what the step itself holds at its largest.
* **CPU**: ``peak_mb`` is the process's resident-set high-water mark (``ru_maxrss``), which cannot
  be reset, so it covers the warm-up too; ``rise_mb`` is that mark above the RSS measured before
  the warm-up (imports, model and inputs already built). :func:`tensor_peak_mb` is the optional
  finer measure: the tensors' own peak from the profiler's memory events.
"""
from __future__ import annotations

import resource
import statistics
import time
from typing import Callable, Optional


def sync(device) -> None:
    """Wait for the device's queued work (a no-op on the CPU)."""
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux reports KiB


def measure(step: Callable[[], object], device, warmup: int, iters: int) -> dict:
    """Run ``step`` ``warmup`` times, then time it ``iters`` times (synchronised on CUDA).

    Returns ``times_s`` (the timed runs), ``median_s``, ``min_s``, ``peak_mb`` and ``rise_mb`` (see
    the module docstring for what the memory numbers mean on each device).
    """
    import torch

    cuda = device.type == "cuda"
    rss_before = _rss_mb()
    for _ in range(warmup):
        step()
    sync(device)
    if cuda:
        allocated = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
    times = []
    for _ in range(iters):
        t0 = time.perf_counter()
        step()
        sync(device)
        times.append(time.perf_counter() - t0)
    if cuda:
        peak = torch.cuda.max_memory_allocated(device) / 2**20
        rise = peak - allocated / 2**20
    else:
        peak = _rss_mb()
        rise = peak - rss_before
    return {"times_s": times, "median_s": statistics.median(times), "min_s": min(times),
            "peak_mb": peak, "rise_mb": rise}


def tensor_peak_mb(step: Callable[[], object]) -> Optional[float]:
    """Peak of the tensor memory allocated (net of frees) during one ``step``, from the torch
    profiler's memory events: what the computation itself holds, without the allocator's overhead
    or the process's libraries. ``None`` where the profiler does not expose the events."""
    from torch.profiler import ProfilerActivity, profile

    try:
        with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
            step()
        events = [e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"]
    except (AttributeError, RuntimeError):
        return None
    live = peak = 0
    for e in sorted(events, key=lambda e: e.start_ns()):
        live += e.nbytes()
        peak = max(peak, live)
    return peak / 2**20
