"""The process-per-measurement suites (``decoder``, ``model``, ``backbone``, ``candidates``, ``cross``): the
parent side, which starts :mod:`.workers` processes, pools their runs and writes the tables.

Times are medians over the timed runs of all processes of a configuration; memory is the largest
over its processes (what ``peak`` and ``rise`` mean on each device: :mod:`.timing`). Achieved
GFLOP/s use the model FLOPs of the straightforward computation
(:func:`detector.benchmark.decoder.decoder_flops`, backward = 2x forward) for every kernel, against
the measured peak of one large matmul on the same threads.
"""
from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
from dataclasses import dataclass, field
from typing import Callable

from .decoder import POINTS

SUITES = ("decoder", "model", "backbone", "candidates", "kernels", "cross")
_PACKAGE_PARENT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@dataclass
class SuiteOptions:
    """What one run of the CPU suites measures and how often."""

    device: str = "cpu"
    suites: tuple = ("decoder", "model")
    impls: tuple = ("reference", "fused")  # the first is the baseline of the ratio tables, the last the fast one
    points: tuple = tuple(POINTS)
    candidates: tuple = ()
    cross_configs: tuple = ()  # config files whose training step the cross suite times with each cross step
    warmup: int = 1
    iters: int = 3
    repeats: int = 1  # processes per configuration, interleaved across kernels
    threads: int = 1
    timeout: float = 1800.0  # seconds per worker
    results: list = field(default_factory=list)  # every worker's result, in order


