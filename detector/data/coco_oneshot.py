"""One-shot datasets over any COCO-format annotation file, and their collate function.

Item dict (training and evaluation alike)::

    query_image    FloatTensor [3, h, w] in [0, 1]   the image searched, transformed, unpadded
    support_image  FloatTensor [3, hs, ws] in [0, 1] the exemplar crop, longer side = support_size
                   (evaluation with shots=k > 1: ``support_images``, a list of k such crops instead)
    target:
      boxes          FloatTensor [N, 4]  cxcywh normalised to the transformed, unpadded query image
      labels         LongTensor [N]      zeros (one class: "matches the exemplar"); N may be 0
      ignore_boxes   FloatTensor [M, 4]  crowd / difficult regions of that category, same format
      image_id, category_id  int         the query image and the queried category
      index          int                 evaluation only: the item's position in the dataset
      orig_size      LongTensor [2]      (h, w) of the original image file
      size           LongTensor [2]      (h, w) after the transforms

Training (:class:`OneShotDataset`): one item per image holding a target category with an
exemplar elsewhere; the category is drawn per sample (optionally weighted by inverse instance
frequency, as CoAE), the exemplar is a pool instance of that category from another image (for a
share ``same_image_share`` of the items, one in the query image itself, the user's case). All
randomness comes from ``numpy.random.default_rng([seed, epoch, index])``.

Evaluation (:class:`OneShotEvalDataset`): one item per (image, evaluated category with a
non-ignored instance in it); run ``r``'s exemplar is chosen as in docs/PAPER_NOTES.md section 5
(:meth:`detector.data.support.ExemplarPool.eval_choice`), and with ``shots=k`` the other ``k - 1``
from other images too, reproducibly (the same method). Optional "absent class" items query
categories the image does not contain; they come after the comparable items.
"""
from __future__ import annotations

import os
from collections import OrderedDict
from dataclasses import dataclass
from typing import Iterable, Optional, Union

import numpy as np
import torch
from torch.utils.data import Dataset

from ..errors import InputError
from ..structures import ImageBatch
from ..utils.box_ops import box_xyxy_to_cxcywh
from .coco_index import CocoIndex
from .image_io import read_image
from .support import Exemplar, ExemplarPool, crop_support, read_exemplar_file
from .transforms import QueryTransform, SupportTransform, jitter_support_box


def _as_index(annotations: Union[str, CocoIndex], image_dir: str) -> CocoIndex:
    return annotations if isinstance(annotations, CocoIndex) else CocoIndex(annotations, image_dir)


def _target(boxes_xyxy: np.ndarray, ignore: np.ndarray, image_id: int, category_id: int,
            orig_hw: tuple[int, int], size_hw: tuple[int, ...]) -> dict:
    boxes = torch.as_tensor(boxes_xyxy, dtype=torch.float32).reshape(-1, 4)
    keep = torch.as_tensor(~np.asarray(ignore, dtype=bool)).reshape(-1)
    cxcywh = box_xyxy_to_cxcywh(boxes)
    return {
        "boxes": cxcywh[keep],
        "labels": torch.zeros(int(keep.sum()), dtype=torch.long),
        "ignore_boxes": cxcywh[~keep],
        "image_id": int(image_id),
        "category_id": int(category_id),
        "orig_size": torch.tensor(orig_hw, dtype=torch.long),
        "size": torch.tensor(size_hw, dtype=torch.long),
    }


