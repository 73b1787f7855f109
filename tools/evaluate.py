"""Evaluate a checkpoint with the one-shot protocol (seen / unseen AP50 and AP over exemplar runs).

``python tools/evaluate.py --checkpoint CKPT [--config FILE] [key=value ...] [--output-dir DIR]
[--coco-results]``; ``python tools/evaluate.py --class-agnostic-oracle --config FILE [key=value ...]``
scores the class-agnostic oracle (every ground-truth box of the image at score 1, whatever the
exemplar) on the same items instead. ``python tools/evaluate.py --checkpoint CKPT --realphoto DIR
[--visualize OUT] [infer.KEY=VALUE ...]`` scores the real-photo benchmark written by
``datasets/prepare_realphoto.py`` (:mod:`detector.evaluation_realphoto`; default output folder
``<checkpoint folder>/realphoto``), with ``infer.rescale=exemplar`` (the protocol; an override of it wins) and the config's other ``infer`` options.

Without ``--config`` the config stored in the checkpoint is used (overrides still apply). Writes
``metrics.json`` and ``metrics.md`` (seen / unseen AP50 and AP, per-run spread, per-category AP) in
the output folder (default: ``<checkpoint folder>/eval_<split>``, never the training run's own
``metrics.json``), and with ``--coco-results`` the detections in
COCO results format. Overrides may come anywhere among the options; ``eval.shots=k`` gives every
item k exemplars (k-shot; ``tools/kshot_table.py`` tabulates several k). Exit codes: 0 done, 2 a bad
option, checkpoint, config or data file (one line; nothing written).
"""
from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from detector.cli import ArgumentParser, guarded  # noqa: E402


def parse_args(argv=None) -> argparse.Namespace:
    p = ArgumentParser(description=__doc__)
    p.add_argument("--checkpoint", default="", help="checkpoint written by tools/train.py")
    p.add_argument("--class-agnostic-oracle", action="store_true",
                   help="instead of a model, score every ground-truth box of the image at 1 whatever the "
                        "exemplar (the bound a detector must beat to show it uses the exemplar); needs --config")
    p.add_argument("--config", default="", help="YAML config (default: the one stored in the checkpoint)")
    p.add_argument("--output-dir", default="", help="where metrics.json / metrics.md go (default: <checkpoint folder>/eval_<split>)")
    p.add_argument("--coco-results", action="store_true", help="also write the detections in COCO results format")
    p.add_argument("--device", default="", help="cpu | cuda (default: cuda when available)")
    p.add_argument("--realphoto", default="", metavar="DIR",
                   help="instead of the config's split, the real-photo benchmark folder written by "
                        "datasets/prepare_realphoto.py (deepforest aerial tiles; needs --checkpoint)")
    p.add_argument("--visualize", default="", metavar="OUT",
                   help="with --realphoto: one PNG per pair (detections >= 0.3, ground truth, exemplar)")
    p.add_argument("overrides", nargs="*", help="dotted config overrides, e.g. eval.runs=5 data.split=2")
    args = p.parse(argv)
    if args.class_agnostic_oracle == bool(args.checkpoint):
        p.error("give --checkpoint, or --class-agnostic-oracle with --config")
    if args.class_agnostic_oracle and not args.config:
        p.error("--class-agnostic-oracle needs --config (the data to score it on)")
    if args.realphoto and (args.class_agnostic_oracle or args.coco_results):
        p.error("--realphoto scores a checkpoint: it goes with neither --class-agnostic-oracle nor --coco-results")
    if args.visualize and not args.realphoto:
        p.error("--visualize goes with --realphoto")
    return args


def _main(argv=None) -> int:
    from detector.checkpoint_eval import evaluate_checkpoint, evaluate_oracle, evaluate_realphoto_checkpoint

    args = parse_args(argv)
    start = time.time()
    if args.realphoto:
        from detector.evaluation_realphoto import format_realphoto_table

        metrics, out = evaluate_realphoto_checkpoint(args.checkpoint, args.realphoto, args.config, args.overrides,
                                                     args.output_dir, args.device, args.visualize)
        print(format_realphoto_table(metrics))
        print(f"metrics: {os.path.join(out, 'metrics.json')} ({time.time() - start:.0f} s)")
        return 0
    if args.class_agnostic_oracle:
        metrics, out = evaluate_oracle(args.config, args.overrides, args.output_dir)
    else:
        metrics, out = evaluate_checkpoint(args.checkpoint, args.config, args.overrides, args.output_dir,
                                           args.coco_results, args.device)
    from detector.evaluation import format_metrics_table

    print(format_metrics_table(metrics))
    print(f"metrics: {os.path.join(out, 'metrics.json')} ({time.time() - start:.0f} s)")
    return 0


def main(argv=None) -> int:
    return guarded(_main, argv)


if __name__ == "__main__":
    sys.exit(main())
