"""The one-shot evaluation protocol (CoAE / BHRL, docs/PAPER_NOTES.md section 5), scored with COCOeval.

One *run* is one pass over the evaluation items (:class:`detector.data.OneShotEvalDataset`) with
that run's exemplar for each item. Each item (image, queried category) becomes its own
pseudo-image whose ground truth is the queried category's instances only (crowd and VOC-difficult
instances are kept as ``iscrowd`` regions, which COCOeval ignores), and whose detections are the
model's boxes for that exemplar. COCOeval (pycocotools, area range "all", ``max_detections`` per
item) scores each category on its own items; AP (IoU 0.5:0.95) and AP50 of a category set are the
mean over its categories, as COCOeval averages. Seen and unseen categories are scored separately
and never pooled. Runs are averaged; their spread is reported.

"Absent class" protocol (optional, beyond the published one): items that query a category absent
from the image are scored together with the comparable items, so confident boxes on images
without the class count as false positives. It is reported under its own key only.

``metrics.json`` keys (AP values are fractions in [0, 1]; ``null`` where a set has no category):

* ``seen_ap50``, ``seen_ap``, ``unseen_ap50``, ``unseen_ap``: mean over runs of the per-run AP50 /
  AP over the seen / unseen categories (the comparable numbers).
* ``seen_ap50_std``, ``seen_ap_std``, ``unseen_ap50_std``, ``unseen_ap_std``: standard deviation
  over runs (ddof 0); ``*_min`` / ``*_max`` of the AP50 too (``seen_ap50_min``, ...).
* ``runs``: number of runs; ``per_run``: list of ``{"run", "seen_ap50", "seen_ap", "unseen_ap50",
  "unseen_ap"}``.
* ``shots``: exemplars per item (``eval.shots``, k-shot; 1 = the published one-shot protocol). With
  ``k > 1``, shot 0 is the one-shot exemplar of the run and the other ``k - 1`` are drawn
  reproducibly from the category's other candidates outside the image
  (:meth:`detector.data.support.ExemplarPool.eval_choice`).
* ``num_items_seen``, ``num_items_unseen``, ``num_categories_seen``, ``num_categories_unseen``.
* ``per_category``: list of ``{"category_id", "name", "split" ("seen" | "unseen"), "num_items",
  "num_instances", "ap50", "ap" (means over runs), "ap50_per_run"}``.
* ``absent_class`` (only when the dataset has absent items): ``{"num_absent_items", "seen_ap50",
  "seen_ap", "unseen_ap50", "unseen_ap", "seen_ap50_std", "unseen_ap50_std", "per_run"}``.
* ``protocol``: a one-line description; ``eval_time_s``: wall time.
"""
from __future__ import annotations

import contextlib
import io
import json
import os
import time
from typing import Callable, Iterable, Optional

import numpy as np
import torch
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval
from torch.utils.data import DataLoader

from .data.coco_oneshot import collate_oneshot
from .structures import ImageBatch
from .utils.box_ops import box_xyxy_to_xywh

PredictFn = Callable[[ImageBatch, ImageBatch, list], list]
PROTOCOL = ("one-shot CoAE/BHRL: one item per (image, category present, category evaluated); exemplar of run r = "
            "candidates outside the image shuffled with seed image_id, position r; COCOeval per category on "
            "pseudo-images with ground truth restricted to the queried category; mean over categories, then runs")


def _quiet():
    return contextlib.redirect_stdout(io.StringIO())


def build_ground_truth(dataset) -> COCO:
    """A pycocotools ``COCO`` in which item ``j`` of ``dataset`` is pseudo-image ``j + 1`` holding
    the queried category's ground truth (``dataset.ground_truth(j)``, original pixels)."""
    images, annotations = [], []
    for j, item in enumerate(dataset.items):
        images.append({"id": j + 1})
        for g in dataset.ground_truth(j):
            annotations.append({"id": len(annotations) + 1, "image_id": j + 1, "category_id": item.category_id, **g})
    categories = [{"id": c} for c in sorted({item.category_id for item in dataset.items})]
    return coco_ground_truth(images, annotations, categories)


