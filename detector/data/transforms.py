"""Image transforms: the augmentation recipes (albumentations) and the deterministic resizes.

Boxes are handled as absolute ``xyxy`` pixels of the image being transformed and returned
normalised to the transformed image, which a resize does not change, so resizing is done last
(OpenCV: area averaging when shrinking, bilinear when enlarging) and never touches the boxes.

Recipes, one function each:

* :func:`query_train_augmentation`: horizontal flip, random crop (up to 25 % off each side, half the
  time), colour jitter. Then :class:`QueryTransform` resizes to a random shorter side, capped.
* :func:`jitter_support_box` + :func:`support_train_augmentation`: the exemplar box is rescaled
  and shifted a little (scale jitter) before cropping; the crop gets colour jitter.
* Evaluation (and training with ``augment=False``): deterministic resizing only.

Randomness comes only from the ``numpy.random.Generator`` passed in (albumentations is re-seeded
from it on each call), so a sample depends on nothing but its own generator.
"""
from __future__ import annotations

import os
from typing import Optional

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")  # albumentations otherwise polls PyPI on import

import albumentations as A  # noqa: E402
import cv2  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

# A target box with less than this fraction of its area left inside a random crop becomes an
# ignore region: too little is visible to call it a positive, too much to call it background.
MIN_CROP_VISIBILITY = 0.3


def query_train_augmentation() -> A.Compose:
    """The query image's training recipe: flip, random crop, colour jitter (boxes follow)."""
    return A.Compose(
        [
            A.HorizontalFlip(p=0.5),
            A.CropAndPad(percent=(-0.25, 0.0), keep_size=False, sample_independently=True, p=0.5),
            A.ColorJitter(brightness=0.3, contrast=0.3, saturation=0.3, hue=0.02, p=0.8),
        ],
        bbox_params=A.BboxParams(format="pascal_voc", label_fields=["box_index"], clip=True),
    )


def support_train_augmentation() -> A.Compose:
    """The exemplar crop's training colour recipe (its scale jitter is :func:`jitter_support_box`)."""
    return A.Compose([A.ColorJitter(brightness=0.3, contrast=0.3, saturation=0.3, hue=0.02, p=0.8)])


