"""Exemplars (the support): the candidate pool, how one is chosen, and how it is cropped.

* Pool: the non-crowd, non-ignored instances of each category whose box area (after clipping to
  the image) is at least ``min_area`` pixels^2, in ascending annotation-id order; or a
  user-supplied exemplar list (:func:`read_exemplar_file`) that replaces it.
* Training choice (:meth:`ExemplarPool.sample`): uniform over the category's candidates from
  *other* images, drawn with the sample's generator; the query image's own instances are never
  used.
* Evaluation choice (:meth:`ExemplarPool.eval_choice`, PAPER.md section 5): the candidates of the
  category outside the query image, shuffled by a generator seeded with the query image id;
  run ``r`` takes position ``r`` (modulo the number of candidates). Identical in every process.
  With several exemplars per item (k-shot), shot 0 is that exemplar and shots ``1 .. k-1`` are the
  other candidates outside the image, shuffled by a generator seeded with (image id, category id,
  run), in that order (cycling when there are fewer than ``k - 1``).
* Crop (:func:`crop_support` on an array, :func:`crop_exemplar` on a PIL image with a user's
  ``x, y, w, h`` box, both by :func:`crop_box_with_margin`): the box enlarged by ``margin`` of its
  width / height on each side, clipped to the image, integer pixel bounds (floor / ceil).
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Iterable, Optional, Sequence

import numpy as np
from PIL import Image

from ..errors import InputError


@dataclass(frozen=True)
class Exemplar:
    """One exemplar instance.

    Attributes:
        category_id: its category.
        box_xyxy: ``(x0, y0, x1, y1)`` absolute pixels of its image.
        image_id: the image in the annotation file, or ``None`` for a user exemplar whose image is
            outside it (then ``file_name`` is set).
        ann_id: its annotation id, or ``None`` for user exemplars.
        file_name: image path (relative to the images folder, or absolute) when ``image_id`` is
            ``None``.
    """

    category_id: int
    box_xyxy: tuple[float, float, float, float]
    image_id: Optional[int] = None
    ann_id: Optional[int] = None
    file_name: Optional[str] = None


class ExemplarPool:
    """Candidate exemplars per category (see the module docstring for the choice rules).

    Args:
        exemplars: the candidates; their order within a category is the order used by
            :meth:`eval_choice`.
    """

    def __init__(self, exemplars: Iterable[Exemplar]):
        self.by_category: dict[int, list[Exemplar]] = {}
        for e in exemplars:
            self.by_category.setdefault(e.category_id, []).append(e)
        self._image_ids = {c: np.array([-1 if e.image_id is None else e.image_id for e in lst], dtype=np.int64)
                           for c, lst in self.by_category.items()}
        self._per_image: dict[tuple[int, int], int] = {}
        for c, lst in self.by_category.items():
            for e in lst:
                if e.image_id is not None:
                    self._per_image[c, e.image_id] = self._per_image.get((c, e.image_id), 0) + 1

    @classmethod
    def from_index(cls, index, category_ids: Iterable[int], min_area: float) -> "ExemplarPool":
        """The pool of a :class:`detector.data.coco_oneshot.CocoIndex` restricted to
        ``category_ids``: non-crowd, non-ignored boxes with area >= ``min_area`` pixels^2."""
        wanted = set(category_ids)
        chosen = [a for a in index.annotations
                  if a.category_id in wanted and not a.ignore and a.area >= min_area]
        chosen.sort(key=lambda a: a.id)
        return cls(Exemplar(a.category_id, a.box_xyxy, a.image_id, a.id) for a in chosen)

    def count(self, category_id: int, exclude_image: Optional[int] = None) -> int:
        """Number of candidates of a category outside ``exclude_image``."""
        total = len(self.by_category.get(category_id, ()))
        return total if exclude_image is None else total - self._per_image.get((category_id, exclude_image), 0)

    def sample(self, category_id: int, exclude_image: Optional[int], rng: np.random.Generator,
               max_tries: int = 8) -> Optional[Exemplar]:
        """A uniformly drawn candidate from an image other than ``exclude_image`` (``None`` if
        there is none). A few rejection draws, then an exact draw over the filtered list."""
        lst = self.by_category.get(category_id, [])
        if not lst:
            return None
        for _ in range(max_tries):
            e = lst[int(rng.integers(len(lst)))]
            if exclude_image is None or e.image_id != exclude_image:
                return e
        allowed = np.flatnonzero(self._image_ids[category_id] != exclude_image)
        return lst[int(allowed[rng.integers(len(allowed))])] if len(allowed) else None

    def sample_in_image(self, category_id: int, image_id: int, rng: np.random.Generator) -> Optional[Exemplar]:
        """A uniformly drawn candidate of ``image_id`` itself (``None`` if it holds none): the
        exemplar as a user gives it, a box in the photo searched."""
        inside = np.flatnonzero(self._image_ids.get(category_id, np.zeros(0, np.int64)) == image_id)
        return self.by_category[category_id][int(inside[rng.integers(len(inside))])] if len(inside) else None

    def eval_choice(self, category_id: int, image_id: int, run: int, shot: int = 0) -> Optional[Exemplar]:
        """The exemplar of run ``run`` for the item (``image_id``, ``category_id``): candidates
        outside the image, shuffled with ``numpy.random.default_rng(image_id)``, position
        ``run % len``. ``None`` when there is no candidate.

        ``shot > 0`` (k-shot): the other candidates outside the image, shuffled with
        ``default_rng([image_id, category_id, run])``, position ``(shot - 1) % len``; shot 0's own
        candidate again only when it is the only one."""
        ids = self._image_ids.get(category_id)
        if ids is None:
            return None
        allowed = np.flatnonzero(ids != image_id)
        if len(allowed) == 0:
            return None
        order = np.random.default_rng(int(image_id)).permutation(len(allowed))
        first = int(allowed[order[run % len(allowed)]])
        if shot == 0:
            return self.by_category[category_id][first]
        others = allowed[allowed != first] if len(allowed) > 1 else allowed
        extra = np.random.default_rng([int(image_id), int(category_id), int(run)]).permutation(len(others))
        return self.by_category[category_id][int(others[extra[(shot - 1) % len(others)]])]


def crop_box_with_margin(box_xyxy: Sequence[float], margin: float, image_hw: tuple[int, int]) -> tuple[int, int, int, int]:
    """Integer crop bounds ``(x0, y0, x1, y1)``: the box enlarged by ``margin`` of its width
    (height) on the left and right (top and bottom), clipped to the image, at least 1 pixel."""
    h, w = image_hw
    x0, y0, x1, y1 = (float(v) for v in box_xyxy)
    mx, my = margin * max(x1 - x0, 0.0), margin * max(y1 - y0, 0.0)
    ix0 = int(np.clip(np.floor(x0 - mx), 0, w - 1))
    iy0 = int(np.clip(np.floor(y0 - my), 0, h - 1))
    ix1 = int(np.clip(np.ceil(x1 + mx), ix0 + 1, w))
    iy1 = int(np.clip(np.ceil(y1 + my), iy0 + 1, h))
    return ix0, iy0, ix1, iy1


def crop_support(image: np.ndarray, box_xyxy: Sequence[float], margin: float) -> np.ndarray:
    """The exemplar crop of ``image`` (``[H, W, 3]``) around ``box_xyxy`` (absolute pixels) with a
    context ``margin`` (fraction of the box size on each side); ``[h, w, 3]``."""
    x0, y0, x1, y1 = crop_box_with_margin(box_xyxy, margin, image.shape[:2])
    return image[y0:y1, x0:x1]


def is_number(value) -> bool:
    """A real number: a Python or numpy integer or float, not a ``bool`` (nor text or complex)."""
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, (bool, np.bool_))


def as_box(value, what: str = "support box") -> tuple[float, float, float, float]:
    """``(x, y, w, h)`` as four floats from a sequence of four real numbers (``bool`` and text are
    not numbers); :class:`InputError` naming ``what`` otherwise. Finiteness and area are the
    caller's rules (:func:`crop_exemplar`)."""
    if isinstance(value, np.ndarray):
        value = value.tolist()
    if not isinstance(value, (list, tuple)) or len(value) != 4 or not all(is_number(v) for v in value):
        shown = repr(value) if len(repr(value)) <= 80 else repr(value)[:77] + "..."
        raise InputError(f"{what} must be x, y, w, h (four numbers); got {shown}")
    return tuple(float(v) for v in value)