def coco_ground_truth(images: list[dict], annotations: list[dict], categories: list[dict]) -> COCO:
    """A pycocotools ``COCO`` of these lists (COCO dicts: ``bbox`` xywh pixels, ``area``,
    ``iscrowd``), indexed without printing."""
    gt = COCO()
    gt.dataset = {"images": images, "annotations": annotations, "categories": categories}
    with _quiet():
        gt.createIndex()
    return gt


def detections_array(predictions: list[dict], first_item: int, category_ids: list[int], max_detections: int) -> np.ndarray:
    """Predictions of consecutive items -> ``[D, 7]`` rows ``(pseudo-image id, x, y, w, h, score,
    category)`` for pycocotools; the ``max_detections`` best boxes of each item are kept."""
    rows = []
    for k, pred in enumerate(predictions):
        scores = torch.as_tensor(pred["scores"]).detach().float().cpu().reshape(-1)
        boxes = torch.as_tensor(pred["boxes"]).detach().float().cpu().reshape(-1, 4)
        if len(scores) > max_detections:
            top = scores.topk(max_detections).indices
            scores, boxes = scores[top], boxes[top]
        if len(scores) == 0:
            continue
        xywh = box_xyxy_to_xywh(boxes).numpy().astype(np.float64)
        n = len(scores)
        rows.append(np.concatenate([np.full((n, 1), first_item + k + 1.0), xywh, scores.numpy()[:, None].astype(np.float64),
                                    np.full((n, 1), float(category_ids[k]))], axis=1))
    return np.concatenate(rows) if rows else np.zeros((0, 7))


def load_detections(gt: COCO, detections: np.ndarray) -> COCO:
    """Detection rows ``[D, 7]`` (:func:`detections_array`) as a pycocotools results ``COCO`` on
    ``gt``'s images; an empty one when ``D == 0`` (``loadRes`` refuses an empty array)."""
    with _quiet():
        if len(detections):
            return gt.loadRes(detections)
        dt = COCO()
        dt.dataset = {"images": gt.dataset["images"], "annotations": [], "categories": gt.dataset["categories"]}
        dt.createIndex()
    return dt


def run_cocoeval(gt: COCO, dt: COCO, image_ids: list[int], category_ids: list[int], max_dets: list[int]) -> COCOeval:
    """COCOeval (``bbox``, area range "all" only, ``maxDets = max_dets``) evaluated and
    accumulated on these images and categories, without printing. ``ev.eval["precision"]`` is
    ``[IoU thresholds 0.5:0.95 (10), recall thresholds (101), categories, 1, len(max_dets)]``,
    ``ev.eval["recall"]`` ``[10, categories, 1, len(max_dets)]`` (-1 where there is no ground truth)."""
    ev = COCOeval(gt, dt, "bbox")
    ev.params.imgIds = list(image_ids)
    ev.params.catIds = list(category_ids)
    ev.params.areaRng, ev.params.areaRngLbl = [[0.0, 1e10]], ["all"]
    ev.params.maxDets = list(max_dets)
    with _quiet():
        ev.evaluate()
        ev.accumulate()
    return ev


def score_categories(gt: COCO, detections: np.ndarray, items_by_category: dict[int, list[int]],
                     max_detections: int) -> dict[int, tuple[float, float]]:
    """COCOeval of each category on its own pseudo-images (item indices, 0-based) ->
    ``{category_id: (AP, AP50)}``; categories without ground truth are left out."""
    dt = load_detections(gt, detections)
    out = {}
    for category_id, items in items_by_category.items():
        ev = run_cocoeval(gt, dt, [j + 1 for j in items], [category_id], [max_detections])
        precision = ev.eval["precision"][:, :, 0, 0, 0]  # [IoU thresholds, recall thresholds]
        if np.all(precision < 0):
            continue
        out[category_id] = (float(np.mean(precision)), float(np.mean(precision[0])))
    return out


