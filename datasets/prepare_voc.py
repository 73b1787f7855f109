"""Convert Pascal VOC XML annotations to COCO JSON for the one-shot VOC benchmark.

    python datasets/prepare_voc.py --devkit datasets/voc/VOCdevkit --out datasets/voc

Reads ``VOC2007`` and ``VOC2012`` under ``--devkit`` (``Annotations/*.xml``,
``ImageSets/Main/{trainval,test}.txt``, ``JPEGImages/``) and writes

* ``<out>/annotations/voc_trainval0712.json``: VOC2007 trainval + VOC2012 trainval,
* ``<out>/annotations/voc_test2007.json``: VOC2007 test,
* ``<out>/JPEGImages/``: symbolic links to both years' images (their names do not collide),

which is what ``configs/voc.yaml`` reads. Categories are the 20 VOC classes numbered 1..20 in
alphabetical order. Boxes: VOC's 1-based inclusive corners become COCO ``[xmin - 1, ymin - 1,
xmax - xmin + 1, ymax - ymin + 1]``. ``difficult`` is kept as a 0/1 flag on each annotation; the
one-shot datasets treat difficult objects as ignore regions (never targets or exemplars, and
neither true nor false positives in the evaluation), as VOC's own evaluation does.
"""
from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from detector.data.splits import VOC_CLASSES  # noqa: E402
from detector.data.voc_xml import parse_voc_xml  # noqa: E402
from detector.utils.atomic import write_json  # noqa: E402
from detector.utils.output_paths import check_output_path  # noqa: E402

SETS = {"voc_trainval0712.json": [("VOC2007", "trainval"), ("VOC2012", "trainval")],
        "voc_test2007.json": [("VOC2007", "test")]}


def _read_ids(devkit: str, year: str, image_set: str) -> list[str]:
    path = os.path.join(devkit, year, "ImageSets", "Main", f"{image_set}.txt")
    if not os.path.isfile(path):
        raise ValueError(f"image set list not found: {path}")
    with open(path, "r", encoding="utf-8") as f:
        return [line.strip() for line in f if line.strip()]


def convert(devkit: str, sets: list[tuple[str, str]]) -> tuple[dict, dict[str, str]]:
    """COCO dict of the listed (year, image set) pairs, and file name -> source image path."""
    categories = [{"id": i + 1, "name": n, "supercategory": "voc"} for i, n in enumerate(VOC_CLASSES)]
    cat_ids = {n: i + 1 for i, n in enumerate(VOC_CLASSES)}
    images, annotations, sources = [], [], {}
    for year, image_set in sets:
        for stem in _read_ids(devkit, year, image_set):
            parsed = parse_voc_xml(os.path.join(devkit, year, "Annotations", f"{stem}.xml"), VOC_CLASSES)
            file_name = f"{stem}.jpg"
            if file_name in sources:
                raise ValueError(f"{year}/{stem}: image name {file_name} occurs twice (another year or set)")
            sources[file_name] = os.path.join(devkit, year, "JPEGImages", file_name)
            image_id = len(images) + 1
            images.append({"id": image_id, "file_name": file_name, "width": parsed["width"], "height": parsed["height"],
                           "voc_year": year})
            for obj in parsed["objects"]:
                w, h = obj["bbox"][2], obj["bbox"][3]
                annotations.append({"id": len(annotations) + 1, "image_id": image_id, "category_id": cat_ids[obj["name"]],
                                    "bbox": obj["bbox"], "area": w * h, "iscrowd": 0, "difficult": obj["difficult"]})
    return {"images": images, "annotations": annotations, "categories": categories}, sources


def link_images(sources: dict[str, str], image_dir: str) -> int:
    """Symlink each source image into ``image_dir`` (existing links are kept); returns how many
    source files are missing."""
    os.makedirs(image_dir, exist_ok=True)
    missing = 0
    for name, src in sources.items():
        if not os.path.isfile(src):
            missing += 1
            continue
        dst = os.path.join(image_dir, name)
        if not os.path.lexists(dst):
            os.symlink(os.path.abspath(src), dst)
    return missing


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--devkit", default="datasets/voc/VOCdevkit", help="folder holding VOC2007/ and VOC2012/")
    p.add_argument("--out", default="datasets/voc", help="output root (annotations/ and JPEGImages/)")
    p.add_argument("--no-link", action="store_true", help="do not create the JPEGImages/ links")
    args = p.parse_args(argv)
    try:  # every annotation read and checked before anything is written
        check_output_path(args.out, "--out")
        converted = {out_name: convert(args.devkit, sets) for out_name, sets in SETS.items()}
    except (ValueError, OSError) as e:  # a missing list or XML file, a malformed annotation
        print(f"error: {e}", file=sys.stderr)
        return 2
    missing = 0
    for out_name, (data, sources) in converted.items():
        write_json(os.path.join(args.out, "annotations", out_name), data, indent=None)
        n_difficult = sum(a["difficult"] for a in data["annotations"])
        print(f"{out_name}: {len(data['images'])} images, {len(data['annotations'])} boxes ({n_difficult} difficult)")
        if not args.no_link:
            missing += link_images(sources, os.path.join(args.out, "JPEGImages"))
    if missing:
        print(f"warning: {missing} image files listed in the image sets were not found")
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
