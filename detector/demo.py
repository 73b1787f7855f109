"""The main job (``make demo``, ``tools/demo.py``), end to end on the embedded data:

1. write the data that is not there yet: the ``small`` synthetic benchmark
   (``datasets/synthetic_small``), the pasted-patch set of real photos (``datasets/pasted_small``)
   and the real-photo benchmark (``datasets/realphoto``, deepforest's annotated aerial tiles);
2. stage 1 on real photos: patches of package photos pasted as look-alikes;
3. stage 2, the one-shot training of the config from stage 1's weights (frozen offline ImageNet
   MobileNetV2, features cached and shared with stage 1) for its fixed number of iterations
   (``train.time_budget_min`` is only a safety net: if it stops training early, the demo says so
   loudly, since its numbers then depend on the machine), evaluated with the one-shot protocol
   (seen / unseen AP50 over exemplar runs) on the held-out ``test`` split (``eval.split``; settings
   were chosen on ``val``), beside the class-agnostic oracle on the same items;
4. detect one unseen-category exemplar in an unseen test image and draw it;
5. the real-photo benchmark (trees found with an exemplar tree, tiles never trained on) beside two
   training-free matchers: its table, ``<output-dir>/realphoto/metrics.json`` and a picture of the
   largest tile;
6. print the tables, the paths of ``metrics.json`` and the pictures, the wall time.
"""
from __future__ import annotations

import json
import os
import time
from typing import Optional


def ensure_benchmark(cfg) -> None:
    """Write the generated benchmark of ``cfg.data`` unless its annotation files exist."""
    from .data import prepare_generated, under_root

    d = cfg.data
    if os.path.isfile(under_root(d.root, d.train_annotations)) and os.path.isfile(under_root(d.root, d.val_annotations)):
        print(f"[1/6] benchmark: {d.root} (already there)")
        return
    t = time.time()
    prepare_generated(cfg)
    print(f"[1/6] benchmark: wrote {d.root} ({time.time() - t:.0f} s)")


def prepare_data(cfg, stage1, realphoto: Optional[str]) -> None:
    """Step 1: every data set the demo needs (the synthetic benchmark, stage 1's set, the real-photo
    benchmark in the folder ``realphoto`` unless ``None``), written where missing."""
    from .data import prepare_generated
    from .data.realphoto import prepare_realphoto

    ensure_benchmark(cfg)
    if stage1 is not None:
        t = time.time()
        prepare_generated(stage1)
        print(f"[1/6] stage-1 data: {stage1.data.root} ({time.time() - t:.0f} s)")
    if realphoto is not None:
        meta = prepare_realphoto(realphoto)
        print(f"[1/6] real-photo benchmark: {realphoto} ({meta.get('num_images', 4)} tiles)")


def shared_feature_cache(cfg):
    """One feature cache for both stages (the same frozen pretrained backbone): the images both see
    are encoded once. ``None`` when ``cfg`` does not cache features, or when its backbone starts from
    random weights (each stage then encodes with its own model's)."""
    if not cfg.train.cache_features or cfg.model.backbone.pretrained == "none":
        return None
    from .engine import select_device
    from .features import FeatureCache
    from .models.build import build_backbone

    return FeatureCache(build_backbone(cfg.model).to(select_device()))


def train_stage1(stage1, console, cache, progress: bool = True, overwrite: bool = False) -> dict:
    """Step 2: stage 1 trained (with ``cache``, which stage 2 reuses); :func:`detector.engine.train`'s result."""
    from .data import build_datasets
    from .engine import train

    datasets = build_datasets(stage1)
    print(f"[2/6] stage 1 on real photos: {len(datasets[0])} pasted-patch images -> {stage1.train.output_dir}")
    t = time.time()
    result = train(stage1, datasets=datasets, progress=progress, overwrite=overwrite,
                   on_start=lambda folder: console.attach(os.path.join(folder, "train.log")), feature_cache=cache)
    unseen = result["metrics"].get("unseen_ap50")
    print(f"[2/6] stage 1: {result['iteration']} iterations in {time.time() - t:.0f} s"
          + (f"; AP50 on pasted patches of unseen photos {100 * unseen:.1f}" if unseen is not None else ""))
    return result


