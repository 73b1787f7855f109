"""Reading and checking a COCO-format annotation file.

Rules:

* The file must be JSON with ``images``, ``annotations`` and ``categories`` lists; ids must be
  integers and unique; every annotation must name an existing image and category and carry
  ``bbox = [x, y, w, h]`` of finite numbers with ``w, h >= 0``. Anything else raises a
  :class:`~detector.errors.InputError` (a ``ValueError``) naming the file, the entry and the problem.
* Image ``width`` / ``height`` are taken from the file (read from the image header when absent).
* Boxes are clipped to the image; a box with less than :data:`MIN_BOX_SIDE` pixel of width or
  height left after clipping (zero area, or outside the image) is dropped, silently and
  deterministically; :attr:`CocoIndex.num_dropped_boxes` counts them.
* ``iscrowd: 1`` and VOC's ``difficult: 1`` (or ``ignore: 1``) make an annotation an *ignore*
  region: never a target, never an exemplar, ignored (not a false positive) by the evaluation.
"""
from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from typing import Optional

from ..errors import InputError
from .image_io import image_size

MIN_BOX_SIDE = 1.0  # pixels


@dataclass(frozen=True)
class ImageRecord:
    """An image of the annotation file: ``id``, ``file_name`` (relative to the images folder),
    ``height``, ``width`` (pixels, after EXIF orientation)."""

    id: int
    file_name: str
    height: int
    width: int


@dataclass(frozen=True)
class Annotation:
    """One instance: ``box_xyxy`` absolute pixels clipped to its image, ``area`` = box area
    (pixels^2), ``iscrowd``, and ``ignore`` (crowd or difficult: an ignore region)."""

    id: int
    image_id: int
    category_id: int
    box_xyxy: tuple[float, float, float, float]
    area: float
    iscrowd: bool
    ignore: bool


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