def jitter_support_box(box_xyxy: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Support scale jitter: the exemplar box rescaled by a factor in ``[0.85, 1.2]`` and its
    centre shifted by up to 8 % of its size. ``box_xyxy``: ``[4]`` absolute pixels."""
    x0, y0, x1, y1 = (float(v) for v in box_xyxy)
    w, h = x1 - x0, y1 - y0
    scale = rng.uniform(0.85, 1.2)
    cx = 0.5 * (x0 + x1) + rng.uniform(-0.08, 0.08) * w
    cy = 0.5 * (y0 + y1) + rng.uniform(-0.08, 0.08) * h
    return np.array([cx - 0.5 * scale * w, cy - 0.5 * scale * h, cx + 0.5 * scale * w, cy + 0.5 * scale * h])


def to_tensor(image: np.ndarray) -> torch.Tensor:
    """``[H, W, 3]`` ``uint8`` -> ``[3, H, W]`` float in ``[0, 1]`` (numpy arithmetic: single-threaded,
    immune to torch thread contention in the loading process)."""
    chw = np.ascontiguousarray(image.transpose(2, 0, 1), dtype=np.float32)
    chw *= 1.0 / 255.0
    return torch.from_numpy(chw)


def resize(image: np.ndarray, size_hw: tuple[int, int]) -> np.ndarray:
    """``[H, W, 3]`` ``uint8`` -> ``[h, w, 3]``: area averaging when shrinking (antialiased),
    bilinear when enlarging."""
    h, w = image.shape[:2]
    if (h, w) == tuple(size_hw):
        return image
    shrink = size_hw[0] < h or size_hw[1] < w
    return cv2.resize(image, (int(size_hw[1]), int(size_hw[0])), interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR)


def size_longer_side(h: int, w: int, longer: int) -> tuple[int, int]:
    """Size ``(h', w')`` with the longer side ``longer`` and the aspect ratio kept."""
    scale = longer / max(h, w)
    return max(1, round(h * scale)), max(1, round(w * scale))


def size_shorter_side(h: int, w: int, shorter: int, max_size: int) -> tuple[int, int]:
    """Size with the shorter side ``shorter`` unless that makes the longer side exceed
    ``max_size`` (then the longer side is ``max_size``); aspect ratio kept."""
    scale = min(shorter / min(h, w), max_size / max(h, w))
    return max(1, round(h * scale)), max(1, round(w * scale))


class QueryTransform:
    """Transform of the image searched (the query image) and its boxes.

    Args:
        train: training (random shorter side from ``shorter_sides``, capped at ``max_size``) or
            evaluation (longer side ``eval_size``).
        augment: apply :func:`query_train_augmentation` (training only). With ``augment=False``
            the training resize is deterministic too: shorter side ``max(shorter_sides)``.
        shorter_sides: ``(lo, hi)`` range of the training shorter side, inclusive.
        max_size: cap on the training longer side.
        eval_size: the evaluation longer side.
    """

    def __init__(self, train: bool, augment: bool = True, shorter_sides: tuple = (400, 544), max_size: int = 512,
                 eval_size: int = 512):
        self.train = train
        self.augment = train and augment
        self.shorter_sides = (int(min(shorter_sides)), int(max(shorter_sides)))
        self.max_size = int(max_size)
        self.eval_size = int(eval_size)
        self.augmentation = query_train_augmentation() if self.augment else None

    def output_size(self, h: int, w: int, rng: Optional[np.random.Generator]) -> tuple[int, int]:
        """The resized ``(h, w)`` of an ``h x w`` input."""
        if not self.train:
            return size_longer_side(h, w, self.eval_size)
        lo, hi = self.shorter_sides
        shorter = int(rng.integers(lo, hi + 1)) if (self.augment and rng is not None) else hi
        return size_shorter_side(h, w, shorter, self.max_size)

    def __call__(self, image: np.ndarray, boxes_xyxy: np.ndarray, ignore: np.ndarray,
                 rng: Optional[np.random.Generator] = None) -> tuple[torch.Tensor, np.ndarray, np.ndarray]:
        """Transform one query image.

        Args:
            image: ``[H, W, 3]`` ``uint8``.
            boxes_xyxy: ``[N, 4]`` absolute pixels, inside the image, positive size.
            ignore: ``[N]`` bool, ``True`` for ignore regions (crowd, VOC difficult).
            rng: the sample's generator (required when augmenting).

        Returns:
            ``(image [3, h, w] float in [0, 1], boxes [M, 4], ignore [M])``, boxes as normalised
            ``xyxy`` of the transformed image. Boxes cut away by a crop are dropped; target boxes
            with less than :data:`MIN_CROP_VISIBILITY` of their area left become ignore regions.
        """
        boxes = np.asarray(boxes_xyxy, dtype=np.float64).reshape(-1, 4)
        ignore = np.asarray(ignore, dtype=bool).reshape(-1)
        if self.augmentation is not None:
            if rng is None:
                raise ValueError("QueryTransform with augmentation needs the sample's random generator")
            self.augmentation.set_random_seed(int(rng.integers(2 ** 31 - 1)))
            out = self.augmentation(image=image, bboxes=boxes, box_index=np.arange(len(boxes)))
            image = out["image"]
            kept = np.asarray(out["box_index"], dtype=np.float64).round().astype(np.int64)  # labels come back as floats
            new_boxes = np.asarray(out["bboxes"], dtype=np.float64).reshape(-1, 4)
            area_before = _areas(boxes[kept])
            visible = _areas(new_boxes) / np.maximum(area_before, 1e-9)
            ignore = ignore[kept] | (visible < MIN_CROP_VISIBILITY)
            boxes = new_boxes
        h, w = image.shape[:2]
        tensor = to_tensor(resize(image, self.output_size(h, w, rng)))
        scale = np.array([w, h, w, h], dtype=np.float64)
        normalised = np.clip(boxes / scale, 0.0, 1.0)
        return tensor, normalised, ignore


class SupportTransform:
    """Transform of an exemplar crop: colour jitter when augmenting, then a resize that fits it
    inside a ``size x size`` square with its aspect ratio kept (the longer side becomes ``size``;
    padding is added by :func:`detector.data.collate_oneshot`)."""

    def __init__(self, size: int, augment: bool):
        self.size = int(size)
        self.augmentation = support_train_augmentation() if augment else None

    def __call__(self, crop: np.ndarray, rng: Optional[np.random.Generator] = None) -> torch.Tensor:
        """``[h, w, 3]`` ``uint8`` crop -> ``[3, h', w']`` float in ``[0, 1]``, ``max(h', w') == size``."""
        if self.augmentation is not None:
            if rng is None:
                raise ValueError("SupportTransform with augmentation needs the sample's random generator")
            self.augmentation.set_random_seed(int(rng.integers(2 ** 31 - 1)))
            crop = self.augmentation(image=crop)["image"]
        h, w = crop.shape[:2]
        return to_tensor(resize(crop, size_longer_side(h, w, self.size)))


def _areas(boxes: np.ndarray) -> np.ndarray:
    return np.clip(boxes[:, 2] - boxes[:, 0], 0, None) * np.clip(boxes[:, 3] - boxes[:, 1], 0, None)
