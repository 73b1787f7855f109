"""The real-photo benchmark's evaluation: one-shot tree detection on deepforest's aerial tiles.

The benchmark (:mod:`detector.data.realphoto`) is 16 pairs: each of the 4 tiles queried with its
own median-size tree as the exemplar (``same_image``, 4 pairs) and with each other tile's
(``other_image``, 12 pairs). Every pair is run through ``OneShotDetector.predict(query, support,
support_box=..., score_threshold=0.0, **options)`` and becomes its own COCOeval pseudo-image whose
ground truth is every tree of the query tile (the exemplar tree included: it is a tree to find).

Scores, per mode (COCOeval, ``bbox``, one category, area range "all", ``maxDets`` =
:data:`MAX_DETS` = ``[1, 100, 1000]``, the largest covering the 574-tree tile; the numbers below
use the largest, pooled over the mode's pairs as COCO pools images):

* ``<mode>_ap50`` / ``<mode>_ap``: AP at IoU 0.5 / averaged over IoU 0.5:0.95;
* ``<mode>_recall50``: recall at IoU 0.5 with every detection up to ``maxDets``;
* ``<mode>_count_error``: mean over pairs of ``|#detections with score >= count_threshold -
  #instances|``; ``<mode>_count_error_relative`` the mean of that divided by ``#instances``;
  ``<mode>_count_bias``: the mean signed difference (positive: too many). ``count_threshold`` is
  :data:`COUNT_THRESHOLD` = 0.3, the inference default score threshold, fixed before any result
  was seen and never tuned on this benchmark;
* ``<mode>_pairs``, ``<mode>_instances``.

``per_pair`` rows: ``pair``, ``mode``, ``query``, ``support`` (file names), ``instances``,
``detections`` (all returned), ``detections_above`` (score >= ``count_threshold``),
``count_error``, ``ap50``, ``recall50`` (the pair alone).

``anchors``: the same metrics (without ``per_pair``) of the training-free matchers of
:mod:`detector.matching` on the same pairs (:func:`anchor_metrics`), printed beside the model's.
"""
from __future__ import annotations

import os
import time
from typing import Optional, Sequence

import numpy as np
import torch
from PIL import Image

from .data.realphoto import MODES, RealPhotoBenchmark
from .evaluation import coco_ground_truth, detections_array, load_detections, run_cocoeval, write_evaluation_files
from .evaluation import format_percent as _pct
from .matching import ANCHORS, FeatureMatcher, template_match
from .utils.box_ops import box_xywh_to_xyxy

MAX_DETS = (1, 100, 1000)  # COCOeval maxDets; the last (the one reported) must exceed 574 trees
COUNT_THRESHOLD = 0.3  # OneShotDetector.predict's default score_threshold; fixed a priori, not tuned
# The protocol's inference: each query rescaled so that its exemplar comes out at the object size
# the model was trained on (infer.object_size), then tiled. The exemplars are trees of tiles of
# the same sensor, so this holds for other_image pairs too. A user's infer.rescale overrides it.
PROTOCOL_OPTIONS = {"rescale": "exemplar"}


def protocol_options(overrides: Sequence[str] = ()) -> dict:
    """:data:`PROTOCOL_OPTIONS` less those a user's ``infer.KEY=VALUE`` override sets (the config,
    overrides applied, then gives them)."""
    return {k: v for k, v in PROTOCOL_OPTIONS.items() if not any(o.startswith(f"infer.{k}=") for o in overrides)}
PROTOCOL = ("real-photo one-shot: deepforest 2.1.0 tiles, exemplar = a tile's median-size tree; same_image = "
            "each tile with its own exemplar, other_image = with each other tile's; COCOeval per mode with one "
            "pseudo-image per pair (ground truth: every tree of the query tile), area all, maxDets {max_dets}; "
            "count at score >= {threshold:g} (not tuned)")


