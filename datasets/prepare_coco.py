"""Check a COCO 2017 folder and write the exemplar index of the one-shot evaluation.

    python datasets/prepare_coco.py --root datasets/coco

Expects ``<root>/annotations/instances_{train,val}2017.json`` and ``<root>/{train,val}2017/``.
Checks that each annotation file is valid COCO with the 80 COCO categories and that every listed
image file exists (``--decode N`` also decodes N images per split), then writes
``<root>/annotations/exemplars_val2017.json``: the evaluation exemplar pool (non-crowd instances
with a box area of at least ``--min-area`` pixels^2), in the exemplar-list format that
``data.exemplar_file`` reads. Passing that file back reproduces the built-in pool exactly; edit it
(e.g. keep only instances a detector finds, as CoAE did) to change the pool. Exit status 1 when a
check fails.
"""
from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from detector.data.coco_index import CocoIndex  # noqa: E402
from detector.data.image_io import ImageReadError, read_image  # noqa: E402
from detector.data.splits import coco_split  # noqa: E402
from detector.data.support import ExemplarPool  # noqa: E402
from detector.utils.atomic import write_json  # noqa: E402


def check_split(root: str, split: str, decode: int = 0) -> tuple[CocoIndex, list[str]]:
    """Load ``annotations/instances_<split>.json`` and check it; returns the index and a list of
    problems (empty when everything is in order). A file that is not valid COCO raises."""
    index = CocoIndex(os.path.join(root, "annotations", f"instances_{split}.json"), os.path.join(root, split))
    problems = []
    try:
        coco_split(1, index.categories)
    except ValueError as e:
        problems.append(f"{index.path}: {e}")
    missing = [rec.file_name for rec in index.images.values() if not os.path.isfile(index.image_path(rec.id))]
    if missing:
        problems.append(f"{split}: {len(missing)} of {len(index.images)} image files missing under "
                        f"{os.path.join(root, split)} (first: {', '.join(missing[:3])})")
    for image_id in sorted(index.images)[:decode]:
        rec = index.images[image_id]
        try:
            read_image(index.image_path(image_id), (rec.height, rec.width))
        except ImageReadError as e:
            problems.append(str(e))
    return index, problems


def write_exemplar_index(index: CocoIndex, path: str, min_area: float) -> int:
    """Write the exemplar pool of ``index`` (all categories) as an exemplar list; returns its size."""
    pool = ExemplarPool.from_index(index, index.categories, min_area)
    entries = []
    for category_id in sorted(pool.by_category):
        for e in pool.by_category[category_id]:
            x0, y0, x1, y1 = e.box_xyxy
            entries.append({"category_id": category_id, "image_id": e.image_id, "ann_id": e.ann_id,
                            "file_name": index.images[e.image_id].file_name, "bbox": [x0, y0, x1 - x0, y1 - y0]})
    entries.sort(key=lambda d: d["ann_id"])
    write_json(path, {"min_area": min_area, "source": os.path.basename(index.path), "exemplars": entries}, indent=None)
    return len(entries)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--root", default="datasets/coco")
    p.add_argument("--splits", nargs="+", default=["train2017", "val2017"])
    p.add_argument("--min-area", type=float, default=32.0 * 32.0, help="as data.min_exemplar_area")
    p.add_argument("--decode", type=int, default=0, help="also decode this many images per split")
    args = p.parse_args(argv)
    failed = False
    for split in args.splits:
        try:
            index, problems = check_split(args.root, split, args.decode)
        except ValueError as e:
            print(f"FAIL {e}")
            failed = True
            continue
        for problem in problems:
            print(f"FAIL {problem}")
        failed |= bool(problems)
        print(f"{split}: {len(index.images)} images, {len(index.annotations)} boxes kept, "
              f"{index.num_dropped_boxes} degenerate boxes dropped")
        if split.startswith("val"):
            out = os.path.join(args.root, "annotations", f"exemplars_{split}.json")
            n = write_exemplar_index(index, out, args.min_area)
            print(f"wrote {out} ({n} exemplars)")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