class CocoIndex:
    """A checked COCO-format annotation file (rules in the module docstring).

    Args:
        path: the annotation JSON.
        image_dir: folder of the images (used only to read sizes the file does not give).

    Attributes:
        images: id -> :class:`ImageRecord`. categories: id -> name. annotations: the kept
        :class:`Annotation` s. by_image: image id -> its annotations. num_dropped_boxes: boxes
        dropped by the clipping rule.
    """

    def __init__(self, path: str, image_dir: Optional[str] = None):
        self.path = path
        self.image_dir = image_dir
        if not os.path.isfile(path):
            raise InputError(f"annotation file not found: {path} (data.root and data.*_annotations give its path)")
        try:
            with open(path, "r", encoding="utf-8") as f:
                data = json.load(f)
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise InputError(f"{path}: not valid JSON ({e})") from None
        if not isinstance(data, dict):
            raise InputError(f"{path}: not a COCO annotation file (top level is a {type(data).__name__}, expected an object)")
        for key in ("images", "annotations", "categories"):
            if not isinstance(data.get(key), list):
                raise InputError(f"{path}: not a COCO annotation file: '{key}' must be a list "
                                 f"({'missing' if key not in data else type(data[key]).__name__})")
        self.categories = self._read_categories(data["categories"])
        self.images = self._read_images(data["images"])
        self.annotations: list[Annotation] = []
        self.num_dropped_boxes = 0
        seen_ids: set[int] = set()
        for i, a in enumerate(data["annotations"]):
            ann = self._read_annotation(i, a, seen_ids)
            if ann is None:
                self.num_dropped_boxes += 1
            else:
                self.annotations.append(ann)
        self.by_image: dict[int, list[Annotation]] = {i: [] for i in self.images}
        for a in self.annotations:
            self.by_image[a.image_id].append(a)

    def _error(self, what: str) -> InputError:
        return InputError(f"{self.path}: {what}")

    def _read_categories(self, entries: list) -> dict[int, str]:
        out: dict[int, str] = {}
        for i, c in enumerate(entries):
            if not isinstance(c, dict) or not _is_int(c.get("id")) or not isinstance(c.get("name"), str):
                raise self._error(f"category {i} must have an integer 'id' and a string 'name', got {c!r}")
            if c["id"] in out:
                raise self._error(f"duplicate category id {c['id']}")
            out[c["id"]] = c["name"]
        if not out:
            raise self._error("no categories")
        return out

    def _read_images(self, entries: list) -> dict[int, ImageRecord]:
        out: dict[int, ImageRecord] = {}
        for i, im in enumerate(entries):
            if not isinstance(im, dict) or not _is_int(im.get("id")) or not isinstance(im.get("file_name"), str):
                raise self._error(f"image {i} must have an integer 'id' and a string 'file_name', got {im!r}")
            if im["id"] in out:
                raise self._error(f"duplicate image id {im['id']}")
            h, w = im.get("height"), im.get("width")
            if h is None or w is None:
                if self.image_dir is None:
                    raise self._error(f"image {im['id']} has no width/height and no image folder was given to read them")
                h, w = image_size(os.path.join(self.image_dir, im["file_name"]))
            if not (_is_int(h) and _is_int(w) and h > 0 and w > 0):
                raise self._error(f"image {im['id']} ({im['file_name']}): width and height must be positive integers, "
                                  f"got {w!r} x {h!r}")
            out[im["id"]] = ImageRecord(im["id"], im["file_name"], h, w)
        return out

    def _read_annotation(self, i: int, a, seen_ids: set) -> Optional[Annotation]:
        if not isinstance(a, dict):
            raise self._error(f"annotation {i} is not an object")
        aid = a.get("id")
        if not _is_int(aid):
            raise self._error(f"annotation {i} has no integer 'id'")
        if aid in seen_ids:
            raise self._error(f"duplicate annotation id {aid}")
        seen_ids.add(aid)
        image = self.images.get(a.get("image_id")) if _is_int(a.get("image_id")) else None
        if image is None:
            raise self._error(f"annotation {aid}: image_id {a.get('image_id')!r} is not an image of the file")
        if not _is_int(a.get("category_id")) or a["category_id"] not in self.categories:
            raise self._error(f"annotation {aid}: category_id {a.get('category_id')!r} is not a category of the file")
        bbox = a.get("bbox")
        if not isinstance(bbox, (list, tuple)) or len(bbox) != 4 or not all(_is_number(v) for v in bbox):
            raise self._error(f"annotation {aid}: 'bbox' must be [x, y, w, h] of finite numbers, got {bbox!r}")
        x, y, w, h = (float(v) for v in bbox)
        if w < 0 or h < 0:
            raise self._error(f"annotation {aid}: negative box size in bbox {list(bbox)} (COCO boxes are [x, y, w, h])")
        flags = {}
        for key in ("iscrowd", "difficult", "ignore"):
            v = a.get(key, 0)
            if v not in (0, 1):  # True/False compare equal to 1/0
                raise self._error(f"annotation {aid}: '{key}' must be 0 or 1, got {v!r}")
            flags[key] = bool(v)
        x0, y0 = min(max(x, 0.0), image.width), min(max(y, 0.0), image.height)
        x1, y1 = min(max(x + w, 0.0), image.width), min(max(y + h, 0.0), image.height)
        if x1 - x0 < MIN_BOX_SIDE or y1 - y0 < MIN_BOX_SIDE:
            return None
        return Annotation(aid, image.id, a["category_id"], (x0, y0, x1, y1), (x1 - x0) * (y1 - y0),
                          flags["iscrowd"], flags["iscrowd"] or flags["difficult"] or flags["ignore"])

    def image_path(self, image_id: int) -> str:
        """Path of an image (``image_dir`` joined with its ``file_name``)."""
        return os.path.join(self.image_dir or "", self.images[image_id].file_name)

    def instance_counts(self) -> dict[int, int]:
        """Category id -> number of non-ignored instances."""
        counts = {c: 0 for c in self.categories}
        for a in self.annotations:
            if not a.ignore:
                counts[a.category_id] += 1
        return counts
