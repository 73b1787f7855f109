"""Training-free exemplar matchers: the anchors every real-photo result is printed beside.

A learned one-shot detector has to beat methods that learn nothing. Two are computed here, on the
same query / exemplar pairs as the model, and scored by the same code
(:func:`detector.evaluation_realphoto.score_pairs`):

* :func:`template_match`, **pixel template matching**: normalised cross-correlation
  (``cv2.matchTemplate``, ``TM_CCOEFF_NORMED``) of the exemplar box with the query image in CIE Lab
  colour, with the exemplar resized by each of :data:`TEMPLATE_SCALES`; every local maximum of a
  correlation map is a box of the scaled exemplar's size at that place, scored by its correlation.
* :class:`FeatureMatcher`, **frozen-feature matching**: the query and the support image (the
  exemplar with one box side of context around it) rescaled so that the exemplar box is
  :data:`FEATURE_EXEMPLAR_SIDE` pixels, the ImageNet MobileNetV2 (the
  product's frozen backbone, offline weights) at stride 8, the exemplar pooled to a 3 x 3 grid of
  cells with ``roi_align``; the score of a place is the cosine of that grid with the query's
  3 x 3 window of cells of the same size there (query features average-pooled to the cell size,
  the window dilated by it); local maxima are boxes of the exemplar's size.

Both end with a class-agnostic NMS at :data:`NMS_IOU` and keep the best ``max_detections``. None of
their settings was chosen on the real-photo benchmark: they are the usual choices of such
matchers, fixed before the first run. Results are ``predict``-shaped dicts: ``{"width", "height",
"detections": [{"bbox": [x, y, w, h] pixels, "score"}]}``, best first.
"""
from __future__ import annotations

import math
from typing import Optional, Sequence

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from torchvision.ops import nms, roi_align

from .config import DEFAULT_MAX_PIXELS
from .data.image_io import check_pixels
from .data.transforms import resize, to_tensor
from .structures import ImageBatch

TEMPLATE_SCALES = (0.8, 1.0, 1.25)  # exemplar sizes tried by the template matcher, relative to its box
FEATURE_EXEMPLAR_SIDE = 48.0  # the feature matcher rescales so that the exemplar box has this side
FEATURE_STRIDE = 8  # the feature matcher's backbone stride
FEATURE_CELLS = 3  # the exemplar is pooled to FEATURE_CELLS x FEATURE_CELLS cells
NMS_IOU = 0.3  # class-agnostic NMS of both matchers (boxes of one exemplar size overlap little)
ANCHORS = ("template", "features")  # the matchers' names in tables


def _check_box(box: Sequence[float], width: int, height: int) -> tuple[int, int, int, int]:
    """``box`` x, y, w, h (pixels) -> integer ``x0, y0, x1, y1`` inside a ``width x height`` image,
    at least 1 pixel each way; ``ValueError`` for a box with no pixel in the image."""
    x, y, w, h = (float(v) for v in box)
    if not all(math.isfinite(v) for v in (x, y, w, h)) or w <= 0 or h <= 0:
        raise ValueError(f"exemplar box {[x, y, w, h]} has zero area")
    x0, y0 = max(0, int(round(x))), max(0, int(round(y)))
    x1, y1 = min(width, int(round(x + w))), min(height, int(round(y + h)))
    if x1 - x0 < 1 or y1 - y0 < 1:
        raise ValueError(f"exemplar box {[x, y, w, h]} lies outside the {width}x{height} image")
    return x0, y0, x1, y1


def local_maxima(score: np.ndarray, window: int) -> tuple[np.ndarray, np.ndarray]:
    """``(rows, cols)`` of the cells of ``score [H, W]`` that equal the maximum of their
    ``window x window`` neighbourhood (``window`` odd, at least 3) and are finite."""
    window = max(3, int(window) | 1)
    dilated = cv2.dilate(score.astype(np.float32), np.ones((window, window), np.uint8))
    return np.nonzero((score >= dilated) & np.isfinite(score))


