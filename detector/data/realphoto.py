"""The real-photo benchmark: the four annotated aerial tiles of ``deepforest`` as one-shot pairs.

``deepforest==2.1.0`` (MIT) ships, in ``deepforest/data/``, four RGB tiles with a Pascal VOC XML
each (:data:`TILES`): ``OSBS_029`` (400x400, 61 trees), ``SOAP_061`` (400x400, 37 boxes named
``Alive`` / ``Dead``), ``2019_YELL_2_541000_4977000_image_crop`` (1249x1035, 279 trees) and
``2019_YELL_2_528000_4978000_image_crop2`` (2299x2472, 574 trees). The package's unannotated
photos (``SOAP_031.png``, the drone JPG) and ``OSBS_029.tif`` (the same pixels as the PNG) are not
part of it. The files are found without importing the package (:mod:`detector.data.photo_packages`).

:func:`prepare_realphoto` writes, into one folder:

* ``images/<tile>.png``: the four tiles, copied;
* ``annotations.json``: COCO, image ids 1..4 in :data:`TILES` order, one category (id 1,
  ``tree``); boxes by the VOC conventions of :mod:`detector.data.voc_xml`; ``iscrowd`` 0,
  ``area = w * h``, and the XML's object name kept as ``label``;
* ``pairs.json``: ``{"pairs": [...]}``, each ``{"id", "mode", "query_image_id",
  "support_image_id", "support_box" [x, y, w, h] pixels, "support_annotation_id"}``: mode
  ``same_image`` (each tile queried with its own exemplar, 4 pairs, ids 1..4) then
  ``other_image`` (each tile queried with each other tile's exemplar, 12 pairs, ordered by query
  then support tile). A tile's exemplar is its median-size tree (:func:`median_exemplar`);
* ``meta.json``: source package and version, the sha256 of every source file, the counts.
"""
from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from ..errors import InputError
from ..utils.digest import sha256_of
from .folders import partial_folder, publish_folder
from .image_io import image_size
from .photo_packages import DEFAULT_DIR, ENV_VAR, find_package_file, package_version
from .voc_xml import parse_voc_xml

PACKAGE = "deepforest"
PACKAGE_VERSION = "2.1.0"  # the version whose tiles the benchmark's numbers are about (recorded, not enforced)
TILES = ("OSBS_029", "SOAP_061", "2019_YELL_2_541000_4977000_image_crop", "2019_YELL_2_528000_4978000_image_crop2")
LABELS = ("Tree", "Alive", "Dead")  # XML object names; all count as a tree
CATEGORY = {"id": 1, "name": "tree", "supercategory": "tree"}
MODES = ("same_image", "other_image")
FORMAT_VERSION = 1  # of the files written here; a folder of another version is refused


def find_tiles(extra_dirs: Sequence[str] = ()) -> list[tuple[str, str]]:
    """``(png, xml)`` paths of the :data:`TILES`, from the installed package.

    Raises:
        InputError: the package or one of its files is missing (one line saying how to install it).
    """
    found = []
    for stem in TILES:
        png = find_package_file(PACKAGE, f"data/{stem}.png", extra_dirs)
        xml = find_package_file(PACKAGE, f"data/{stem}.xml", extra_dirs)
        if png is None or xml is None:
            searched = ", ".join(list(extra_dirs) + [f"${ENV_VAR}", DEFAULT_DIR])
            raise InputError(f"{PACKAGE}/data/{stem}.png and .xml not found (searched {searched} and the import "
                             f"path): run `make setup`, or `pip install --no-deps --target .venv/photo-packages "
                             f"-r requirements-photos.txt`")
        found.append((png, xml))
    return found


def read_tile(png: str, xml: str, image_id: int, first_annotation_id: int) -> tuple[dict, list[dict]]:
    """One tile -> (COCO image, COCO annotations with ids from ``first_annotation_id``).

    The XML's ``<size>`` must match the PNG (its ``<filename>`` is not used: ``OSBS_029.xml``
    names the ``.tif``). :class:`InputError` for a malformed XML or a size mismatch."""
    try:
        parsed = parse_voc_xml(xml, LABELS)
        height, width = image_size(png)
    except ValueError as e:
        raise InputError(str(e)) from None
    if (parsed["width"], parsed["height"]) != (width, height):
        raise InputError(f"{xml}: says {parsed['width']}x{parsed['height']} pixels but {png} is {width}x{height}")
    image = {"id": image_id, "file_name": os.path.basename(png), "width": width, "height": height}
    annotations = [{"id": first_annotation_id + k, "image_id": image_id, "category_id": CATEGORY["id"],
                    "bbox": obj["bbox"], "area": obj["bbox"][2] * obj["bbox"][3], "iscrowd": 0, "label": obj["name"]}
                   for k, obj in enumerate(parsed["objects"])]
    return image, annotations