class _OneShotBase(Dataset):
    """Shared reading of query images and exemplar crops."""

    def __init__(self, index: CocoIndex, image_dir: str, support_size: int, support_margin: float,
                 cache_mb: float = 0.0):
        self.index = index
        self.image_dir = image_dir
        self.support_size = int(support_size)
        self.support_margin = float(support_margin)
        self.cache_bytes = int(cache_mb * 2 ** 20)
        self._cache: OrderedDict[int, np.ndarray] = OrderedDict()
        self._cached_bytes = 0

    def _read(self, image_id: int) -> np.ndarray:
        """Decoded image (read-only when cached: an LRU of decoded images up to ``cache_mb``)."""
        image = self._cache.get(image_id)
        if image is not None:
            self._cache.move_to_end(image_id)
            return image
        rec = self.index.images[image_id]
        image = read_image(os.path.join(self.image_dir, rec.file_name), (rec.height, rec.width))
        if self.cache_bytes > 0 and image.nbytes <= self.cache_bytes:
            image.setflags(write=False)
            self._cache[image_id] = image
            self._cached_bytes += image.nbytes
            while self._cached_bytes > self.cache_bytes:
                self._cached_bytes -= self._cache.popitem(last=False)[1].nbytes
        return image

    def _query_boxes(self, image_id: int, category_id: int) -> tuple[np.ndarray, np.ndarray]:
        anns = [a for a in self.index.by_image[image_id] if a.category_id == category_id]
        boxes = np.array([a.box_xyxy for a in anns], dtype=np.float64).reshape(-1, 4)
        return boxes, np.array([a.ignore for a in anns], dtype=bool)

    def _support(self, exemplar: Exemplar, transform: SupportTransform, rng: Optional[np.random.Generator]) -> torch.Tensor:
        if exemplar.image_id is not None:
            image = self._read(exemplar.image_id)
        else:
            path = exemplar.file_name if os.path.isabs(exemplar.file_name) else os.path.join(self.image_dir, exemplar.file_name)
            image = read_image(path)
        box = np.asarray(exemplar.box_xyxy, dtype=np.float64)
        if rng is not None and transform.augmentation is not None:
            box = jitter_support_box(box, rng)
        return transform(crop_support(image, box, self.support_margin), rng)