def predict_pairs(detector, bench: RealPhotoBenchmark, options: Optional[dict] = None,
                  progress: bool = False) -> list[dict]:
    """``detector.predict`` on every pair, in pair order, at score threshold 0 -> one result dict
    per pair (``{"image", "width", "height", "detections": [{"bbox" xywh pixels, "score"}]}``).

    ``options``: keyword arguments of ``predict`` (``size``, ``rescale``, ...); those not given
    are the detector config's ``infer`` values."""
    kwargs = dict(options or {})
    pairs = bench.pairs
    if progress:
        from tqdm import tqdm
        pairs = tqdm(pairs, desc="realphoto", dynamic_ncols=True, mininterval=1.0)
    return [detector.predict(bench.image_path(p["query_image_id"]), bench.image_path(p["support_image_id"]),
                             support_box=p["support_box"], score_threshold=0.0, **kwargs) for p in pairs]


def _pair_ground_truth(bench: RealPhotoBenchmark):
    """COCO ground truth with pair ``j`` (0-based, file order) as pseudo-image ``j + 1``."""
    images, annotations = [], []
    for j, pair in enumerate(bench.pairs):
        images.append({"id": j + 1})
        for a in bench.instances[pair["query_image_id"]]:
            annotations.append({"id": len(annotations) + 1, "image_id": j + 1, "category_id": 1,
                                "bbox": list(a["bbox"]), "area": float(a["bbox"][2] * a["bbox"][3]), "iscrowd": 0})
    return coco_ground_truth(images, annotations, [{"id": 1}])


def _as_prediction(result: dict) -> dict:
    """A ``predict`` result -> ``{"scores": [K], "boxes": [K, 4] xyxy pixels}``."""
    dets = result["detections"]
    boxes = torch.tensor([d["bbox"] for d in dets], dtype=torch.float64).reshape(-1, 4)
    return {"scores": torch.tensor([d["score"] for d in dets], dtype=torch.float64), "boxes": box_xywh_to_xyxy(boxes)}


def _ap_recall(ev) -> tuple[Optional[float], Optional[float], Optional[float]]:
    """``(AP, AP50, recall50)`` at the largest maxDets of an accumulated one-category COCOeval."""
    precision = ev.eval["precision"][:, :, 0, 0, -1]  # [IoU thresholds, recall thresholds]
    recall = float(ev.eval["recall"][0, 0, 0, -1])
    if np.all(precision < 0):
        return None, None, None
    return float(np.mean(precision)), float(np.mean(precision[0])), recall


def count_above(result: dict, threshold: float) -> int:
    """Detections of a ``predict`` result with ``score >= threshold``."""
    return sum(d["score"] >= threshold for d in result["detections"])


def score_pairs(bench: RealPhotoBenchmark, results: Sequence[dict], count_threshold: float = COUNT_THRESHOLD,
                max_dets: Sequence[int] = MAX_DETS) -> dict:
    """The metrics of the module docstring from one ``predict`` result per pair (file order)."""
    if len(results) != len(bench.pairs):
        raise ValueError(f"{len(results)} results for {len(bench.pairs)} pairs")
    max_dets = sorted(max_dets)
    gt = _pair_ground_truth(bench)
    rows = detections_array([_as_prediction(r) for r in results], 0, [1] * len(results), max_dets[-1])
    dt = load_detections(gt, rows)
    per_pair = []
    for j, (pair, result) in enumerate(zip(bench.pairs, results)):
        _, ap50, recall50 = _ap_recall(run_cocoeval(gt, dt, [j + 1], [1], max_dets))
        instances, above = len(bench.instances[pair["query_image_id"]]), count_above(result, count_threshold)
        per_pair.append({"pair": pair["id"], "mode": pair["mode"],
                         "query": bench.images[pair["query_image_id"]]["file_name"],
                         "support": bench.images[pair["support_image_id"]]["file_name"], "instances": instances,
                         "detections": len(result["detections"]), "detections_above": above,
                         "count_error": abs(above - instances), "ap50": ap50, "recall50": recall50})
    metrics: dict = {"protocol": PROTOCOL.format(max_dets=max_dets[-1], threshold=count_threshold),
                     "max_dets": list(max_dets), "count_threshold": count_threshold}
    for mode in MODES:
        idx = [j for j, p in enumerate(bench.pairs) if p["mode"] == mode]
        if not idx:
            continue
        ap, ap50, recall50 = _ap_recall(run_cocoeval(gt, dt, [j + 1 for j in idx], [1], max_dets))
        rows_m = [per_pair[j] for j in idx]
        metrics.update({f"{mode}_ap50": ap50, f"{mode}_ap": ap, f"{mode}_recall50": recall50,
                        f"{mode}_count_error": float(np.mean([r["count_error"] for r in rows_m])),
                        f"{mode}_count_error_relative": float(np.mean([r["count_error"] / max(r["instances"], 1)
                                                                        for r in rows_m])),
                        f"{mode}_count_bias": float(np.mean([r["detections_above"] - r["instances"] for r in rows_m])),
                        f"{mode}_pairs": len(idx), f"{mode}_instances": int(sum(r["instances"] for r in rows_m))})
    metrics["per_pair"] = per_pair
    return metrics