def launch(spec: dict, timeout: float) -> dict:
    """One worker process (``python -m detector.benchmark.workers SPEC``) -> its JSON result, or the
    spec with ``error`` (its last stderr line, or the timeout). Runs from any working directory,
    whether the package is installed or in a checkout."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (_PACKAGE_PARENT, env.get("PYTHONPATH", "")) if p)
    cmd = [sys.executable, "-m", "detector.benchmark.workers", json.dumps(spec)]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
    except subprocess.TimeoutExpired:
        return {**spec, "error": f"timed out after {timeout:.0f} s"}
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if proc.returncode != 0 or not lines:
        return {**spec, "error": (proc.stderr.strip().splitlines() or ["no output"])[-1]}
    return json.loads(lines[-1])


def merge(results: list[dict], keys: tuple) -> list[dict]:
    """One result per configuration (the values of ``keys``): the timed runs of all its processes
    pooled (median over all), the largest memory numbers of its processes."""
    groups: dict = {}
    for r in results:
        groups.setdefault(tuple(r.get(k) for k in keys), []).append(r)
    out = []
    for rs in groups.values():
        ok = [r for r in rs if "error" not in r]
        m = dict(ok[0] if ok else rs[0])
        if ok:
            m["times_s"] = [t for r in ok for t in r["times_s"]]
            m["median_s"], m["min_s"] = statistics.median(m["times_s"]), min(m["times_s"])
            for k in ("peak_mb", "rise_mb", "tensor_peak_mb"):
                values = [r[k] for r in ok if r.get(k) is not None]
                m[k] = max(values) if values else None
            m["processes"] = len(ok)
        out.append(m)
    return out


def _fmt(x, digits=0):
    return "n/a" if x is None else f"{x:.{digits}f}"


def _measures(f: dict, fb: dict) -> dict:
    """Forward and forward+backward results of one configuration -> the numbers of a table row
    (on CUDA the tensors' memory is what was allocated: the rise)."""
    ms = lambda r: r["median_s"] * 1e3 if r.get("median_s") else None  # noqa: E731
    tensors = fb.get("tensor_peak_mb") if fb.get("device") != "cuda" else fb.get("rise_mb")
    return {"fwd ms": ms(f), "fwd+bwd ms": ms(fb), "peak MB": fb.get("peak_mb"), "rise MB": fb.get("rise_mb"),
            "tensor MB": tensors, "error": f.get("error") or fb.get("error")}


def comparison_table(results: list[dict], group: str, peak_gflops: float, pair: tuple) -> str:
    """Rows per (``group`` value, kernel), then ``pair[1]`` / ``pair[0]`` ratios per ``group`` value."""
    by = {(r.get(group), r["impl"], r["mode"]): r for r in results}
    has_flops = any("model_flops" in r for r in results)
    head = f"| {group} | impl | fwd ms | fwd+bwd ms | fwd+bwd peak memory MB: whole (rise) | tensors |"
    lines = [head + (" fwd+bwd GFLOP/s (% of matmul peak) |" if has_flops else ""),
             "|---" * (7 if has_flops else 6) + "|"]
    ratios = ["", f"| {group} | {pair[1]} / {pair[0]}: fwd time | fwd+bwd time | peak memory: whole | rise | tensors |",
              "|---|---|---|---|---|---|"]
    for key in dict.fromkeys(r.get(group) for r in results):
        rows = {}
        for impl in dict.fromkeys(r["impl"] for r in results if r.get(group) == key):
            fb = by.get((key, impl, "fwdbwd"), {})
            m = rows[impl] = _measures(by.get((key, impl, "fwd"), {}), fb)
            line = (f"| {key} | {impl} | {_fmt(m['fwd ms'])} | {_fmt(m['fwd+bwd ms'])} | {_fmt(m['peak MB'])} "
                    f"({_fmt(m['rise MB'])}) | {_fmt(m['tensor MB'])} |")
            if has_flops:
                gf = fb["model_flops"] / fb["median_s"] / 1e9 if m["fwd+bwd ms"] else None
                line += f" {_fmt(gf)} ({_fmt(gf and peak_gflops and 100 * gf / peak_gflops)}%) |"
            lines.append(line + (f" error: {m['error']}" if m["error"] else ""))
        if pair[0] in rows and pair[1] in rows:
            cols = ("fwd ms", "fwd+bwd ms", "peak MB", "rise MB", "tensor MB")
            r, f = rows[pair[0]], rows[pair[1]]
            ratios.append(f"| {key} | " + " | ".join(
                _fmt(f[c] / r[c] if f[c] is not None and r[c] else None, 3) for c in cols) + " |")
    return "\n".join(lines + (ratios if len(ratios) > 3 else []))


def model_table(results: list[dict]) -> str:
    lines = ["| impl | object queries | training images/s (batch 2) | inference ms per pair | peak MB (train) |",
             "|---|---|---|---|---|"]
    by = {(r["impl"], r.get("one2many", 0), r["mode"]): r for r in results}
    for impl, o2m in dict.fromkeys((r["impl"], r.get("one2many", 0)) for r in results):
        tr, inf = by.get((impl, o2m, "train"), {}), by.get((impl, o2m, "infer"), {})
        ips = tr["batch"] / tr["median_s"] if tr.get("median_s") else None
        ms = inf["median_s"] * 1e3 / inf["batch"] if inf.get("median_s") else None
        err = tr.get("error") or inf.get("error")
        lines.append(f"| {impl} | 300{f' + {o2m}' if o2m else ''} | {_fmt(ips, 2)} | {_fmt(ms)} | {_fmt(tr.get('peak_mb'))} |"
                     + (f" error: {err}" if err else ""))
    return "\n".join(lines)


def backbone_table(results: list[dict]) -> str:
    by = {(r["size"], r["impl"]): r for r in results}
    lines = ["| image px | plain ms per image | folded ms per image | folded / plain |", "|---|---|---|---|"]
    for size in dict.fromkeys(r["size"] for r in results):
        plain, folded = by.get((size, "plain"), {}), by.get((size, "folded"), {})
        a, b = plain.get("median_s"), folded.get("median_s")
        err = plain.get("error") or folded.get("error")
        lines.append(f"| {size} | {_fmt(a and a * 1e3, 1)} | {_fmt(b and b * 1e3, 1)} | {_fmt(a and b and b / a, 2)} |"
                     + (f" error: {err}" if err else ""))
    return "\n".join(lines)


def cross_table(results: list[dict]) -> str:
    """One row per (config, cross step): the training step's median ms, and its ratio to the
    indirect step of the same config."""
    lines = ["| config | cross step | training step ms (batch) | / indirect | peak MB |", "|---|---|---|---|---|"]
    indirect = {r["config"]: r.get("median_s") for r in results if r["attention"] == "indirect"}
    for r in results:
        ms, base = r.get("median_s"), indirect.get(r["config"])
        lines.append(f"| {os.path.basename(r['config'])} | {r['attention']} | {_fmt(ms and ms * 1e3)} ({r.get('batch', '-')}) "
                     f"| {_fmt(ms and base and ms / base, 2)} | {_fmt(r.get('peak_mb'))} |"
                     + (f" error: {r['error']}" if r.get("error") else ""))
    return "\n".join(lines)


def _cross_section(o: SuiteOptions, go: Callable) -> str:
    from ..config import ATTENTIONS

    results = [go({"kind": "cross", "config": os.path.abspath(c), "attention": a, "mode": "train"})
               for c in o.cross_configs for _ in range(o.repeats) for a in ATTENTIONS]
    results = merge(results, ("config", "attention"))
    return ("## Cross steps: one training step of each config with each cross step (features cached when the "
            "config caches them)\n\n" + cross_table(results))


def _decoder_section(o: SuiteOptions, go: Callable, peak_gflops: float) -> str:
    results = [go({"kind": "decoder", "point": pt, "impl": impl, "mode": mode})
               for pt in o.points for mode in ("fwd", "fwdbwd") for _ in range(o.repeats) for impl in o.impls]
    results = merge(results, ("point", "impl", "mode"))
    return ("## Decoder (6 layers, d 256, 8 heads, batch 2)\n\n"
            + comparison_table(results, "point", peak_gflops, (o.impls[0], o.impls[-1])))


def _model_section(o: SuiteOptions, go: Callable) -> str:
    results = [go({"kind": "model", "impl": impl, "one2many": o2m, "mode": mode})
               for o2m in (0, 1500) for mode in (("train", "infer") if o2m == 0 else ("train",))
               for _ in range(o.repeats) for impl in o.impls]
    results = merge(results, ("impl", "one2many", "mode"))
    return "## Whole model (mobilenetv2_100, 512 px query, 128 px support)\n\n" + model_table(results)


def _backbone_section(o: SuiteOptions, go: Callable) -> str:
    results = [go({"kind": "backbone", "size": size, "impl": impl, "mode": "infer"})
               for size in (256, 128) for _ in range(o.repeats) for impl in ("plain", "folded")]
    results = merge(results, ("size", "impl"))
    return "## Frozen backbone body, one image per pass (mobilenetv2_100, stride 16)\n\n" + backbone_table(results)


def _candidates_section(o: SuiteOptions, go: Callable) -> str:
    results = [go({"kind": "candidate", "impl": c, "mode": mode, "part": "bias MLPs" if c.startswith("mlp") else "attention"})
               for mode in ("fwd", "fwdbwd") for _ in range(o.repeats) for c in o.candidates]
    results = merge(results, ("impl", "mode"))
    attention = comparison_table([r for r in results if r["part"] == "attention"], "part", 0, ("reference", "fused"))
    mlp = comparison_table([r for r in results if r["part"] != "attention"], "part", 0, ("mlp_stored", "mlp_recomputed"))
    return ("## Candidates: one cross-attention step (B 2, 8 heads, 1800 object queries, 32x32 keys, d_head 32), "
            "one layer's box-bias MLPs (both axes, hidden 512)\n\n" + attention + "\n\n" + mlp)


def _kernels_section(o: SuiteOptions, go: Callable) -> str:
    from .step_kernels import KERNELS

    demo = os.path.join(_PACKAGE_PARENT, "configs", "synthetic.yaml")
    results = [go({"kind": "kernel", "part": part, "impl": impl, "mode": "fwdbwd", "config": demo})
               for _ in range(o.repeats) for part, pair in KERNELS.items() for impl in pair]
    results = merge(results, ("part", "impl"))
    by = {(r["part"], r["impl"]): r for r in results}
    lines = ["| part | straightforward form | ms | the model's form | ms | ratio |", "|---|---|---|---|---|---|"]
    for part, (old, new) in KERNELS.items():
        a, b = by.get((part, old), {}), by.get((part, new), {})
        ta, tb = (1e3 * r["median_s"] if "median_s" in r else None for r in (a, b))
        ratio = tb / ta if ta and tb else None
        errors = "; ".join(r["error"] for r in (a, b) if r.get("error"))
        lines.append(f"| {part} | {old} | {_fmt(ta, 1)} | {new} | {_fmt(tb, 1)} | {_fmt(ratio, 2)} |"
                     + (f" error: {errors}" if errors else ""))
    return ("## The product's training-step kernels at the demo's scale (forward + backward; AdamW: one update)\n\n"
            + "\n".join(lines))


def run_suites(o: SuiteOptions, emit: Callable[[str], None], progress: Callable[[str], None]) -> None:
    """Measure the matmul peak, then every suite of ``o.suites``; each table goes to ``emit`` as
    soon as it is done, one line per worker to ``progress``; ``o.results`` collects every result."""
    base = {"device": o.device, "threads": o.threads, "warmup": o.warmup, "iters": o.iters}

    def go(spec):
        r = launch({**base, **spec}, o.timeout)
        keys = ("kind", "point", "impl", "attention", "mode", "one2many", "median_s", "peak_mb", "error")
        progress(json.dumps({k: r.get(k) for k in keys if k in r}))
        o.results.append(r)
        return r

    peak = go({"kind": "matmul", "warmup": 2, "iters": 50 if o.device == "cuda" else 10})
    peak_gflops = peak.get("gflops", 0.0)
    emit(f"matmul peak ({peak.get('dtype')}): {peak_gflops:.0f} GFLOP/s\n")
    sections = {"decoder": lambda: _decoder_section(o, go, peak_gflops), "model": lambda: _model_section(o, go),
                "backbone": lambda: _backbone_section(o, go), "candidates": lambda: _candidates_section(o, go),
                "kernels": lambda: _kernels_section(o, go),
                "cross": lambda: _cross_section(o, go)}
    for name in SUITES:
        if name in o.suites:
            emit(sections[name]() + "\n")