def crop_exemplar(image: Image.Image, support_box: Optional[Sequence[float]], margin: float) -> Image.Image:
    """The exemplar of a support image: the whole ``image``, or ``support_box`` (``x, y, w, h``
    absolute pixels) enlarged by ``margin`` of its size on each side and clipped to the image, as
    :func:`crop_support` crops in training. :class:`InputError` for a box that is not four numbers,
    has zero area or lies outside the image."""
    if support_box is None:
        return image
    x, y, w, h = as_box(support_box)
    W, H = image.size
    if not all(np.isfinite([x, y, w, h])) or w <= 0 or h <= 0:
        raise InputError(f"support box {[x, y, w, h]} has zero area (width and height must be > 0)")
    if min(x + w, W) - max(x, 0.0) < 1 or min(y + h, H) - max(y, 0.0) < 1:
        raise InputError(f"support box {[x, y, w, h]} lies outside the support image ({W}x{H} pixels)")
    return image.crop(crop_box_with_margin((x, y, x + w, y + h), margin, (H, W)))


def read_exemplar_file(path: str, index, category_ids: Iterable[int]) -> ExemplarPool:
    """A user-supplied exemplar list that replaces the pool (same format as the exemplar index of
    ``datasets/prepare_coco.py``).

    Format: JSON, a list (or ``{"exemplars": [...]}``) of
    ``{"category_id": int (or "category": name), "bbox": [x, y, w, h] pixels,
    "image_id": int}`` where ``image_id`` is an image of the evaluated annotation file, or
    ``"file_name": path`` (relative to its images folder, or absolute) for any other image;
    optional ``"ann_id"`` is kept for reference. Entries keep the file's order.

    Raises:
        InputError (a ValueError): naming the file, the entry and the problem.
    """
    if not os.path.isfile(path):
        raise InputError(f"exemplar file not found: {path}")
    try:
        with open(path, "r", encoding="utf-8") as f:
            data = json.load(f)
    except json.JSONDecodeError as e:
        raise InputError(f"{path}: not valid JSON ({e})") from None
    entries = data.get("exemplars") if isinstance(data, dict) else data
    if not isinstance(entries, list):
        raise InputError(f"{path}: expected a list of exemplars or {{'exemplars': [...]}}")
    wanted = set(category_ids)
    by_name = {name: cid for cid, name in index.categories.items()}
    out = []
    for i, e in enumerate(entries):
        where = f"{path}: exemplar {i}"
        if not isinstance(e, dict):
            raise InputError(f"{where}: expected an object, got {type(e).__name__}")
        cid = e.get("category_id", by_name.get(e.get("category")))
        if not isinstance(cid, int) or cid not in index.categories:
            raise InputError(f"{where}: unknown category {e.get('category_id', e.get('category'))!r}")
        bbox = e.get("bbox")
        if (not isinstance(bbox, (list, tuple)) or len(bbox) != 4
                or not all(isinstance(v, (int, float)) and np.isfinite(v) for v in bbox) or bbox[2] <= 0 or bbox[3] <= 0):
            raise InputError(f"{where}: 'bbox' must be [x, y, w, h] with w, h > 0, got {bbox!r}")
        box = (float(bbox[0]), float(bbox[1]), float(bbox[0] + bbox[2]), float(bbox[1] + bbox[3]))
        image_id, file_name = e.get("image_id"), None
        if image_id is not None:
            if image_id not in index.images:
                raise InputError(f"{where}: image_id {image_id!r} is not in {index.path}")
        else:
            file_name = e.get("file_name")
            if not isinstance(file_name, str) or not file_name:
                raise InputError(f"{where}: needs an 'image_id' of the annotation file or a 'file_name'")
        ann_id = e.get("ann_id") if isinstance(e.get("ann_id"), int) else None
        if cid in wanted:
            out.append(Exemplar(cid, box, image_id, ann_id, file_name))
    return ExemplarPool(out)