def pick_unseen_pair(cfg, unseen_ids) -> dict:
    """A deterministic (query image, support image, support box) of one unseen category from the
    annotations of the evaluated split: the first image holding the category, the largest instance
    of it in another image as the exemplar."""
    from .data import under_root

    d = cfg.data
    annotations, image_dir = ((d.val_annotations, d.val_images) if cfg.eval.split == "val"
                              else (d.test_annotations, d.test_images))
    with open(under_root(d.root, annotations), "r", encoding="utf-8") as f:
        coco = json.load(f)
    images = {im["id"]: im for im in coco["images"]}
    by_cat: dict = {}
    for ann in coco["annotations"]:
        if ann["category_id"] in set(unseen_ids) and not ann.get("iscrowd", 0):
            by_cat.setdefault(ann["category_id"], []).append(ann)
    names = {c["id"]: c["name"] for c in coco["categories"]}
    for cat in sorted(by_cat):
        anns = by_cat[cat]
        image_ids = sorted({a["image_id"] for a in anns})
        if len(image_ids) < 2:
            continue
        query_id = image_ids[0]
        others = [a for a in anns if a["image_id"] != query_id]
        exemplar = max(others, key=lambda a: a["bbox"][2] * a["bbox"][3])
        folder = under_root(d.root, image_dir)
        return {"category": names.get(cat, str(cat)), "category_id": cat,
                "query": os.path.join(folder, images[query_id]["file_name"]),
                "support": os.path.join(folder, images[exemplar["image_id"]]["file_name"]),
                "support_box": [float(v) for v in exemplar["bbox"]],
                "num_instances": sum(1 for a in anns if a["image_id"] == query_id)}
    raise RuntimeError(f"no unseen category with instances in two {cfg.eval.split} images")


def unseen_pair_step(cfg, detector, unseen_ids) -> str:
    """Step 4: one unseen synthetic category found in a test image by ``detector`` (the trained
    model's :class:`OneShotDetector`); the picture's path."""
    from .inference import crop_exemplar, load_image
    from .visualize import save_detections

    pair = pick_unseen_pair(cfg, unseen_ids)
    t = time.time()
    prediction = detector.predict(pair["query"], pair["support"], support_box=pair["support_box"], score_threshold=0.3)
    picture = os.path.join(cfg.train.output_dir, "demo_unseen_pair.png")
    support = load_image(pair["support"])
    save_detections(picture, load_image(pair["query"]), crop_exemplar(support, pair["support_box"], 0.0),
                    prediction["detections"],
                    title=f"unseen '{pair['category']}': {len(prediction['detections'])} found, "
                          f"{pair['num_instances']} present")
    with open(os.path.join(cfg.train.output_dir, "demo_unseen_pair.json"), "w", encoding="utf-8") as f:
        json.dump({**pair, "prediction": prediction}, f, indent=1)
    print(f"[4/6] inference on an unseen '{pair['category']}' pair: {len(prediction['detections'])} detections "
          f"(score >= 0.3) of {pair['num_instances']} instances ({time.time() - t:.1f} s)")
    return picture


def oracle_step(cfg) -> str:
    """The class-agnostic oracle on the evaluated split (every ground-truth box at score 1, no idea
    of the exemplar), the same items and runs: the line printed under the model's table."""
    from .data import build_eval_dataset
    from .engine import run_oracle, write_evaluation
    from .evaluation import format_percent

    metrics = run_oracle(*build_eval_dataset(cfg, cfg.eval.split), cfg)
    write_evaluation(metrics, os.path.join(cfg.train.output_dir, f"oracle_{cfg.eval.split}"))
    return (f"class-agnostic oracle (every ground-truth box at score 1, no exemplar; same items and runs): "
            f"seen AP50 {format_percent(metrics['seen_ap50'])}, unseen AP50 {format_percent(metrics['unseen_ap50'])}")


