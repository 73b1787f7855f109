"""The main job, end to end on the embedded data:

1. write the data that is not there yet: the ``small`` synthetic benchmark
   (``datasets/synthetic_small``), the pasted-patch set of real photos (``datasets/pasted_small``)
   and the real-photo benchmark (``datasets/realphoto``, deepforest's annotated aerial tiles);
2. stage 1 on real photos (``--stage1-config``, ``configs/pretrain_photos.yaml``): patches of
   package photos pasted as look-alikes, into ``<output-dir>_stage1``;
3. stage 2, the one-shot training of the config from stage 1's weights (frozen offline ImageNet
   MobileNetV2, features cached) for its fixed number of iterations (``train.time_budget_min`` is
   only a safety net: if it stops training early, the demo says so loudly, since its numbers then
   depend on the machine), evaluated with the one-shot protocol (seen / unseen AP50 over exemplar
   runs) on the held-out ``test`` split (``eval.split``; settings were chosen on ``val``);
4. detect one unseen-category exemplar in an unseen test image and draw it;
5. the real-photo benchmark (trees found with an exemplar tree, tiles never trained on): its
   table, ``<output-dir>/realphoto/metrics.json`` and a picture of the largest tile;
6. print both tables, the paths of ``metrics.json`` and the pictures, the wall time.

``python tools/demo.py [--config configs/synthetic.yaml] [--stage1-config configs/pretrain_photos.yaml |
--no-stage1] [--realphoto datasets/realphoto | --no-realphoto] [--output-dir outputs/demo] [--overwrite]
[key=value ...]`` (overrides apply to stage 2; stage 1 trains stage 2's model, ``model.*`` overrides
included, and takes only its data and schedule from ``--stage1-config`` and ``--stage1``).

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
    p.add_argument("--stage1-config", default=os.path.join(ROOT, "configs", "pretrain_photos.yaml"),
                   help="config of stage 1 (real-photo pretraining): its data and schedule; the model is --config's")
    p.add_argument("--stage1", action="append", default=[], metavar="KEY=VALUE",
                   help="an override of the stage-1 config (repeat it for several)")
    p.add_argument("--no-stage1", action="store_true", help="skip stage 1: train the config from scratch")
    p.add_argument("--realphoto", default=os.path.join(ROOT, "datasets", "realphoto"),
                   help="folder of the real-photo benchmark (written there when missing)")
    p.add_argument("--no-realphoto", action="store_true", help="skip the real-photo benchmark")
    p.add_argument("overrides", nargs="*", help="dotted config overrides")
    return p.parse(argv)


def ensure_benchmark(cfg) -> None:
    """Write the synthetic benchmark of ``cfg.data`` unless its annotation files exist."""
    from detector.data import build_synthetic, under_root

    d = cfg.data
    if os.path.isfile(under_root(d.root, d.train_annotations)) and os.path.isfile(under_root(d.root, d.val_annotations)):
        print(f"[1/6] benchmark: {d.root} (already there)")
        return
    t = time.time()
    build_synthetic(d.root, d.synthetic_size, d.synthetic_seed, workers=max(1, min(2, os.cpu_count() or 1)))
    print(f"[1/6] benchmark: wrote {d.root} ({time.time() - t:.0f} s)")


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


def stage1_folder(output_dir: str) -> str:
    """Stage 1's run folder, beside stage 2's (a run folder holds one run): ``<output-dir>_stage1``."""
    return os.path.normpath(output_dir) + "_stage1"


def load_stages(args):
    """``(stage-2 config, stage-1 config or None)``. Stage 1 trains stage 2's model (stage 2 starts
    from its weights): its ``model`` section is the stage-2 config's, overrides included, whatever
    the stage-1 file says; :class:`InputError` for a ``--stage1 model.*`` override."""
    import copy

    from detector.config import load_config
    from detector.errors import InputError

    cfg = load_config(args.config, list(args.overrides) + [f"train.output_dir={args.output_dir}"])
    if args.no_stage1:
        return cfg, None
    bad = [o for o in args.stage1 if o.strip().startswith("model.")]
    if bad:
        raise InputError(f"--stage1 {bad[0]}: stage 1 trains stage 2's model; give model options to stage 2 "
                         f"(as a plain override or in --config) and both stages use them")
    stage1 = load_config(args.stage1_config, list(args.stage1) + [f"train.output_dir={stage1_folder(args.output_dir)}"])
    stage1.model = copy.deepcopy(cfg.model)
    return cfg, stage1


def prepare_data(cfg, stage1, args) -> None:
    """Step 1: every data set the demo needs, written where missing."""
    from detector.data import prepare_generated
    from detector.data.realphoto import prepare_realphoto

    ensure_benchmark(cfg)
    if stage1 is not None:
        t = time.time()
        prepare_generated(stage1)
        print(f"[1/6] stage-1 data: {stage1.data.root} ({time.time() - t:.0f} s)")
    if not args.no_realphoto:
        meta = prepare_realphoto(args.realphoto)
        print(f"[1/6] real-photo benchmark: {args.realphoto} ({meta.get('num_images', 4)} tiles)")


def train_stage1(stage1, console, args) -> dict:
    """Step 2: stage 1 trained; :func:`detector.engine.train`'s result (its last checkpoint, and its
    feature cache, which stage 2 reuses: same frozen backbone)."""
    from detector.data import build_datasets
    from detector.engine import train

    datasets = build_datasets(stage1)
    print(f"[2/6] stage 1 on real photos: {len(datasets[0])} pasted-patch images -> {stage1.train.output_dir}")
    t = time.time()
    result = train(stage1, datasets=datasets, progress=not args.no_progress, overwrite=args.overwrite,
                   on_start=lambda folder: console.attach(os.path.join(folder, "train.log")))
    unseen = result["metrics"].get("unseen_ap50")
    print(f"[2/6] stage 1: {result['iteration']} iterations in {time.time() - t:.0f} s"
          + (f"; AP50 on pasted patches of unseen photos {100 * unseen:.1f}" if unseen is not None else ""))
    return result


def unseen_pair_step(cfg, detector, unseen_ids) -> str:
    """Step 4: one unseen synthetic category found in a test image by ``detector`` (the trained
    model's :class:`OneShotDetector`); the picture's path."""
    from detector.inference import crop_exemplar, load_image
    from detector.visualize import save_detections

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


def realphoto_step(cfg, detector, checkpoint: str, root: str, progress: bool) -> tuple[dict, str]:
    """Step 5: the real-photo benchmark scored (its protocol: queries rescaled by their exemplar,
    tiled); ``(metrics, picture of the largest tile's same-image pair)``."""
    from detector.data.realphoto import load_realphoto
    from detector.evaluation_realphoto import (evaluate_realphoto, protocol_options, render_pair,
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


def run(args, console) -> int:
    start = time.time()
    from detector.run_folder import check_fresh

    cfg, stage1 = load_stages(args)
    for folder in [cfg.train.output_dir] + ([stage1.train.output_dir] if stage1 is not None else []):
        check_fresh(folder, args.overwrite, resumable=False)
    prepare_data(cfg, stage1, args)

    from detector.data import build_datasets
    from detector.engine import train
    from detector.evaluation import format_metrics_table
    from detector.evaluation_realphoto import format_realphoto_table

    cache = None
    if stage1 is not None:
        first = train_stage1(stage1, console, args)
        cfg.train.init_checkpoint, cache = first["checkpoint"], first["feature_cache"]
    datasets = build_datasets(cfg)
    print(f"[3/6] training {cfg.model.attention} attention on {len(datasets[0])} training items "
          f"(then evaluating {cfg.eval.runs} exemplar runs) -> {cfg.train.output_dir}")
    t = time.time()
    result = train(cfg, datasets=datasets, progress=not args.no_progress, overwrite=args.overwrite,
                   on_start=lambda folder: console.attach(os.path.join(folder, "train.log")), feature_cache=cache)
    print(f"[3/6] trained {result['iteration']} iterations and evaluated on {cfg.eval.split} in {time.time() - t:.0f} s")
    from detector.inference import OneShotDetector

    detector = OneShotDetector.from_checkpoint(result["checkpoint"], max_pixels=None)  # the demo's own files
    picture = unseen_pair_step(cfg, detector, datasets[2]["unseen_ids"])
    real = None if args.no_realphoto else realphoto_step(cfg, detector, result["checkpoint"], args.realphoto,
                                                         not args.no_progress)

    print()
    print(format_metrics_table(result["metrics"], per_category=False))
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


if __name__ == "__main__":
    sys.exit(main())
