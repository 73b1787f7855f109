"""Batched class-agnostic NMS as a keep mask, exportable to ONNX, and the export's distinct top-k.

torchvision's ``nms`` takes one image at a time and returns a variable number of indices, so the
model and the post-processing loop over the images of a batch; a traced ONNX graph would unroll that
loop for the batch size it was traced with. :func:`nms_mask` computes the same NMS for the whole
batch as a ``[B, N]`` keep mask: in PyTorch with torchvision over several images at once, in an ONNX graph as one
``NonMaxSuppression`` node (batched by definition; onnxruntime suppresses at ``IoU > threshold``,
as torchvision does). :func:`distinct_top_k` is :func:`detector.models.detector.select_distinct`
written on that mask, without the loop: the model uses it while it is exported.
"""
from __future__ import annotations

import torch
from torch import Tensor
from torchvision.ops import nms

from ..utils.box_ops import box_cxcywh_to_xyxy


# Boxes per torchvision NMS call, by device type (several images in one call, see _NmsMask). On
# CUDA each call makes the host wait for its result: up to 8192 boxes. On the CPU nothing waits,
# and one image per call is cheaper (6.2 against 13.9 ms for 8 images of 320 candidates: the
# greedy pass compares each kept box with the other images' boxes too): 0, one image per call.
CHUNK_BOXES = {"cuda": 8192}


class _NmsMask(torch.autograd.Function):
    """``apply(boxes_xyxy [B, N, 4], scores [B, N], iou_threshold)`` -> keep ``[B, N]`` bool."""

    @staticmethod
    def forward(ctx, boxes: Tensor, scores: Tensor, iou_threshold: float) -> Tensor:
        b, n = scores.shape
        if torch.onnx.is_in_onnx_export():  # the graph gets the symbolic below; keep the trace simple
            keep = torch.zeros(scores.shape, dtype=torch.bool, device=scores.device)
            for i in range(b):
                keep[i, nms(boxes[i], scores[i], iou_threshold)] = True
            return keep
        keep = torch.zeros(b * n, dtype=torch.bool, device=scores.device)
        # Several images per torchvision call (each call makes the host wait for its result on
        # CUDA): the images' boxes shifted apart so that no two images' boxes overlap, which
        # leaves each image's NMS as it is. At most CHUNK_BOXES boxes per call (the CUDA kernel's
        # suppression mask grows with the square of its input).
        per_call = max(1, CHUNK_BOXES.get(boxes.device.type, 0) // max(n, 1))
        lo = boxes.amin()
        span = boxes.amax() - lo + 1.0
        for start in range(0, b, per_call):
            part = boxes[start:start + per_call] - lo
            shift = torch.arange(part.shape[0], device=boxes.device, dtype=boxes.dtype)[:, None, None] * span
            found = nms((part + shift).reshape(-1, 4), scores[start:start + per_call].reshape(-1), iou_threshold)
            keep[found + start * n] = True
        return keep.view(b, n)

    @staticmethod
    def symbolic(g, boxes, scores, iou_threshold: float):
        def const(value, dtype):
            return g.op("Constant", value_t=torch.tensor(value, dtype=dtype))

        # NonMaxSuppression(boxes [B, N, 4], scores [B, classes=1, N]) -> selected [K, 3] rows
        # (batch, class, box); scattered into a [B, N] mask.
        selected = g.op("NonMaxSuppression", boxes, g.op("Unsqueeze", scores, const([1], torch.long)),
                        const([2 ** 31 - 1], torch.long), const([iou_threshold], torch.float32))
        where = g.op("Gather", selected, const([0, 2], torch.long), axis_i=1)
        count = g.op("Slice", g.op("Shape", selected), const([0], torch.long), const([1], torch.long))
        ones = g.op("ConstantOfShape", count, value_t=torch.tensor([1.0]))
        zeros = g.op("ConstantOfShape", g.op("Shape", scores), value_t=torch.tensor([0.0]))
        return g.op("Cast", g.op("ScatterND", zeros, where, ones), to_i=9)  # 9: BOOL


def nms_mask(boxes_xyxy: Tensor, scores: Tensor, iou_threshold: float) -> Tensor:
    """Class-agnostic NMS of every image of a batch.

    Args:
        boxes_xyxy: ``[B, N, 4]`` boxes (any common scale).
        scores: ``[B, N]``.
        iou_threshold: a box is dropped when its IoU with a kept, higher-scoring box is above it.

    Returns:
        ``[B, N]`` bool, True for the boxes torchvision's ``nms`` keeps.
    """
    return _NmsMask.apply(boxes_xyxy.float(), scores.float(), float(iou_threshold))


def distinct_top_k(scores: Tensor, boxes: Tensor, k: int, iou_threshold: float) -> Tensor:
    """:func:`~detector.models.detector.select_distinct` without a loop over the images: the same
    ``[B, k]`` indices (NMS survivors among the ``8 k`` best proposals in score order, then the
    best suppressed ones). ``scores [B, N]``, ``boxes [B, N, 4]`` (cxcywh)."""
    m = min(scores.shape[1], 8 * k)
    top_scores, top = scores.float().topk(m, dim=1)  # sorted, best first
    xyxy = box_cxcywh_to_xyxy(torch.gather(boxes, 1, top[..., None].expand(-1, -1, 4)).float())
    keep = nms_mask(xyxy, top_scores, iou_threshold)
    return torch.gather(top, 1, survivors_first(keep, k))


def survivors_first(keep_in_score_order: Tensor, k: int) -> Tensor:
    """``keep [B, m]`` (NMS survivors among boxes sorted by decreasing score) -> ``[B, k]`` positions:
    the survivors, then the suppressed, each in score order (no sync: ranks are distinct, so
    ``topk`` sorts them without ties)."""
    m = keep_in_score_order.shape[1]
    position = torch.arange(m, device=keep_in_score_order.device)[None, :]
    rank = position + m * (~keep_in_score_order).long()
    return rank.topk(k, dim=1, largest=False).indices