def _set_mean(per_category: dict[int, tuple[float, float]], ids: Iterable[int], which: int) -> Optional[float]:
    values = [per_category[c][which] for c in ids if c in per_category]
    return float(np.mean(values)) if values else None


def _stats(values: list) -> dict:
    vals = [v for v in values if v is not None]
    if not vals:
        return {"mean": None, "std": None, "min": None, "max": None}
    return {"mean": float(np.mean(vals)), "std": float(np.std(vals)), "min": float(min(vals)), "max": float(max(vals))}


def predict_run(predict: PredictFn, dataset, batch_size: int, num_workers: int = 0, progress: bool = False,
                desc: str = "eval") -> list[dict]:
    """One pass of ``predict`` over ``dataset`` in item order -> one prediction dict per item."""
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers,
                        collate_fn=collate_oneshot)
    outputs: list[dict] = []
    iterator = loader
    if progress:
        from tqdm import tqdm
        iterator = tqdm(loader, desc=desc, dynamic_ncols=True, mininterval=1.0)
    for query, support, targets in iterator:
        preds = predict(query, support, targets)
        if len(preds) != len(targets):
            raise ValueError(f"predict returned {len(preds)} results for a batch of {len(targets)} items")
        outputs.extend(preds)
    return outputs


def evaluate_oneshot(predict: PredictFn, dataset, runs: int = 5, seen_ids: Iterable[int] = (),
                     unseen_ids: Iterable[int] = (), batch_size: int = 4, num_workers: int = 0,
                     max_detections: int = 100, category_names: Optional[dict] = None,
                     progress: bool = False) -> dict:
    """Run the protocol (module docstring) and return the metrics dict (keys documented there).

    Args:
        predict: ``predict(query: ImageBatch, support: ImageBatch, targets: list[dict])`` (``support``
            a list of ``k`` batches when the dataset has ``shots = k > 1``) -> one
            ``{"scores": [K], "boxes": [K, 4]}`` per item, boxes ``xyxy`` in absolute pixels of the
            item's *original* image (``targets[i]["orig_size"]``).
        dataset: an :class:`detector.data.OneShotEvalDataset` (``items``, ``set_run``,
            ``ground_truth``), iterated in order.
        runs: number of exemplar runs (5 as BHRL).
        seen_ids, unseen_ids: category ids of the two sets (disjoint).
        batch_size, num_workers: of the data loader.
        max_detections: boxes kept per item (COCOeval ``maxDets``).
        category_names: id -> name for the per-category table (default: ``dataset.index``'s).
        progress: show a progress bar.
    """
    start = time.time()
    seen, unseen = sorted(set(seen_ids)), sorted(set(unseen_ids))
    if set(seen) & set(unseen):
        raise ValueError(f"categories {sorted(set(seen) & set(unseen))} are both seen and unseen")
    if runs < 1:
        raise ValueError(f"runs must be >= 1, got {runs}")
    items = dataset.items
    if not items:
        raise ValueError("the evaluation dataset has no items")
    names = category_names or getattr(getattr(dataset, "index", None), "categories", {}) or {}
    present: dict[int, list[int]] = {}
    with_absent: dict[int, list[int]] = {}
    for j, item in enumerate(items):
        if item.present:
            present.setdefault(item.category_id, []).append(j)
        with_absent.setdefault(item.category_id, []).append(j)
    num_absent = sum(not item.present for item in items)
    gt = build_ground_truth(dataset)
    category_of_item = [item.category_id for item in items]

    per_run, per_run_absent, per_category_runs = [], [], []
    for r in range(runs):
        dataset.set_run(r)
        predictions = predict_run(predict, dataset, batch_size, num_workers, progress, desc=f"eval run {r + 1}/{runs}")
        detections = detections_array(predictions, 0, category_of_item, max_detections)
        scores = score_categories(gt, detections, present, max_detections)
        per_category_runs.append(scores)
        per_run.append(_run_means(r, scores, seen, unseen))
        if num_absent:
            per_run_absent.append(_run_means(r, score_categories(gt, detections, with_absent, max_detections),
                                             seen, unseen))

    shots = int(getattr(dataset, "shots", 1))
    protocol = PROTOCOL if shots == 1 else PROTOCOL + f"; {shots} exemplars per item (shots 1.. from other images)"
    metrics: dict = {"protocol": protocol, "runs": runs, "shots": shots}
    for key in ("seen_ap50", "seen_ap", "unseen_ap50", "unseen_ap"):
        s = _stats([p[key] for p in per_run])
        metrics[key], metrics[f"{key}_std"] = s["mean"], s["std"]
        if key.endswith("ap50"):
            metrics[f"{key}_min"], metrics[f"{key}_max"] = s["min"], s["max"]
    metrics["per_run"] = per_run
    metrics["num_items_seen"] = sum(len(present.get(c, [])) for c in seen)
    metrics["num_items_unseen"] = sum(len(present.get(c, [])) for c in unseen)
    metrics["num_categories_seen"] = sum(c in present for c in seen)
    metrics["num_categories_unseen"] = sum(c in present for c in unseen)
    metrics["per_category"] = _category_table(dataset, per_category_runs, present, seen, unseen, names)
    if num_absent:
        metrics["absent_class"] = _absent_summary(per_run_absent, num_absent)
    metrics["eval_time_s"] = round(time.time() - start, 2)
    return metrics


