"""Benchmark the indirect-attention decoder and the whole model, reference kernel vs fast kernel.

Suites (``--suite``, comma-separated), each one process per measurement
(:mod:`detector.benchmark.cpu_suite`; timing and memory: :mod:`detector.benchmark.timing`):

* ``decoder``: the default config's decoder (6 layers, d 256, 8 heads, bias MLP hidden 512),
  batch 2, with a padding mask and the hybrid-matching block mask, at the points ``train32``,
  ``eval32``, ``train50``, ``eval50`` (:data:`detector.benchmark.decoder.POINTS`);
* ``model``: the default-config model (random weights): training images/s with 300 and 300 + 1500
  object queries, inference latency per query + support pair;
* ``backbone``: the frozen MobileNetV2 body with its BatchNorms as they are and folded;
* ``candidates``: one cross-attention step for each kernel considered
  (:mod:`detector.benchmark.candidates`) and the bias MLPs with stored vs recomputed activations;
* ``kernels``: the product's training-step kernels at the demo's scale, each beside its
  straightforward form (:mod:`detector.benchmark.step_kernels`: the exemplar correlation, the
  box-bias MLPs, the AdamW update);
* ``cross``: one training step of each ``--configs`` file (default the product's
  ``configs/synthetic.yaml`` and the paper-faithful ``configs/synthetic_paper.yaml``) with each
  cross step (``model.attention``: indirect, misaligned, double_cross), as training runs it
  (features from a warm cache where the config caches them), side by side;
* ``gpu`` (the default with ``--device cuda``): the GPU suite (:mod:`detector.benchmark.gpu_suite`)
  in this process; with ``--device cpu`` at smaller sizes (``--scale``).

Usage::

    python tools/benchmark.py                          # decoder + model, reference vs fused
    python tools/benchmark.py --suite candidates
    python tools/benchmark.py --suite kernels --threads 2 --iters 20 --warmup 3 --repeats 3
    python tools/benchmark.py --suite cross --threads 1 --iters 10 --warmup 2 --repeats 2
    python tools/benchmark.py --suite backbone --iters 30 --warmup 3 --repeats 2
    python tools/benchmark.py --suite decoder --points train32,eval32 --iters 3 --warmup 1
    python tools/benchmark.py --device cuda --json gpu_suite.json   # the GPU suite (about 3 minutes)
    python tools/benchmark.py --suite gpu --device cpu              # the same at CPU sizes
"""
from __future__ import annotations

import argparse
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
CROSS_CONFIGS = ("synthetic.yaml", "synthetic_paper.yaml")

from detector.benchmark.candidates import CANDIDATES  # noqa: E402
from detector.benchmark.cpu_suite import SUITES, SuiteOptions, run_suites  # noqa: E402
from detector.benchmark.decoder import POINTS  # noqa: E402
from detector.cli import ArgumentParser, guarded, positive_int  # noqa: E402
from detector.errors import InputError  # noqa: E402
from detector.utils.atomic import write_json  # noqa: E402


def parse_args(argv=None) -> argparse.Namespace:
    p = ArgumentParser(description=__doc__)
    p.add_argument("--suite", default="", help=f"comma-separated, from {list(SUITES) + ['gpu']} "
                   "(default: gpu with --device cuda, else decoder,model)")
    p.add_argument("--scale", default="", choices=["", "cpu", "cuda"],
                   help="sizes of the gpu suite (default: the device's; detector.benchmark.gpu_suite.SCALES)")
    p.add_argument("--points", default=",".join(POINTS), help=f"decoder points, from {list(POINTS)}")
    p.add_argument("--impls", default="reference,fused", help="kernels to compare (the first is the baseline)")
    p.add_argument("--candidates", default=",".join(CANDIDATES), help=f"for --suite candidates, from {CANDIDATES}")
    p.add_argument("--configs", default=",".join(os.path.join(ROOT, "configs", n) for n in CROSS_CONFIGS),
                   help="for --suite cross: comma-separated config files (default the product's and the paper-faithful)")
    p.add_argument("--warmup", type=int, default=None, help="warm-up runs (default 1; the gpu suite: its scale's)")
    p.add_argument("--iters", type=int, default=None, help="timed runs (default 3; the gpu suite: its scale's)")
    p.add_argument("--repeats", type=positive_int, default=1, help="processes per configuration, interleaved across kernels")
    p.add_argument("--threads", type=positive_int, default=int(os.environ.get("BENCH_THREADS", os.cpu_count() or 1)))
    p.add_argument("--device", default="", help="cpu | cuda (default: cuda when available)")
    p.add_argument("--timeout", type=float, default=1800.0, help="seconds per worker")
    p.add_argument("--json", default="", help="also write every result to this JSON file")
    return p.parse_args(argv)


