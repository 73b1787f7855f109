"""From model outputs to scored boxes in pixels of the original query image."""
from __future__ import annotations

import torch
from torch import Tensor, nn
from torchvision.ops import nms

from ..utils.box_ops import box_cxcywh_to_xyxy, scale_boxes


class PostProcess(nn.Module):
    """Keep the ``num_select`` highest-scoring object queries of each image, optionally after a
    class-agnostic NMS.

    Boxes are predicted normalised to the unpadded (resized) query image, so scaling by the
    original size maps them to original pixels, whatever resize the data pipeline applied.

    Args:
        num_select: detections kept per image (at most the number of object queries).
        nms_iou: IoU threshold of a class-agnostic NMS (0 = off). A converged DETR needs none: its
            one-to-one matching teaches the decoder to suppress duplicates. A short schedule leaves
            some, and each duplicate of a true detection is a false positive for AP.
    """

    def __init__(self, num_select: int = 100, nms_iou: float = 0.0):
        super().__init__()
        if not 0.0 <= nms_iou <= 1.0:
            raise ValueError(f"nms_iou is an IoU threshold in [0, 1] (0 = off), got {nms_iou}")
        self.num_select = num_select
        self.nms_iou = float(nms_iou)

    @torch.no_grad()
    def forward(self, outputs: dict, target_sizes: Tensor) -> list[dict]:
        """``outputs`` (``pred_logits [B, Q, 1]``, ``pred_boxes [B, Q, 4]``), ``target_sizes [B, 2]``
        (height, width of the original images) -> per image ``scores [K]``, ``boxes [K, 4]`` (xyxy,
        absolute pixels, clipped to the image), sorted by score."""
        scores = outputs["pred_logits"][..., 0].float().sigmoid()
        boxes = scale_boxes(box_cxcywh_to_xyxy(outputs["pred_boxes"].float()), target_sizes)
        results = []
        for i in range(scores.shape[0]):
            h, w = target_sizes[i].tolist()
            s, b = scores[i], boxes[i].clone()
            b[:, 0::2] = b[:, 0::2].clamp(0, w)
            b[:, 1::2] = b[:, 1::2].clamp(0, h)
            # nms returns its survivors by decreasing score; plain top-k otherwise.
            keep = nms(b, s, self.nms_iou) if self.nms_iou > 0 else s.argsort(descending=True)
            keep = keep[: self.num_select]
            results.append({"scores": s[keep], "boxes": b[keep]})
        return results