def _run_means(run: int, scores: dict, seen: list, unseen: list) -> dict:
    """One run's mean AP50 / AP over the seen and the unseen categories."""
    return {"run": run, "seen_ap50": _set_mean(scores, seen, 1), "seen_ap": _set_mean(scores, seen, 0),
            "unseen_ap50": _set_mean(scores, unseen, 1), "unseen_ap": _set_mean(scores, unseen, 0)}


def _category_table(dataset, per_category_runs: list, present: dict, seen: list, unseen: list, names: dict) -> list:
    """``metrics["per_category"]``: one row per evaluated category, its AP50 / AP averaged over runs."""
    table = []
    for c in seen + unseen:
        if c not in present:
            continue
        runs_c = [s.get(c) for s in per_category_runs]
        ap50_runs = [v[1] if v else None for v in runs_c]
        table.append({"category_id": c, "name": str(names.get(c, c)), "split": "seen" if c in seen else "unseen",
                      "num_items": len(present[c]),
                      "num_instances": int(sum(1 for j in present[c] for g in dataset.ground_truth(j) if not g["iscrowd"])),
                      "ap50": _stats(ap50_runs)["mean"], "ap": _stats([v[0] if v else None for v in runs_c])["mean"],
                      "ap50_per_run": ap50_runs})
    return table


def _absent_summary(per_run_absent: list, num_absent: int) -> dict:
    """``metrics["absent_class"]``: the absent-class protocol's means over runs."""
    absent: dict = {"num_absent_items": num_absent}
    for key in ("seen_ap50", "seen_ap", "unseen_ap50", "unseen_ap"):
        s = _stats([p[key] for p in per_run_absent])
        absent[key] = s["mean"]
        if key.endswith("ap50"):
            absent[f"{key}_std"] = s["std"]
    absent["per_run"] = per_run_absent
    return absent