def anchor_results(bench: RealPhotoBenchmark, name: str, progress: bool = False) -> list[dict]:
    """The training-free matcher ``name`` (one of :data:`~detector.matching.ANCHORS`) on every
    pair, in pair order -> ``predict``-shaped results."""
    from .data.image_io import read_image

    if name not in ANCHORS:
        raise ValueError(f"unknown anchor {name!r}; known: {', '.join(ANCHORS)}")
    match = template_match if name == "template" else FeatureMatcher.build()
    images: dict = {}

    def image(i: int) -> np.ndarray:
        if i not in images:
            images[i] = read_image(bench.image_path(i))
        return images[i]

    pairs = bench.pairs
    if progress:
        from tqdm import tqdm
        pairs = tqdm(pairs, desc=f"anchor {name}", dynamic_ncols=True, mininterval=1.0)
    return [match(image(p["query_image_id"]), image(p["support_image_id"]), p["support_box"]) for p in pairs]


def anchor_metrics(bench: RealPhotoBenchmark, names: Sequence[str] = ANCHORS, progress: bool = False) -> dict:
    """``{name: metrics}`` of each training-free matcher (:func:`score_pairs`, ``per_pair`` kept,
    plus ``eval_time_s``)."""
    out = {}
    for name in names:
        start = time.time()
        out[name] = {**score_pairs(bench, anchor_results(bench, name, progress)),
                     "eval_time_s": round(time.time() - start, 2)}
    return out


def evaluate_realphoto(detector, bench: RealPhotoBenchmark, options: Optional[dict] = None,
                       progress: bool = False, anchors: Sequence[str] = ANCHORS) -> tuple[dict, list[dict]]:
    """Predict and score every pair -> ``(metrics, results)``; ``metrics`` adds ``split``
    (``"realphoto"``), ``benchmark_root``, ``inference_options`` (what was passed to ``predict``),
    ``eval_time_s`` and ``anchors`` (:func:`anchor_metrics` of the matchers ``anchors``, the same
    pairs) to :func:`score_pairs`'s."""
    start = time.time()
    effective = effective_options(detector, options)  # checked before the first pair
    results = predict_pairs(detector, bench, options, progress)
    metrics = {"split": "realphoto", "benchmark_root": os.path.abspath(bench.root),
               "inference_options": effective, **score_pairs(bench, results)}
    metrics["eval_time_s"] = round(time.time() - start, 2)
    metrics["anchors"] = anchor_metrics(bench, anchors, progress)
    return metrics, results


def effective_options(detector, options: Optional[dict]) -> dict:
    """The inference options the pairs ran with (the config's ``infer`` section under ``options``);
    what ``detector.infer_options`` gives, when the detector has that method."""
    if not hasattr(detector, "infer_options"):
        return dict(options or {})
    import dataclasses

    return dataclasses.asdict(detector.infer_options(**(options or {})))


ANCHOR_LABELS = {"template": "template matching (pixels, no learning)",
                 "features": "feature matching (frozen MobileNetV2, no learning)"}


