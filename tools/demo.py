"""The main job, end to end on the embedded synthetic benchmark:

1. write the ``small`` synthetic benchmark (``datasets/synthetic_small``) if it is not there;
2. train the indirect-attention detector (frozen offline ImageNet MobileNetV2, features cached) for
   the config's fixed number of iterations (``train.time_budget_min`` is only a safety net: if it
   stops training early, the demo says so loudly, since its numbers then depend on the machine);
3. evaluate with the one-shot protocol (seen / unseen AP50 over exemplar runs) on the held-out
   ``test`` split (``eval.split``; settings were chosen on ``val``);
4. detect one unseen-category exemplar in an unseen test image and draw it;
5. print the seen / unseen AP50 table, the paths of ``metrics.json`` and the picture, the wall time.

``python tools/demo.py [--config configs/synthetic.yaml] [--output-dir outputs/demo] [--overwrite] [key=value ...]``

The output folder belongs to one run: a second demo into it is refused unless ``--overwrite``
(``make demo DEMO_ARGS=--overwrite``). Its ``train.log`` keeps what the console showed.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from detector.cli import ArgumentParser, guarded  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def parse_args(argv=None) -> argparse.Namespace:
    p = ArgumentParser(description=__doc__)
    p.add_argument("--config", default=os.path.join(ROOT, "configs", "synthetic.yaml"), help="YAML config")
    p.add_argument("--output-dir", default="outputs/demo", help="output folder of the run")
    p.add_argument("--overwrite", action="store_true", help="empty the output folder of a previous run first")
    p.add_argument("--no-progress", action="store_true", help="no tqdm progress bar")
    p.add_argument("overrides", nargs="*", help="dotted config overrides")
    return p.parse(argv)


def ensure_benchmark(cfg) -> None:
    """Write the synthetic benchmark of ``cfg.data`` unless its annotation files exist."""
    from detector.data import build_synthetic, under_root

    d = cfg.data
    if os.path.isfile(under_root(d.root, d.train_annotations)) and os.path.isfile(under_root(d.root, d.val_annotations)):
        print(f"[1/4] benchmark: {d.root} (already there)")
        return
    t = time.time()
    build_synthetic(d.root, d.synthetic_size, d.synthetic_seed, workers=max(1, min(2, os.cpu_count() or 1)))
    print(f"[1/4] benchmark: wrote {d.root} ({time.time() - t:.0f} s)")


def pick_unseen_pair(cfg, unseen_ids) -> dict:
    """A deterministic (query image, support image, support box) of one unseen category from the
    annotations of the evaluated split: the first image holding the category, the largest instance
    of it in another image as the exemplar."""
    from detector.data import under_root

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


def main(argv=None) -> int:
    from detector.utils.console_log import ConsoleLog

    with ConsoleLog() as console:
        return guarded(run, parse_args(argv), console)


def run(args, console) -> int:
    start = time.time()
    from detector.config import load_config
    from detector.run_folder import check_fresh

    cfg = load_config(args.config, list(args.overrides) + [f"train.output_dir={args.output_dir}"])
    check_fresh(cfg.train.output_dir, args.overwrite, resumable=False)
    ensure_benchmark(cfg)

    from detector.data import build_datasets
    from detector.engine import train
    from detector.evaluation import format_metrics_table
    from detector.inference import OneShotDetector, crop_exemplar, load_image
    from detector.visualize import save_detections

    datasets = build_datasets(cfg)
    print(f"[2/4] training {cfg.model.attention} attention on {len(datasets[0])} training items "
          f"(then evaluating {cfg.eval.runs} exemplar runs) -> {cfg.train.output_dir}")
    t = time.time()
    result = train(cfg, datasets=datasets, progress=not args.no_progress, overwrite=args.overwrite,
                   on_start=lambda folder: console.attach(os.path.join(folder, "train.log")))
    print(f"[3/4] trained {result['iteration']} iterations and evaluated on {cfg.eval.split} in {time.time() - t:.0f} s")

    pair = pick_unseen_pair(cfg, datasets[2]["unseen_ids"])
    t = time.time()
    detector = OneShotDetector.from_checkpoint(result["checkpoint"])
    prediction = detector.predict(pair["query"], pair["support"], support_box=pair["support_box"], score_threshold=0.3)
    picture = os.path.join(cfg.train.output_dir, "demo_unseen_pair.png")
    support = load_image(pair["support"])
    save_detections(picture, load_image(pair["query"]), crop_exemplar(support, pair["support_box"], 0.0),
                    prediction["detections"],
                    title=f"unseen '{pair['category']}': {len(prediction['detections'])} found, "
                          f"{pair['num_instances']} present")
    with open(os.path.join(cfg.train.output_dir, "demo_unseen_pair.json"), "w", encoding="utf-8") as f:
        json.dump({**pair, "prediction": prediction}, f, indent=1)
    print(f"[4/4] inference on an unseen '{pair['category']}' pair: {len(prediction['detections'])} detections "
          f"(score >= 0.3) of {pair['num_instances']} instances ({time.time() - t:.1f} s)")

    print()
    print(format_metrics_table(result["metrics"], per_category=False))
    if result["stopped_by_time_budget"]:
        print(f"\nWARNING: the time budget (train.time_budget_min={cfg.train.time_budget_min:g}) stopped training at "
              f"iteration {result['iteration']} of {result['planned_iterations']}: these numbers are not the "
              f"configuration's; on a less busy machine, or with train.time_budget_min=0, all iterations run.")
    print()
    print(f"metrics.json: {os.path.join(cfg.train.output_dir, 'metrics.json')}")
    print(f"picture:      {picture}")
    print(f"curves:       {os.path.join(cfg.train.output_dir, 'training_curves.png')}")
    print(f"wall time:    {(time.time() - start) / 60:.1f} min")
    return 0


if __name__ == "__main__":
    sys.exit(main())
