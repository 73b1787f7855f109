"""Box conversions and overlaps.

Formats are named: ``xyxy`` (corners), ``cxcywh`` (centre, size), ``xywh`` (COCO: top-left, size).
Functions work on normalised or absolute boxes alike unless their name says otherwise.
"""
from __future__ import annotations

import torch
from torch import Tensor


def box_cxcywh_to_xyxy(boxes: Tensor) -> Tensor:
    """``[..., 4]`` cxcywh -> ``[..., 4]`` xyxy."""
    cx, cy, w, h = boxes.unbind(-1)
    return torch.stack([cx - 0.5 * w, cy - 0.5 * h, cx + 0.5 * w, cy + 0.5 * h], dim=-1)


def box_xyxy_to_cxcywh(boxes: Tensor) -> Tensor:
    """``[..., 4]`` xyxy -> ``[..., 4]`` cxcywh."""
    x0, y0, x1, y1 = boxes.unbind(-1)
    return torch.stack([(x0 + x1) / 2, (y0 + y1) / 2, x1 - x0, y1 - y0], dim=-1)


def box_xywh_to_xyxy(boxes: Tensor) -> Tensor:
    """``[..., 4]`` COCO xywh -> ``[..., 4]`` xyxy."""
    x, y, w, h = boxes.unbind(-1)
    return torch.stack([x, y, x + w, y + h], dim=-1)


def box_xyxy_to_xywh(boxes: Tensor) -> Tensor:
    """``[..., 4]`` xyxy -> ``[..., 4]`` COCO xywh."""
    x0, y0, x1, y1 = boxes.unbind(-1)
    return torch.stack([x0, y0, x1 - x0, y1 - y0], dim=-1)


def box_area(boxes_xyxy: Tensor) -> Tensor:
    """``[N, 4]`` xyxy -> ``[N]`` areas (zero for degenerate boxes)."""
    return (boxes_xyxy[:, 2] - boxes_xyxy[:, 0]).clamp(min=0) * (boxes_xyxy[:, 3] - boxes_xyxy[:, 1]).clamp(min=0)


def box_iou(boxes1_xyxy: Tensor, boxes2_xyxy: Tensor) -> tuple[Tensor, Tensor]:
    """Pairwise IoU and union: ``[N, 4]``, ``[M, 4]`` -> ``([N, M], [N, M])``."""
    area1 = box_area(boxes1_xyxy)
    area2 = box_area(boxes2_xyxy)
    lt = torch.max(boxes1_xyxy[:, None, :2], boxes2_xyxy[None, :, :2])
    rb = torch.min(boxes1_xyxy[:, None, 2:], boxes2_xyxy[None, :, 2:])
    wh = (rb - lt).clamp(min=0)
    inter = wh[..., 0] * wh[..., 1]
    union = area1[:, None] + area2[None, :] - inter
    return inter / union.clamp(min=1e-12), union


def generalized_box_iou(boxes1_xyxy: Tensor, boxes2_xyxy: Tensor) -> Tensor:
    """Pairwise generalised IoU (Rezatofighi et al. 2019): ``[N, 4]``, ``[M, 4]`` -> ``[N, M]``.

    Degenerate boxes (x1 < x0) are clamped to zero size rather than rejected, so that a badly
    initialised prediction cannot crash training.
    """
    iou, union = box_iou(boxes1_xyxy, boxes2_xyxy)
    lt = torch.min(boxes1_xyxy[:, None, :2], boxes2_xyxy[None, :, :2])
    rb = torch.max(boxes1_xyxy[:, None, 2:], boxes2_xyxy[None, :, 2:])
    wh = (rb - lt).clamp(min=0)
    enclosing = wh[..., 0] * wh[..., 1]
    return iou - (enclosing - union) / enclosing.clamp(min=1e-12)


def paired_generalized_box_iou(boxes1_xyxy: Tensor, boxes2_xyxy: Tensor) -> Tensor:
    """Generalised IoU of each box with its partner: ``[N, 4]``, ``[N, 4]`` -> ``[N]`` (the diagonal
    of :func:`generalized_box_iou` without the ``[N, N]`` matrix)."""
    area1, area2 = box_area(boxes1_xyxy), box_area(boxes2_xyxy)
    inter_wh = (torch.min(boxes1_xyxy[:, 2:], boxes2_xyxy[:, 2:]) - torch.max(boxes1_xyxy[:, :2], boxes2_xyxy[:, :2])).clamp(min=0)
    inter = inter_wh[:, 0] * inter_wh[:, 1]
    union = area1 + area2 - inter
    hull_wh = (torch.max(boxes1_xyxy[:, 2:], boxes2_xyxy[:, 2:]) - torch.min(boxes1_xyxy[:, :2], boxes2_xyxy[:, :2])).clamp(min=0)
    enclosing = hull_wh[:, 0] * hull_wh[:, 1]
    return inter / union.clamp(min=1e-12) - (enclosing - union) / enclosing.clamp(min=1e-12)


def inverse_sigmoid(x: Tensor, eps: float = 1e-5) -> Tensor:
    """Logit of ``x`` clamped to ``[eps, 1 - eps]``: the space in which boxes are refined."""
    x = x.clamp(min=0, max=1)
    return torch.log(x.clamp(min=eps) / (1 - x).clamp(min=eps))


def scale_boxes(boxes: Tensor, image_sizes_hw: Tensor) -> Tensor:
    """Normalised ``[B, N, 4]`` boxes (x, y, x, y order of coordinates) -> absolute pixels, given
    ``[B, 2]`` (height, width)."""
    h, w = image_sizes_hw.unbind(-1)
    scale = torch.stack([w, h, w, h], dim=-1).to(boxes.dtype)
    return boxes * scale[:, None, :]