def _choices(value: str, allowed, option: str) -> tuple:
    items = tuple(v for v in value.split(",") if v)
    bad = [v for v in items if v not in allowed]
    if bad or not items:
        raise InputError(f"{option}: {','.join(bad) or 'nothing given'} is not one of {list(allowed)}")
    return items


def _config_files(value: str) -> tuple:
    files = tuple(v for v in value.split(",") if v)
    if not files:
        raise InputError("--configs: no config file given")
    for path in files:
        if not os.path.isfile(path):
            raise InputError(f"--configs: config file not found: {path}")
    return tuple(os.path.abspath(f) for f in files)


def gpu_main(args, device, impls: tuple, name: str) -> None:
    """``--suite gpu``: the tables of :mod:`detector.benchmark.gpu_suite`, in this process."""
    import torch

    from detector.benchmark.gpu_suite import SCALES, run_suite, tables

    scale = dict(SCALES[args.scale or device.type])
    scale.update({k: v for k, v in (("warmup", args.warmup), ("iters", args.iters)) if v is not None})
    demo_config = os.path.join(ROOT, "configs", "synthetic.yaml")
    rows = run_suite(device, scale, list(impls), demo_config, progress=lambda line: print(f"  {line}", file=sys.stderr, flush=True))
    print(tables(rows, name, torch.__version__, scale))
    if args.json:
        write_json(args.json, {"device": name, "torch": torch.__version__, "scale": scale, "rows": rows})


def _options(args, device: str) -> SuiteOptions:
    """The checked options of the CPU suites (``suites == ("gpu",)`` for the GPU suite)."""
    import torch

    if device not in ("cpu", "cuda"):
        raise InputError(f"--device {device}: choose cpu or cuda")
    if device == "cuda" and not torch.cuda.is_available():
        raise InputError("--device cuda: no CUDA GPU is available on this machine")
    suites = _choices(args.suite or ("gpu" if device == "cuda" else "decoder,model"), SUITES + ("gpu",), "--suite")
    if "gpu" in suites and len(suites) > 1:
        raise InputError("--suite gpu runs on its own (it is one process)")
    return SuiteOptions(device=device, suites=suites, impls=_choices(args.impls, ("reference", "fused"), "--impls"),
                        points=_choices(args.points, POINTS, "--points"),
                        candidates=_choices(args.candidates, CANDIDATES, "--candidates"),
                        cross_configs=_config_files(args.configs) if "cross" in suites else (),
                        warmup=1 if args.warmup is None else args.warmup, iters=3 if args.iters is None else args.iters,
                        repeats=args.repeats, threads=args.threads, timeout=args.timeout)


def run(argv=None) -> int:
    args = parse_args(argv)
    import torch

    from detector.utils.output_paths import check_output_file

    if args.json:  # before minutes of timing, not after
        check_output_file(args.json, "--json", "results.json")
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    o = _options(args, device)
    torch.set_num_threads(args.threads)
    name = torch.cuda.get_device_name() if device == "cuda" else f"CPU, {args.threads} threads"
    print("$ python tools/benchmark.py " + " ".join(argv if argv is not None else sys.argv[1:]), flush=True)
    if o.suites == ("gpu",):
        gpu_main(args, torch.device(device), o.impls, name)
        return 0
    print(f"# torch {torch.__version__}, {name}; {o.repeats} process(es) per configuration, each {o.warmup} "
          f"warm-up + {o.iters} timed runs; medians over the timed runs\n")
    start_load = os.getloadavg()
    run_suites(o, emit=lambda text: print(text, flush=True),
               progress=lambda line: print(f"  {line}", file=sys.stderr, flush=True))
    loads = [" ".join(f"{x:.1f}" for x in la) for la in (start_load, os.getloadavg())]
    print(f"load average (1, 5, 15 min): {loads[0]} at the start, {loads[1]} at the end (other processes slow the "
          "workers down: every op of a multi-threaded run waits for its slowest thread)")
    if args.json:
        write_json(args.json, o.results)
    return 0


def main(argv=None) -> None:
    sys.exit(guarded(run, argv))


if __name__ == "__main__":
    main()
