"""Evaluating a trained checkpoint end to end, each result written to an output folder
(``metrics.json`` and ``metrics.md``): the one-shot protocol on the config's split, the
class-agnostic oracle on the same items, and the real-photo benchmark. ``tools/evaluate.py`` parses
the options and prints the tables.
"""
from __future__ import annotations

import os

from .config import load_config
from .utils.atomic import write_json
from .utils.output_paths import check_output_path


def evaluate_checkpoint(checkpoint: str, config: str = "", overrides=(), output_dir: str = "",
                        coco_results: bool = False, device: str = "") -> tuple[dict, str]:
    """Load (:func:`detector.loading.load_for_evaluation`), evaluate, write; returns
    ``(metrics, output_dir)``."""
    from .engine import run_evaluation, write_evaluation
    from .loading import load_for_evaluation

    if output_dir:
        check_output_path(output_dir, "--output-dir")
    cfg, model, postprocessor, dev, dataset, split_info, cache = load_for_evaluation(checkpoint, overrides, config,
                                                                                      device)
    # Never the checkpoint's own folder: the training run's metrics.json lives there.
    out = output_dir or os.path.join(os.path.dirname(os.path.abspath(checkpoint)), f"eval_{cfg.eval.split}")
    if not output_dir:  # the default one (known once the config is), before the evaluation runs
        check_output_path(out, "output folder")
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
    ``bbox`` xywh pixels, ``score``) plus ``run``, the exemplar run they come from; written atomically."""
    from .utils.box_ops import box_xyxy_to_xywh

    out = []
    for n, (image_id, category_id, result) in enumerate(record):
        for box, score in zip(box_xyxy_to_xywh(result["boxes"]).tolist(), result["scores"].tolist()):
            out.append({"image_id": image_id, "category_id": category_id, "bbox": [round(v, 2) for v in box],
                        "score": round(score, 5), "run": n // max(items_per_run, 1)})
    return write_json(path, out, indent=None)


def evaluate_oracle(config: str, overrides=(), output_dir: str = "") -> tuple[dict, str]:
    """The class-agnostic oracle (:func:`detector.evaluation.oracle_predict`) on the config's
    ``eval.split`` with ``eval.runs`` runs; written to ``output_dir`` (default
    ``outputs/oracle_<split>``)."""
    from .data import build_eval_dataset
    from .engine import write_evaluation
    from .evaluation import evaluate_oneshot, oracle_predict

    cfg = load_config(config, overrides)
    out = output_dir or os.path.join("outputs", f"oracle_{cfg.eval.split}")
    check_output_path(out, "output folder")
    dataset, info = build_eval_dataset(cfg, cfg.eval.split)
    metrics = evaluate_oneshot(oracle_predict(dataset), dataset, runs=cfg.eval.runs, seen_ids=info["seen_ids"],
                               unseen_ids=info["unseen_ids"], batch_size=cfg.eval.batch_size,
                               max_detections=cfg.eval.max_detections)
    write_evaluation({"split": cfg.eval.split, **metrics}, out)
    return {"split": cfg.eval.split, **metrics}, out


def evaluate_realphoto_checkpoint(checkpoint: str, root: str, config: str = "", overrides=(), output_dir: str = "",
                                  device: str = "", visualize: str = "") -> tuple[dict, str]:
    """The real-photo benchmark in ``root`` scored for ``checkpoint``
    (:func:`detector.evaluation_realphoto.evaluate_realphoto`, with the protocol's rescale mode
    (``protocol_options``) unless overridden, and the config's other ``infer`` options);
    ``metrics.json`` / ``metrics.md`` written to ``output_dir`` (default
    ``<checkpoint folder>/realphoto``), one picture per pair to ``visualize`` when given."""
    from .data.realphoto import load_realphoto
    from .evaluation_realphoto import (evaluate_realphoto, protocol_options, save_pair_pictures,
                                               write_realphoto_evaluation)
    from .inference import OneShotDetector
    from .loading import load_model, use_config_threads
    from .utils.device import resolve_device

    for path, what in ((output_dir, "--output-dir"), (visualize, "--visualize")):
        if path:
            check_output_path(path, what)
    dev = resolve_device(device, "--device")  # before the checkpoint is read
    bench = load_realphoto(root)
    cfg, model, postprocessor = load_model(checkpoint, overrides, config)
    out = output_dir or os.path.join(os.path.dirname(os.path.abspath(checkpoint)), "realphoto")
    if not output_dir:  # (a given one is checked above)
        check_output_path(out, "output folder")
    use_config_threads(cfg)
    detector = OneShotDetector(model, postprocessor, cfg, dev)
    metrics, results = evaluate_realphoto(detector, bench, protocol_options(overrides), progress=True)
    metrics = {"checkpoint": os.path.abspath(checkpoint), **metrics}
    os.makedirs(out, exist_ok=True)
    write_realphoto_evaluation(metrics, out)
    if visualize:
        save_pair_pictures(bench, results, visualize, margin=cfg.data.support_margin)
    return metrics, out