class OneShotDataset(_OneShotBase):
    """Training items (module docstring) over a COCO-format file, restricted to ``category_ids``.

    Args:
        annotations: annotation file path or a loaded :class:`CocoIndex`.
        image_dir: folder the images' ``file_name`` s are relative to.
        category_ids: the categories that may be queried (the seen categories).
        support_size: side of the square the exemplar crop is fitted into.
        query_transform: e.g. ``QueryTransform(train=True, augment=True, ...)``.
        support_margin: context around the exemplar box (fraction of its size per side).
        min_exemplar_area: pool instances need a box area of at least this (pixels^2).
        augment_support: support scale and colour jitter.
        class_balanced: draw the category with probability proportional to 1 / its instance count.
        seed: base seed (non-negative); with :meth:`set_epoch` and the index it seeds each sample.
        stage: ``"oneshot"``, or ``"pretrain"``: UP-DETR-style, the exemplar is a random patch of
            the query image itself and the target is that patch (``category_id`` 0).
        cache_mb: memory for decoded images kept between samples (per process; 0: none).
        shots: exemplars per item (k-shot training; 1: the one-shot item, unchanged). With ``k > 1``
            each item carries ``support_images``: ``k`` exemplars drawn independently from other
            images, or, for a share ``single_share`` of the items (drawn per sample), one exemplar
            ``k`` times, which the k-shot model treats as one exemplar (:mod:`detector.models.kshot`):
            one model then learns both cases.
        single_share: see ``shots``.
        same_image_share: share of the items (drawn per sample) whose exemplar is an instance of
            the query image itself, when it holds one large enough (it is then also a target): a
            user's case, a box in the photo searched. The others take it from another image.
    """

    def __init__(self, annotations: Union[str, CocoIndex], image_dir: str, category_ids: Iterable[int], *,
                 support_size: int, query_transform: QueryTransform, support_margin: float = 0.1,
                 min_exemplar_area: float = 1024.0, augment_support: bool = True, class_balanced: bool = False,
                 seed: int = 0, stage: str = "oneshot", cache_mb: float = 0.0, shots: int = 1,
                 single_share: float = 0.5, same_image_share: float = 0.0):
        super().__init__(_as_index(annotations, image_dir), image_dir, support_size, support_margin, cache_mb)
        if shots < 1 or not 0.0 <= single_share <= 1.0 or not 0.0 <= same_image_share <= 1.0:
            raise ValueError(f"shots must be >= 1 and single_share, same_image_share in [0, 1], "
                             f"got {shots}, {single_share}, {same_image_share}")
        self.shots, self.single_share, self.same_image_share = int(shots), float(single_share), float(same_image_share)
        if seed < 0:
            raise ValueError(f"seed must be non-negative, got {seed}")
        if stage not in ("oneshot", "pretrain"):
            raise ValueError(f"stage must be 'oneshot' or 'pretrain', got {stage!r}")
        self.category_ids = sorted(set(category_ids))
        self.query_transform = query_transform
        self.support_transform = SupportTransform(support_size, augment_support)
        self.seed, self.epoch, self.stage = int(seed), 0, stage
        self.pool = ExemplarPool.from_index(self.index, self.category_ids, min_exemplar_area)
        counts = self.index.instance_counts()
        self.class_weight = {c: (1.0 / counts[c] if class_balanced and counts[c] else 1.0) for c in self.category_ids}
        wanted = set(self.category_ids)
        self.image_ids: list[int] = []
        self.choices: list[tuple[int, ...]] = []
        for image_id in sorted(self.index.images):
            present = sorted({a.category_id for a in self.index.by_image[image_id] if not a.ignore and a.category_id in wanted})
            usable = tuple(c for c in present if self.pool.count(c, exclude_image=image_id) > 0)
            if usable:
                self.image_ids.append(image_id)
                self.choices.append(usable)
        if not self.image_ids:
            raise InputError(f"{self.index.path}: no image holds a queried category with an exemplar in another image "
                             f"(categories {self.category_ids[:10]}..., min_exemplar_area={min_exemplar_area})")

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch: samples are drawn with ``default_rng([seed, epoch, index])``."""
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.image_ids)

    def sample_rng(self, index: int) -> np.random.Generator:
        """The generator of sample ``index`` in the current epoch."""
        return np.random.default_rng([self.seed, self.epoch, int(index)])

    def choose(self, index: int, rng: np.random.Generator) -> tuple[int, Exemplar]:
        """(queried category, exemplar) of sample ``index``, drawn with ``rng`` (with
        ``same_image_share = 0`` the draws are those of the one-shot protocol alone)."""
        image_id, cats = self.image_ids[index], self.choices[index]
        weights = np.array([self.class_weight[c] for c in cats], dtype=np.float64)
        category_id = cats[int(rng.choice(len(cats), p=weights / weights.sum()))]
        if self.same_image_share > 0 and rng.random() < self.same_image_share:
            inside = self.pool.sample_in_image(category_id, image_id, rng)
            if inside is not None:
                return category_id, inside
        return category_id, self.pool.sample(category_id, image_id, rng)

    def __getitem__(self, index: int) -> dict:
        rng = self.sample_rng(index)
        image_id = self.image_ids[index]
        rec = self.index.images[image_id]
        image = self._read(image_id)
        if self.stage == "pretrain":
            return self._pretrain_item(image, image_id, rng)
        category_id, exemplar = self.choose(index, rng)
        boxes, ignore = self._query_boxes(image_id, category_id)
        query, boxes_n, ignore_n = self.query_transform(image, boxes, ignore, rng)
        support = self._support(exemplar, self.support_transform, rng)
        target = _target(boxes_n, ignore_n, image_id, category_id, (rec.height, rec.width), tuple(query.shape[1:]))
        if self.shots > 1:  # after every draw of the one-shot item, so that shots=1 draws exactly as before
            if rng.random() < self.single_share:
                supports = [support] * self.shots
            else:
                extra = [self.pool.sample(category_id, image_id, rng) for _ in range(self.shots - 1)]
                supports = [support] + [self._support(e, self.support_transform, rng) for e in extra]
            return {"query_image": query, "support_images": supports, "target": target}
        return {"query_image": query, "support_image": support, "target": target}

    def _pretrain_item(self, image: np.ndarray, image_id: int, rng: np.random.Generator) -> dict:
        h, w = image.shape[:2]
        pw, ph = w * rng.uniform(0.1, 0.5), h * rng.uniform(0.1, 0.5)
        x0, y0 = rng.uniform(0, w - pw), rng.uniform(0, h - ph)
        patch = np.array([[x0, y0, x0 + pw, y0 + ph]])
        query, boxes_n, ignore_n = self.query_transform(image, patch, np.zeros(1, bool), rng)
        support = self.support_transform(crop_support(image, patch[0], 0.0), rng)
        return {"query_image": query, "support_image": support,
                "target": _target(boxes_n, ignore_n, image_id, 0, (h, w), tuple(query.shape[1:]))}


@dataclass(frozen=True)
class EvalItem:
    """An evaluation item: the query image, the queried category, and whether the category is
    present in the image (``False`` only for "absent class" items)."""

    image_id: int
    category_id: int
    present: bool = True


class OneShotEvalDataset(_OneShotBase):
    """Evaluation items (module docstring): deterministic resize, no augmentation.

    Args:
        annotations: annotation file path or a loaded :class:`CocoIndex`.
        image_dir: folder of the images.
        category_ids: the evaluated categories (seen and unseen).
        support_size, support_margin, min_exemplar_area: as for :class:`OneShotDataset`.
        eval_size: longer side of the resized query image.
        exemplar_file: optional user exemplar list replacing the pool
            (:func:`detector.data.support.read_exemplar_file`).
        absent_per_image: "absent class" items per image: this many evaluated categories without
            any annotation in the image, drawn with ``default_rng([image_id, 1])`` (0: none).
        cache_mb: memory for decoded images kept between items and runs (per process; an item's
            query image is also other items' query and exemplar image).
        split_name: which evaluation set this is (``"val"`` or ``"test"``), recorded in the metrics.
        shots: exemplars per item (k-shot); shot 0 is the one-shot exemplar, so ``shots=1`` is the
            one-shot protocol, unchanged.

    Attributes:
        items: the :class:`EvalItem` s, comparable (present) items first, ordered by image id
            then category id. num_skipped: present (image, category) pairs left out because no
            exemplar outside the image exists.
    """

    def __init__(self, annotations: Union[str, CocoIndex], image_dir: str, category_ids: Iterable[int], *,
                 support_size: int, eval_size: int, support_margin: float = 0.1, min_exemplar_area: float = 1024.0,
                 exemplar_file: str = "", absent_per_image: int = 0, cache_mb: float = 512.0,
                 split_name: str = "val", shots: int = 1):
        super().__init__(_as_index(annotations, image_dir), image_dir, support_size, support_margin, cache_mb)
        if shots < 1:
            raise ValueError(f"shots must be >= 1, got {shots}")
        self.split_name = split_name
        self.shots = int(shots)
        self.category_ids = sorted(set(category_ids))
        self.query_transform = QueryTransform(train=False, eval_size=eval_size)
        self.support_transform = SupportTransform(support_size, augment=False)
        if exemplar_file:
            self.pool = read_exemplar_file(exemplar_file, self.index, self.category_ids)
        else:
            self.pool = ExemplarPool.from_index(self.index, self.category_ids, min_exemplar_area)
        self.run = 0
        wanted = set(self.category_ids)
        present_items, absent_items, self.num_skipped = [], [], 0
        for image_id in sorted(self.index.images):
            anns = self.index.by_image[image_id]
            for c in sorted({a.category_id for a in anns if not a.ignore and a.category_id in wanted}):
                if self.pool.count(c, exclude_image=image_id) > 0:
                    present_items.append(EvalItem(image_id, c, True))
                else:
                    self.num_skipped += 1
            if absent_per_image > 0:
                mentioned = {a.category_id for a in anns}
                absent = [c for c in self.category_ids if c not in mentioned and self.pool.count(c) > 0]
                if absent:
                    picks = np.random.default_rng([image_id, 1]).permutation(len(absent))[:absent_per_image]
                    absent_items.extend(EvalItem(image_id, absent[int(i)], False) for i in sorted(picks))
        self.items: list[EvalItem] = present_items + absent_items

    def set_run(self, run: int) -> None:
        """Select the exemplar run (0-based): item exemplars change, nothing else."""
        self.run = int(run)

    def __len__(self) -> int:
        return len(self.items)

    def exemplar(self, index: int, run: Optional[int] = None, shot: int = 0) -> Exemplar:
        """The exemplar of item ``index`` in run ``run`` (default: the current run); ``shot`` picks
        one of its ``shots`` exemplars (0: the one-shot exemplar)."""
        item = self.items[index]
        return self.pool.eval_choice(item.category_id, item.image_id, self.run if run is None else run, shot)

    def ground_truth(self, index: int) -> list[dict]:
        """Item ``index``'s ground truth for COCOeval: the queried category's instances in the
        image, ``{"bbox": [x, y, w, h] original pixels, "area", "iscrowd"}`` (``iscrowd`` = 1
        for ignore regions: crowd and difficult)."""
        item = self.items[index]
        out = []
        for a in self.index.by_image[item.image_id]:
            if a.category_id == item.category_id:
                x0, y0, x1, y1 = a.box_xyxy
                out.append({"bbox": [x0, y0, x1 - x0, y1 - y0], "area": a.area, "iscrowd": int(a.ignore)})
        return out

    def support_image(self, index: int, run: Optional[int] = None, shot: int = 0) -> torch.Tensor:
        """The exemplar crop ``[3, hs, ws]`` of item ``index`` in run ``run`` (default: the current
        run), shot ``shot``."""
        return self._support(self.exemplar(index, run, shot), self.support_transform, None)

    def __getitem__(self, index: int) -> dict:
        item = self.items[index]
        rec = self.index.images[item.image_id]
        boxes, ignore = self._query_boxes(item.image_id, item.category_id)
        query, boxes_n, ignore_n = self.query_transform(self._read(item.image_id), boxes, ignore)
        target = _target(boxes_n, ignore_n, item.image_id, item.category_id, (rec.height, rec.width),
                         tuple(query.shape[1:]))
        target["index"] = index
        if self.shots > 1:
            supports = [self.support_image(index, shot=s) for s in range(self.shots)]
            return {"query_image": query, "support_images": supports, "target": target}
        return {"query_image": query, "support_image": self.support_image(index), "target": target}


def collate_supports(supports: list[torch.Tensor]) -> ImageBatch:
    """Exemplar crops ``[3, hs, ws]`` padded to exactly ``S x S``, ``S`` = the largest crop side,
    which is ``support_size`` (every crop's longer side is ``support_size``); the mask marks the
    padding."""
    side = max(max(int(s.shape[1]), int(s.shape[2])) for s in supports)
    return ImageBatch.from_tensors(supports, size_divisibility=side)  # rounds every side up to exactly `side`


def collate_oneshot(items: list[dict]) -> tuple[ImageBatch, ImageBatch | list[ImageBatch], list[dict]]:
    """Items -> ``(query, support, targets)``.

    ``query``: the query images padded to a common size (multiple of 32). ``support``: the
    exemplar crops (:func:`collate_supports`); for items with ``support_images`` (k-shot), a list
    of ``k`` such batches, batch ``s`` holding every item's exemplar ``s``. ``targets``: the items'
    target dicts.
    """
    query = ImageBatch.from_tensors([it["query_image"] for it in items], size_divisibility=32)
    targets = [it["target"] for it in items]
    if "support_images" in items[0]:
        k = len(items[0]["support_images"])
        if any(len(it["support_images"]) != k for it in items):
            raise ValueError("every item of a batch needs the same number of exemplars")
        return query, [collate_supports([it["support_images"][s] for it in items]) for s in range(k)], targets
    return query, collate_supports([it["support_image"] for it in items]), targets