def _finish(boxes: list, scores: list, width: int, height: int, max_detections: int, nms_iou: float) -> dict:
    """Boxes ``xyxy`` and scores of all peaks -> the ``predict``-shaped result, after NMS."""
    detections = []
    if boxes:
        b = torch.as_tensor(np.concatenate(boxes), dtype=torch.float32)
        s = torch.as_tensor(np.concatenate(scores), dtype=torch.float32)
        b[:, 0::2] = b[:, 0::2].clamp(0, width)
        b[:, 1::2] = b[:, 1::2].clamp(0, height)
        keep = nms(b, s, nms_iou)[:max_detections]
        for (x0, y0, x1, y1), score in zip(b[keep].tolist(), s[keep].tolist()):
            detections.append({"bbox": [x0, y0, x1 - x0, y1 - y0], "score": max(0.0, float(score))})
    return {"width": width, "height": height, "detections": detections}


def template_match(query: np.ndarray, support: np.ndarray, support_box: Sequence[float],
                   scales: Sequence[float] = TEMPLATE_SCALES, max_detections: int = 1000,
                   nms_iou: float = NMS_IOU) -> dict:
    """Pixel template matching of the exemplar ``support_box`` (x, y, w, h pixels of ``support``)
    in ``query``; both RGB ``uint8 [H, W, 3]``. Returns the ``predict``-shaped result (module
    docstring). Scales whose template does not fit in the query are skipped."""
    height, width = query.shape[:2]
    x0, y0, x1, y1 = _check_box(support_box, support.shape[1], support.shape[0])
    lab_query = cv2.cvtColor(np.ascontiguousarray(query), cv2.COLOR_RGB2LAB).astype(np.float32)
    exemplar = cv2.cvtColor(np.ascontiguousarray(support[y0:y1, x0:x1]), cv2.COLOR_RGB2LAB).astype(np.float32)
    boxes, scores = [], []
    for s in scales:
        tw, th = max(3, round((x1 - x0) * s)), max(3, round((y1 - y0) * s))
        if tw > width or th > height:
            continue
        template = cv2.resize(exemplar, (tw, th), interpolation=cv2.INTER_AREA if s < 1 else cv2.INTER_LINEAR)  # float Lab
        if float(template.reshape(-1, 3).std(axis=0).max()) == 0.0:  # flat in every channel: no correlation
            continue
        corr = cv2.matchTemplate(lab_query, template, cv2.TM_CCOEFF_NORMED)  # [H - th + 1, W - tw + 1]
        corr[~np.isfinite(corr)] = -1.0  # flat query windows
        rows, cols = local_maxima(corr, min(tw, th) // 2)
        boxes.append(np.stack([cols, rows, cols + tw, rows + th], axis=1).astype(np.float32))
        scores.append(corr[rows, cols])
    return _finish(boxes, scores, width, height, max_detections, nms_iou)


class FeatureMatcher:
    """Frozen-feature matching (module docstring) with a timm backbone at ``stride``.

    Args:
        backbone: a :class:`detector.models.backbone.Backbone` built at ``output_stride = stride``
            (its body features are used; its projection is not). :meth:`build` makes the default.
        exemplar_side: the exemplar box's side ``sqrt(w h)`` after rescaling, in pixels.
        cells: the exemplar is pooled to ``cells x cells``.
    """

    def __init__(self, backbone, exemplar_side: float = FEATURE_EXEMPLAR_SIDE, cells: int = FEATURE_CELLS,
                 max_pixels: int = DEFAULT_MAX_PIXELS):
        self.backbone = backbone.eval()
        self.exemplar_side = float(exemplar_side)
        self.cells = int(cells)
        self.max_pixels = int(max_pixels)

    @classmethod
    def build(cls, name: str = "mobilenetv2_100", pretrained: str = "offline", stride: int = FEATURE_STRIDE,
              **kwargs) -> "FeatureMatcher":
        """The default matcher: ``name``'s ImageNet weights (``pretrained`` as in
        :class:`~detector.config.BackboneConfig`) at ``stride``."""
        from .models.backbone import Backbone

        return cls(Backbone(name, 32, output_stride=stride, pretrained=pretrained, freeze=True), **kwargs)

    @torch.no_grad()
    def _features(self, image: np.ndarray, scale: float) -> torch.Tensor:
        """``image`` RGB uint8 rescaled by ``scale`` -> body features ``[C, h, w]``."""
        h, w = image.shape[:2]
        sh, sw = max(1, round(h * scale)), max(1, round(w * scale))
        check_pixels(sw, sh, self.max_pixels, f"feature matcher: the image rescaled by {scale:.3g}")
        tensor = to_tensor(resize(np.ascontiguousarray(image), (sh, sw)))
        batch = ImageBatch.from_tensors([tensor], size_divisibility=self.backbone.stride)
        feats = self.backbone.body_features(batch)[0]
        stride = self.backbone.stride
        return feats[:, : math.ceil(sh / stride), : math.ceil(sw / stride)]

    def __call__(self, query: np.ndarray, support: np.ndarray, support_box: Sequence[float],
                 max_detections: int = 1000, nms_iou: float = NMS_IOU) -> dict:
        """Match the exemplar ``support_box`` (x, y, w, h pixels of ``support``) in ``query``
        (both RGB ``uint8 [H, W, 3]``) -> the ``predict``-shaped result (module docstring)."""
        height, width = query.shape[:2]
        x0, y0, x1, y1 = _check_box(support_box, support.shape[1], support.shape[0])
        scale = self.exemplar_side / math.sqrt((x1 - x0) * (y1 - y0))
        stride, k = self.backbone.stride, self.cells
        # Only the exemplar and some context around it go through the backbone.
        pad = max(x1 - x0, y1 - y0)
        cx0, cy0 = max(0, x0 - pad), max(0, y0 - pad)
        crop = support[cy0:min(support.shape[0], y1 + pad), cx0:min(support.shape[1], x1 + pad)]
        s_feat = self._features(crop, scale)
        box = torch.tensor([[0.0, (x0 - cx0) * scale, (y0 - cy0) * scale, (x1 - cx0) * scale, (y1 - cy0) * scale]])
        template = roi_align(s_feat[None], box, (k, k), spatial_scale=1.0 / stride, sampling_ratio=2, aligned=True)[0]
        q_feat = self._features(query, scale)
        # One template cell covers about (exemplar side / k / stride) feature cells: pool the query
        # to that cell size, then compare the template with k x k windows dilated by it.
        cell = max(1, round(self.exemplar_side / k / stride))
        if q_feat.shape[-2] < cell * k or q_feat.shape[-1] < cell * k:
            return {"width": width, "height": height, "detections": []}
        pooled = F.avg_pool2d(q_feat[None], cell, stride=1)
        t = template / template.norm().clamp(min=1e-6)
        dot = F.conv2d(pooled, t[None], dilation=cell)[0, 0]
        norms = F.conv2d(pooled.pow(2).sum(1, keepdim=True), torch.ones(1, 1, k, k), dilation=cell)[0, 0]
        cosine = (dot / norms.clamp(min=1e-12).sqrt()).numpy()  # [h', w']: window top-left cell
        rows, cols = local_maxima(cosine, 3)
        # The window starting at feature cell (r, c) spans cell * k cells; its centre, in pixels
        # of the original query, is the box's centre; the box has the exemplar's size.
        span = cell * k * stride
        cx = (cols * stride + span / 2) / scale
        cy = (rows * stride + span / 2) / scale
        bw, bh = (x1 - x0), (y1 - y0)
        boxes = np.stack([cx - bw / 2, cy - bh / 2, cx + bw / 2, cy + bh / 2], axis=1).astype(np.float32)
        return _finish([boxes], [cosine[rows, cols]], width, height, max_detections, nms_iou)