def oracle_predict(dataset, same_category_only: bool = False) -> PredictFn:
    """A ``predict`` for :func:`evaluate_oneshot` that ignores the exemplar and answers every
    non-ignored ground-truth box of the query image at score 1: the *class-agnostic oracle*
    (perfect localisation, no idea of the class), the score a detector must beat to show that it
    uses the exemplar at all. ``same_category_only``: only the queried category's boxes (a perfect
    detector; AP 1)."""

    def predict(query, support, targets):
        out = []
        for t in targets:
            anns = [a for a in dataset.index.by_image[int(t["image_id"])] if not a.ignore
                    and (not same_category_only or a.category_id == int(t["category_id"]))]
            boxes = torch.tensor([a.box_xyxy for a in anns], dtype=torch.float32).reshape(-1, 4)
            out.append({"scores": torch.ones(len(boxes)), "boxes": boxes})
        return out

    return predict


def write_evaluation_files(metrics: dict, folder: str, table: str, stem: str = "metrics") -> tuple[str, str]:
    """``<stem>.json`` (:func:`write_metrics`) and ``<stem>.md`` (``table``, a markdown text) in
    ``folder``; returns both paths."""
    json_path = write_metrics(metrics, os.path.join(folder, f"{stem}.json"))
    md_path = os.path.join(folder, f"{stem}.md")
    with open(md_path, "w", encoding="utf-8") as f:
        f.write(table + "\n")
    return json_path, md_path


def write_metrics(metrics: dict, path: str) -> str:
    """Write ``metrics`` as JSON to ``path`` (a ``.json`` file, or a folder: ``<folder>/metrics.json``);
    returns the file written."""
    if not path.endswith(".json"):
        os.makedirs(path, exist_ok=True)
        path = os.path.join(path, "metrics.json")
    elif os.path.dirname(path):
        os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        json.dump(metrics, f, indent=1)
    return path


def format_percent(v: Optional[float]) -> str:
    """A fraction as a percentage with one decimal (``0.5`` -> ``"50.0"``); ``"-"`` for ``None``."""
    return "-" if v is None else f"{100 * v:.1f}"


def format_metrics_table(metrics: dict, per_category: bool = True) -> str:
    """Markdown tables of a metrics dict: AP50 / AP (in %) for seen and unseen with the spread
    over runs, then (optionally) one row per category."""
    lines = [f"| set | AP50 | AP50 std (min-max) over {metrics['runs']} runs | AP | categories | items |",
             "|---|---|---|---|---|---|"]
    if metrics.get("split"):
        shots = metrics.get("shots", 1)
        note = f", {shots} exemplars per item" if shots > 1 else ""
        lines.insert(0, f"Evaluation set: {metrics['split']}{note}\n")
    for split in ("seen", "unseen"):
        spread = (f"{format_percent(metrics.get(f'{split}_ap50_std'))} ({format_percent(metrics.get(f'{split}_ap50_min'))}-"
                  f"{format_percent(metrics.get(f'{split}_ap50_max'))})")
        lines.append(f"| {split} | {format_percent(metrics.get(f'{split}_ap50'))} | {spread} | {format_percent(metrics.get(f'{split}_ap'))} | "
                     f"{metrics.get(f'num_categories_{split}', 0)} | {metrics.get(f'num_items_{split}', 0)} |")
    absent = metrics.get("absent_class")
    if absent:
        lines += ["", f"Absent-class protocol (not comparable; {absent['num_absent_items']} extra items):", "",
                  "| set | AP50 | AP |", "|---|---|---|"]
        for split in ("seen", "unseen"):
            lines.append(f"| {split} | {format_percent(absent.get(f'{split}_ap50'))} | {format_percent(absent.get(f'{split}_ap'))} |")
    if per_category and metrics.get("per_category"):
        lines += ["", "| category | split | items | instances | AP50 | AP |", "|---|---|---|---|---|---|"]
        for row in metrics["per_category"]:
            lines.append(f"| {row['name']} | {row['split']} | {row['num_items']} | {row['num_instances']} | "
                         f"{format_percent(row['ap50'])} | {format_percent(row['ap'])} |")
    return "\n".join(lines)