def format_realphoto_table(metrics: dict) -> str:
    """Markdown: one row per (method, mode): the model, then each anchor of ``metrics["anchors"]``
    on the same pairs (AP50, AP, recall50 in %, count error); then the model's and the anchors'
    AP50 per pair."""
    thr = metrics.get("count_threshold", COUNT_THRESHOLD)
    anchors = metrics.get("anchors", {})
    methods = [("model", metrics)] + [(ANCHOR_LABELS.get(n, n), m) for n, m in anchors.items()]
    lines = [f"Real-photo benchmark (deepforest aerial tiles); maxDets {metrics['max_dets'][-1]}, "
             f"counts at score >= {thr:g} (not tuned)", "",
             "| method | mode | pairs | instances | AP50 | AP | recall50 | count error | relative count error | count bias |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for mode in MODES:
        for label, m in methods:
            if f"{mode}_pairs" not in m:
                continue
            lines.append(f"| {label} | {mode} | {m[f'{mode}_pairs']} | {m[f'{mode}_instances']} | "
                         f"{_pct(m[f'{mode}_ap50'])} | {_pct(m[f'{mode}_ap'])} | "
                         f"{_pct(m[f'{mode}_recall50'])} | {m[f'{mode}_count_error']:.1f} | "
                         f"{_pct(m[f'{mode}_count_error_relative'])}% | {m[f'{mode}_count_bias']:+.1f} |")
    extra = "".join(f" {n} AP50 |" for n in anchors)
    lines += ["", f"| pair | mode | query | exemplar from | instances | detections >= {thr:g} | AP50 | recall50 |{extra}",
              "|---|---|---|---|---|---|---|---|" + "---|" * len(anchors)]
    for j, r in enumerate(metrics["per_pair"]):
        cells = "".join(f" {_pct(m['per_pair'][j]['ap50'])} |" for m in anchors.values())
        lines.append(f"| {r['pair']} | {r['mode']} | {r['query']} | {r['support']} | {r['instances']} | "
                     f"{r['detections_above']} | {_pct(r['ap50'])} | {_pct(r['recall50'])} |{cells}")
    return "\n".join(lines)


def write_realphoto_evaluation(metrics: dict, folder: str) -> tuple[str, str]:
    """``metrics.json`` and ``metrics.md`` (:func:`format_realphoto_table`) in ``folder``."""
    return write_evaluation_files(metrics, folder, format_realphoto_table(metrics))


def render_pair(bench: RealPhotoBenchmark, pair: dict, result: dict, count_threshold: float = COUNT_THRESHOLD,
                show_ground_truth: bool = True, margin: float = 0.0) -> Image.Image:
    """A picture of one pair: the query tile with its detections of score >= ``count_threshold``
    (red = 1 to yellow = 0; scores written only below 100 boxes), the ground truth as thin cyan
    lines, and the exemplar (``support_box`` enlarged by ``margin`` of its size) on a side panel
    one sixth of the tile's height (at least 256 px). Line widths follow the picture's size."""
    from .data.image_io import load_image
    from .data.support import crop_exemplar
    from .visualize import draw_detections

    query = load_image(bench.image_path(pair["query_image_id"]), "query image", None)
    support = load_image(bench.image_path(pair["support_image_id"]), "support image", None)
    exemplar = crop_exemplar(support, pair["support_box"], margin)
    shown = [d for d in result["detections"] if d["score"] >= count_threshold]
    trees = [a["bbox"] for a in bench.instances[pair["query_image_id"]]]
    title = (f"pair {pair['id']} ({pair['mode']}): {bench.images[pair['query_image_id']]['file_name']} searched with a "
             f"tree of {bench.images[pair['support_image_id']]['file_name']}; {len(shown)} detections >= "
             f"{count_threshold:g} (red-yellow), {len(trees)} trees{' (cyan)' if show_ground_truth else ''}")
    gt = trees if show_ground_truth else []
    return draw_detections(query, exemplar, shown, title, ground_truth=gt, score_labels=len(shown) < 100,
                           exemplar_side=max(256, query.height // 6))


def save_pair_pictures(bench: RealPhotoBenchmark, results: Sequence[dict], folder: str,
                       count_threshold: float = COUNT_THRESHOLD, margin: float = 0.0) -> list[str]:
    """:func:`render_pair` of every pair as ``<folder>/pair<id>_<query stem>[_from_<support stem>].png``
    (``_from_`` for other-image pairs); returns the paths."""
    os.makedirs(folder, exist_ok=True)
    paths = []
    for pair, result in zip(bench.pairs, results):
        query, support = (os.path.splitext(bench.images[pair[k]]["file_name"])[0]
                          for k in ("query_image_id", "support_image_id"))
        name = f"pair{pair['id']:02d}_{query}" + (f"_from_{support}" if support != query else "")
        path = os.path.join(folder, name + ".png")
        render_pair(bench, pair, result, count_threshold, margin=margin).save(path)
        paths.append(path)
    return paths
