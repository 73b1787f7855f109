"""Train a one-shot detector: ``python tools/train.py --config configs/synthetic.yaml [key=value ...]``.

Multi-process: ``torchrun --nproc_per_node N tools/train.py --config ...`` (DDP; ``nccl`` on GPUs,
``gloo`` on CPUs). ``--resume`` continues the newest checkpoint of the run's output folder (or the
given file) exactly.
"""
from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from detector.config import ConfigError, load_config  # noqa: E402


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", required=True, help="YAML config file (configs/*.yaml)")
    p.add_argument("--output-dir", default="", help="output folder of the run (overrides train.output_dir)")
    p.add_argument("--resume", nargs="?", const="auto", default="",
                   help="continue from this checkpoint, or (no value) the newest one in the output folder")
    p.add_argument("--no-progress", action="store_true", help="no tqdm progress bar")
    p.add_argument("overrides", nargs="*", help="dotted config overrides, e.g. data.split=2 train.epochs=30")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    overrides = list(args.overrides) + ([f"train.output_dir={args.output_dir}"] if args.output_dir else [])
    try:
        cfg = load_config(args.config, overrides)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    from detector.engine import NonFiniteLossError, train
    from detector.utils.checkpoint import CheckpointError, latest_checkpoint
    from detector.utils.dist import cleanup_distributed, init_distributed, is_main_process

    resume = args.resume
    if resume == "auto":
        resume = latest_checkpoint(cfg.train.output_dir) or ""
        if not resume:
            print(f"error: --resume: no checkpoint in {cfg.train.output_dir}", file=sys.stderr)
            return 2
    init_distributed()
    try:
        result = train(cfg, resume=resume or None, progress=not args.no_progress)
    except NonFiniteLossError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except CheckpointError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    finally:
        cleanup_distributed()
    if is_main_process():
        print(f"output folder: {result['output_dir']}")
        print(f"checkpoint: {result['checkpoint']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
