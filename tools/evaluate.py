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


def evaluate_checkpoint(checkpoint: str, config: str = "", overrides=(), output_dir: str = "",
                        coco_results: bool = False, device: str = "") -> tuple[dict, str]:
    """Load (:func:`detector.loading.load_for_evaluation`), evaluate, write; returns
    ``(metrics, output_dir)``."""
    from detector.engine import run_evaluation, write_evaluation
    from detector.loading import load_for_evaluation
    from detector.run_folder import check_output_path

    if output_dir:
        check_output_path(output_dir, "--output-dir")
    cfg, model, postprocessor, dev, dataset, split_info, cache = load_for_evaluation(checkpoint, overrides, config,
                                                                                      device)
    # Never the checkpoint's own folder: the training run's metrics.json lives there.
    out = output_dir or os.path.join(os.path.dirname(os.path.abspath(checkpoint)), f"eval_{cfg.eval.split}")
    os.makedirs(out, exist_ok=True)
    record: list = []
    metrics = run_evaluation(model, postprocessor, dataset, split_info, cfg, dev, cfg.eval.runs,
                             cache=cache, record=record, progress=True)
    write_evaluation(metrics, out)
    if coco_results:
        write_coco_results(record, len(dataset), os.path.join(out, "coco_results.json"))
    return metrics, out


def write_coco_results(record: list, items_per_run: int, path: str) -> str:
    """Detections in COCO results format (``image_id``, ``category_id`` = the queried category,
    ``bbox`` xywh pixels, ``score``) plus ``run``, the exemplar run they come from."""
    import json

    from detector.utils.box_ops import box_xyxy_to_xywh

    out = []
    for n, (image_id, category_id, result) in enumerate(record):
        for box, score in zip(box_xyxy_to_xywh(result["boxes"]).tolist(), result["scores"].tolist()):
            out.append({"image_id": image_id, "category_id": category_id, "bbox": [round(v, 2) for v in box],
                        "score": round(score, 5), "run": n // max(items_per_run, 1)})
    with open(path, "w", encoding="utf-8") as f:
        json.dump(out, f)
    return path


def main(argv=None) -> int:
    return guarded(_main, argv)


def evaluate_oracle(config: str, overrides=(), output_dir: str = "") -> tuple[dict, str]:
    """The class-agnostic oracle (:func:`detector.evaluation.oracle_predict`) on the config's
    ``eval.split`` with ``eval.runs`` runs; written to ``output_dir`` (default
    ``outputs/oracle_<split>``)."""
    from detector.config import load_config
    from detector.data import build_eval_dataset
    from detector.engine import write_evaluation
    from detector.evaluation import evaluate_oneshot, oracle_predict

    cfg = load_config(config, overrides)
    dataset, info = build_eval_dataset(cfg, cfg.eval.split)
    metrics = evaluate_oneshot(oracle_predict(dataset), dataset, runs=cfg.eval.runs, seen_ids=info["seen_ids"],
                               unseen_ids=info["unseen_ids"], batch_size=cfg.eval.batch_size,
                               max_detections=cfg.eval.max_detections)
    out = output_dir or os.path.join("outputs", f"oracle_{cfg.eval.split}")
    write_evaluation({"split": cfg.eval.split, **metrics}, out)
    return {"split": cfg.eval.split, **metrics}, out


def evaluate_realphoto_checkpoint(checkpoint: str, root: str, config: str = "", overrides=(), output_dir: str = "",
                                  device: str = "", visualize: str = "") -> tuple[dict, str]:
    """The real-photo benchmark in ``root`` scored for ``checkpoint``
    (:func:`detector.evaluation_realphoto.evaluate_realphoto`, with the protocol's rescale mode
    (``protocol_options``) unless overridden, and the config's other ``infer`` options);
    ``metrics.json`` / ``metrics.md`` written to ``output_dir`` (default
    ``<checkpoint folder>/realphoto``), one picture per pair to ``visualize`` when given."""
    from detector.data.realphoto import load_realphoto
    from detector.evaluation_realphoto import (evaluate_realphoto, protocol_options, save_pair_pictures,
                                               write_realphoto_evaluation)
    from detector.inference import OneShotDetector
    from detector.loading import load_model, use_config_threads
    from detector.run_folder import check_output_path
    from detector.utils.device import resolve_device

    for path, what in ((output_dir, "--output-dir"), (visualize, "--visualize")):
        if path:
            check_output_path(path, what)
    dev = resolve_device(device, "--device")  # before the checkpoint is read
    bench = load_realphoto(root)
    cfg, model, postprocessor = load_model(checkpoint, overrides, config)
    use_config_threads(cfg)
    detector = OneShotDetector(model, postprocessor, cfg, dev)
    metrics, results = evaluate_realphoto(detector, bench, protocol_options(overrides), progress=True)
    metrics = {"checkpoint": os.path.abspath(checkpoint), **metrics}
    out = output_dir or os.path.join(os.path.dirname(os.path.abspath(checkpoint)), "realphoto")
    os.makedirs(out, exist_ok=True)
    write_realphoto_evaluation(metrics, out)
    if visualize:
        save_pair_pictures(bench, results, visualize, margin=cfg.data.support_margin)
    return metrics, out


def _main(argv=None) -> int:
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


if __name__ == "__main__":
    sys.exit(main())