def median_exemplar(annotations: Sequence[dict]) -> dict:
    """The median-size annotation: sorted by ``sqrt(w * h)`` (then id, so ties are deterministic),
    the one at index ``len // 2``. :class:`InputError` when there is none."""
    if not annotations:
        raise InputError("an image without annotations has no exemplar")
    ranked = sorted(annotations, key=lambda a: ((a["bbox"][2] * a["bbox"][3]) ** 0.5, a["id"]))
    return ranked[len(ranked) // 2]


def treeless_box(annotations: Sequence[dict], width: int, height: int, size: tuple[float, float]) -> list[float]:
    """A box ``[x, y, w, h]`` of ``size`` (w, h) inside the image, placed (on a half-box grid,
    first in row order among ties) as far as possible from every annotated box: the exemplar of
    the probe that asks whether the exemplar matters (``tools/analysis/realphoto_probe.py``)."""
    w, h = float(size[0]), float(size[1])
    boxes = np.array([a["bbox"] for a in annotations], dtype=np.float64).reshape(-1, 4)
    best, where = -1.0, [0.0, 0.0, w, h]
    for y in np.arange(0.0, max(height - h, 0.0) + 1e-9, h / 2):
        for x in np.arange(0.0, max(width - w, 0.0) + 1e-9, w / 2):
            dx = np.maximum(0.0, np.maximum(boxes[:, 0] - (x + w), x - (boxes[:, 0] + boxes[:, 2])))
            dy = np.maximum(0.0, np.maximum(boxes[:, 1] - (y + h), y - (boxes[:, 1] + boxes[:, 3])))
            gap = float(np.hypot(dx, dy).min()) if len(boxes) else float("inf")
            if gap > best:
                best, where = gap, [float(x), float(y), w, h]
    return where


def make_pairs(images: Sequence[dict], annotations: Sequence[dict]) -> list[dict]:
    """The one-shot pairs (module docstring): ``len(images)`` same-image pairs, then
    ``len(images) * (len(images) - 1)`` other-image pairs, ids from 1."""
    exemplar = {im["id"]: median_exemplar([a for a in annotations if a["image_id"] == im["id"]]) for im in images}
    combos = [("same_image", im["id"], im["id"]) for im in images]
    combos += [("other_image", q["id"], s["id"]) for q in images for s in images if s["id"] != q["id"]]
    return [{"id": k + 1, "mode": mode, "query_image_id": query, "support_image_id": support,
             "support_box": list(exemplar[support]["bbox"]), "support_annotation_id": exemplar[support]["id"]}
            for k, (mode, query, support) in enumerate(combos)]


def build_realphoto(tiles: Sequence[tuple[str, str]]) -> tuple[dict, list[dict], dict]:
    """``(coco, pairs, meta)`` of the tiles ``[(png, xml)]``; ``meta`` without the package version."""
    images, annotations = [], []
    for png, xml in tiles:
        image, anns = read_tile(png, xml, len(images) + 1, len(annotations) + 1)
        images.append(image)
        annotations.extend(anns)
    coco = {"images": images, "annotations": annotations, "categories": [CATEGORY]}
    pairs = make_pairs(images, annotations)
    files = {os.path.basename(p): sha256_of(p) for tile in tiles for p in tile}
    instances = {im["file_name"]: sum(a["image_id"] == im["id"] for a in annotations) for im in images}
    meta = {"benchmark": "realphoto", "format_version": FORMAT_VERSION, "files": files, "num_images": len(images),
            "num_instances": instances, "num_pairs": {mode: sum(p["mode"] == mode for p in pairs) for mode in MODES}}
    return coco, pairs, meta


def _write_json(path: str, data) -> None:
    with open(path, "w", encoding="utf-8") as f:
        json.dump(data, f, indent=1)


def _check_existing(root: str, meta: dict) -> bool:
    """True when ``root`` already holds this benchmark; :class:`InputError` when it holds anything else."""
    meta_path = os.path.join(root, "meta.json")
    if not os.path.isfile(meta_path):
        if os.path.isdir(root) and os.listdir(root):
            raise InputError(f"{root} exists and is not a real-photo benchmark (no meta.json); choose another --out")
        return False
    with open(meta_path, "r", encoding="utf-8") as f:
        old = json.load(f)
    if (old.get("format_version"), old.get("files")) != (meta["format_version"], meta["files"]):
        raise InputError(f"{root} holds a real-photo benchmark of other source files or format version "
                         f"{old.get('format_version')}; delete the folder, use --force, or choose another --out")
    return True


def prepare_realphoto(out: str, extra_dirs: Sequence[str] = (), force: bool = False) -> dict:
    """Write the benchmark into ``out`` (module docstring) and return its ``meta.json`` content.

    Idempotent: a folder that already holds the same benchmark is left as it is; one holding other
    data is refused (:class:`InputError`), unless it is a real-photo benchmark of other content and
    ``force`` is set (then it is replaced). The files are
    written into a temporary folder renamed into place. ``extra_dirs`` are searched for the package
    first (:func:`detector.data.photo_packages.search_dirs`)."""
    tiles = find_tiles(extra_dirs)
    coco, pairs, meta = build_realphoto(tiles)
    meta = {**meta, "source": {"package": PACKAGE, "version": package_version(PACKAGE, extra_dirs),
                               "license": "MIT", "folder": os.path.dirname(tiles[0][0])}}
    if force and os.path.isfile(os.path.join(out, "meta.json")) and load_meta(out).get("benchmark") == "realphoto":
        shutil.rmtree(out)  # only a real-photo benchmark is ever deleted
    if _check_existing(out, meta):
        return load_meta(out)
    tmp = partial_folder(out)
    os.makedirs(os.path.join(tmp, "images"))
    for png, _ in tiles:
        shutil.copyfile(png, os.path.join(tmp, "images", os.path.basename(png)))
    _write_json(os.path.join(tmp, "annotations.json"), coco)
    _write_json(os.path.join(tmp, "pairs.json"), {"pairs": pairs})
    _write_json(os.path.join(tmp, "meta.json"), meta)
    publish_folder(tmp, out)  # out is missing or empty (checked above)
    return meta


def load_meta(root: str) -> dict:
    """``<root>/meta.json``."""
    with open(os.path.join(root, "meta.json"), "r", encoding="utf-8") as f:
        return json.load(f)


@dataclass
class RealPhotoBenchmark:
    """A prepared benchmark folder, read.

    Attributes:
        root: the folder.
        images: image id -> COCO image dict (``file_name``, ``width``, ``height``).
        instances: image id -> its COCO annotations (``bbox`` xywh pixels, ``label``).
        pairs: the pairs of ``pairs.json`` in file order.
    """

    root: str
    images: dict[int, dict]
    instances: dict[int, list[dict]]
    pairs: list[dict]

    def image_path(self, image_id: int) -> str:
        """Path of image ``image_id``'s file."""
        return os.path.join(self.root, "images", self.images[image_id]["file_name"])


def _read_json(path: str):
    if not os.path.isfile(path):
        raise InputError(f"{path} not found: is {os.path.dirname(path)} a folder written by "
                         f"datasets/prepare_realphoto.py?")
    try:
        with open(path, "r", encoding="utf-8") as f:
            return json.load(f)
    except json.JSONDecodeError as e:
        raise InputError(f"{path}: not valid JSON ({e})") from None


def load_realphoto(root: str) -> RealPhotoBenchmark:
    """Read a folder written by :func:`prepare_realphoto`. :class:`InputError` naming the file for
    a missing file, or a pair whose image ids or mode are unknown."""
    coco = _read_json(os.path.join(root, "annotations.json"))
    pairs = _read_json(os.path.join(root, "pairs.json")).get("pairs", [])
    try:
        images = {int(im["id"]): im for im in coco["images"]}
        instances = {i: [a for a in coco["annotations"] if a["image_id"] == i] for i in images}
    except (KeyError, TypeError, ValueError) as e:
        raise InputError(f"{os.path.join(root, 'annotations.json')}: not a COCO file ({e!r})") from None
    for p in pairs:
        if p.get("mode") not in MODES or not {p.get("query_image_id"), p.get("support_image_id")} <= set(images):
            raise InputError(f"{os.path.join(root, 'pairs.json')}: pair {p.get('id')} names an unknown mode or image")
    if not pairs:
        raise InputError(f"{os.path.join(root, 'pairs.json')}: no pairs")
    return RealPhotoBenchmark(root, images, instances, pairs)
