"""Export a trained detector to ONNX, checked against PyTorch with onnxruntime before it is written.

``python tools/export.py --checkpoint CKPT --format onnx --output model.onnx [--size S]
[--check-pairs N] [--check-split val|test|random] [--tolerance T] [--benchmark N] [--threads N]``

The graph takes a preprocessed query image (``S x S``, default ``data.eval_size``) and one exemplar
crop and returns boxes (xyxy, pixels of the resized query image), scores and the number of
detections per image, with a dynamic batch (inputs and outputs: :mod:`detector.export`, README
"Export"). Before writing, onnxruntime runs the graph on ``--check-pairs`` pairs (the first items
of the ``--check-split`` evaluation split of the checkpoint's data, or random images) and every
score and box must agree with PyTorch within ``--tolerance`` (default 1e-3); otherwise nothing is
written and the exit code is 1. ``--benchmark N`` then times one pair, onnxruntime against PyTorch
(median of N runs after 3 warm-ups). Exit codes: 0 written, 1 the check failed, 2 a bad option,
checkpoint or data (one line; nothing written).
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from detector.cli import ArgumentParser, guarded, positive_int  # noqa: E402


def parse_args(argv=None) -> argparse.Namespace:
    p = ArgumentParser(description=__doc__)
    p.add_argument("--checkpoint", required=True, help="checkpoint written by tools/train.py")
    p.add_argument("--format", default="onnx", choices=["onnx"], help="export format (onnx)")
    p.add_argument("--output", required=True, help="file to write, e.g. model.onnx")
    p.add_argument("--size", type=positive_int, default=0,
                   help="query size S of the graph, a multiple of 32 (default: the checkpoint's data.eval_size)")
    p.add_argument("--check-pairs", type=positive_int, default=8, help="pairs compared with PyTorch (default 8)")
    p.add_argument("--check-split", default="val", choices=["val", "test", "random"],
                   help="where the check pairs come from: an evaluation split of the checkpoint's data, or random images")
    p.add_argument("--tolerance", type=float, default=1e-3, help="largest score / box (pixels) difference allowed")
    p.add_argument("--benchmark", type=positive_int, default=0, metavar="N",
                   help="also time one pair, onnxruntime vs PyTorch (median of N runs)")
    p.add_argument("--threads", type=positive_int, default=1, help="CPU threads of both runtimes (default 1)")
    p.add_argument("--opset", type=positive_int, default=17, help="ONNX opset (default 17)")
    return p.parse(argv)


def benchmark(path: str, model, postprocessor, inputs: dict, runs: int, threads: int) -> dict:
    """Median milliseconds per call of onnxruntime and of PyTorch (model + PostProcess) on ``inputs``."""
    from detector.export import ort_session, torch_detections

    session = ort_session(path, threads)
    timings = {}
    for name, call in (("onnxruntime", lambda: session.run(None, inputs)),
                       ("pytorch", lambda: torch_detections(model, postprocessor, inputs))):
        times = []
        for i in range(3 + runs):
            start = time.perf_counter()
            call()
            if i >= 3:
                times.append(1000 * (time.perf_counter() - start))
        timings[name] = statistics.median(times)
    return timings


def run(args: argparse.Namespace) -> dict:
    """Load, export, check, optionally benchmark; returns the report."""
    import numpy as np
    import torch

    from detector.export import check_size, dataset_batches, export_onnx, random_inputs
    from detector.loading import load_model
    from detector.utils.output_paths import check_output_file

    check_output_file(args.output, "--output", "model.onnx")  # its folder is made by the (atomic) write itself
    torch.set_num_threads(args.threads)
    cfg, model, postprocessor = load_model(args.checkpoint)
    size = args.size or cfg.data.eval_size
    check_size(model, size)
    support_size = cfg.model.support_size
    if args.check_split == "random":
        rng = np.random.default_rng(0)
        batches = [random_inputs(min(4, args.check_pairs - i), size, support_size, rng)
                   for i in range(0, args.check_pairs, 4)]
    else:
        batches = dataset_batches(cfg, args.check_split, args.check_pairs, size)
    report = export_onnx(model, postprocessor, args.output, size, support_size, batches, args.tolerance,
                         args.opset, args.threads)
    report.update(size=size, support_size=support_size, output=args.output)
    if args.benchmark:
        one = {k: v[:1] for k, v in batches[0].items()}
        report["benchmark_ms"] = benchmark(args.output, model, postprocessor, one, args.benchmark, args.threads)
    return report


def main(argv=None) -> int:
    def body() -> int:
        args = parse_args(argv)
        r = run(args)
        print(f"{r['output']}: query {r['size']}x{r['size']}, exemplar {r['support_size']}x{r['support_size']}, "
              f"dynamic batch; onnxruntime vs PyTorch on {r['pairs']} pairs: max score difference "
              f"{r['max_score_diff']:.1e}, max box difference {r['max_box_diff']:.1e} px (tolerance {r['tolerance']:g})")
        if "benchmark_ms" in r:
            b = r["benchmark_ms"]
            print(f"one pair, {args.threads} thread(s), median of {args.benchmark}: onnxruntime {b['onnxruntime']:.1f} ms, "
                  f"PyTorch {b['pytorch']:.1f} ms ({b['pytorch'] / b['onnxruntime']:.2f}x)")
        return 0

    return guarded(body)


if __name__ == "__main__":
    sys.exit(main())
