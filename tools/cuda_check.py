"""CUDA smoke check: the GPU code paths in one short process, with a pass/fail verdict.

``python tools/cuda_check.py [--out cuda_check.json] [--steps 12]``

What it checks and the thresholds: :mod:`detector.benchmark.cuda_check`. Prints the results as
JSON and ``cuda check: PASSED`` or ``FAILED``; exits 1 when a check fails, 2 without a GPU.
"""
from __future__ import annotations

import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from detector.cli import ArgumentParser, positive_int  # noqa: E402

CONFIGS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs")


def main(argv=None) -> int:
    p = ArgumentParser(description=__doc__)
    p.add_argument("--out", default="", help="also write the results to this JSON file")
    p.add_argument("--steps", type=positive_int, default=12, help="training steps per configuration (at least 3 run)")
    args = p.parse_args(argv)
    import torch

    if not torch.cuda.is_available():
        print("error: no CUDA device is visible to torch", file=sys.stderr)
        return 2
    from detector.benchmark.cuda_check import passed, run_checks

    results = run_checks(torch.device("cuda"), args.steps, os.path.join(CONFIGS, "synthetic.yaml"),
                         os.path.join(CONFIGS, "synthetic_paper.yaml"))
    print(json.dumps(results, indent=1))
    if args.out:
        with open(args.out, "w", encoding="utf-8") as f:
            json.dump(results, f, indent=1)
    ok = passed(results)
    print("cuda check:", "PASSED" if ok else "FAILED")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