def realphoto_step(cfg, detector, checkpoint: str, root: str, progress: bool) -> tuple[dict, str]:
    """Step 5: the real-photo benchmark scored (its protocol: queries rescaled by their exemplar,
    tiled); ``(metrics, picture of the largest tile's same-image pair)``."""
    from .data.realphoto import load_realphoto
    from .evaluation_realphoto import (evaluate_realphoto, protocol_options, render_pair,
                                               write_realphoto_evaluation)

    t = time.time()
    bench = load_realphoto(root)
    metrics, results = evaluate_realphoto(detector, bench, protocol_options(), progress=progress)
    out = os.path.join(cfg.train.output_dir, "realphoto")
    write_realphoto_evaluation({"checkpoint": os.path.abspath(checkpoint), **metrics}, out)
    largest = max((k for k, p in enumerate(bench.pairs) if p["mode"] == "same_image"),
                  key=lambda k: len(bench.instances[bench.pairs[k]["query_image_id"]]))
    picture = os.path.join(out, "largest_tile.png")
    render_pair(bench, bench.pairs[largest], results[largest], margin=cfg.data.support_margin).save(picture)
    row = metrics["per_pair"][largest]
    print(f"[5/6] real-photo benchmark: 16 pairs in {time.time() - t:.0f} s; largest tile {row['query']}: "
          f"{row['detections_above']} trees found (score >= 0.3) of {row['instances']}, recall50 "
          f"{100 * row['recall50']:.1f}")
    return metrics, picture


def run_demo(cfg, stage1, realphoto: Optional[str], console, progress: bool = True, overwrite: bool = False) -> int:
    """Steps 1-6 (module docstring) for the stage-2 config ``cfg`` and the stage-1 config ``stage1``
    (``None``: no stage 1); ``realphoto`` is the real-photo benchmark's folder (``None``: skipped).
    ``console`` (:class:`~detector.utils.console_log.ConsoleLog`) copies the console into each run
    folder's ``train.log``. Both run folders are checked before anything is written. Returns 0."""
    from .data import build_datasets
    from .engine import train
    from .evaluation import format_metrics_table
    from .evaluation_realphoto import format_realphoto_table
    from .inference import OneShotDetector
    from .run_folder import check_fresh

    start = time.time()
    for folder in [cfg.train.output_dir] + ([stage1.train.output_dir] if stage1 is not None else []):
        check_fresh(folder, overwrite, resumable=False)
    prepare_data(cfg, stage1, realphoto)

    cache = shared_feature_cache(cfg)
    if stage1 is not None:
        cfg.train.init_checkpoint = train_stage1(stage1, console, cache, progress, overwrite)["checkpoint"]
    datasets = build_datasets(cfg)
    print(f"[3/6] training {cfg.model.attention} attention on {len(datasets[0])} training items "
          f"(then evaluating {cfg.eval.runs} exemplar runs) -> {cfg.train.output_dir}")
    t = time.time()
    result = train(cfg, datasets=datasets, progress=progress, overwrite=overwrite,
                   on_start=lambda folder: console.attach(os.path.join(folder, "train.log")), feature_cache=cache)
    print(f"[3/6] trained {result['iteration']} iterations and evaluated on {cfg.eval.split} in {time.time() - t:.0f} s")
    detector = OneShotDetector.from_checkpoint(result["checkpoint"], max_pixels=None)  # the demo's own files
    picture = unseen_pair_step(cfg, detector, datasets[2]["unseen_ids"])
    oracle = oracle_step(cfg)
    real = None if realphoto is None else realphoto_step(cfg, detector, result["checkpoint"], realphoto, progress)

    print()
    print(format_metrics_table(result["metrics"], per_category=False))
    print(oracle)
    if real is not None:
        print()
        print(format_realphoto_table(real[0]))
    if result["stopped_by_time_budget"]:
        print(f"\nWARNING: the time budget (train.time_budget_min={cfg.train.time_budget_min:g}) stopped training at "
              f"iteration {result['iteration']} of {result['planned_iterations']}: these numbers are not the "
              f"configuration's; on a less busy machine, or with train.time_budget_min=0, all iterations run.")
    print()
    print(f"metrics.json: {os.path.join(cfg.train.output_dir, 'metrics.json')}")
    print(f"picture:      {picture}")
    if real is not None:
        print(f"real photos:  {os.path.join(cfg.train.output_dir, 'realphoto', 'metrics.json')}")
        print(f"real picture: {real[1]}")
    print(f"curves:       {os.path.join(cfg.train.output_dir, 'training_curves.png')}")
    print(f"wall time:    {(time.time() - start) / 60:.1f} min")
    return 0
