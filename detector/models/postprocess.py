"""From model outputs to scored boxes in pixels of the original query image."""
from __future__ import annotations

import torch
from torch import Tensor, nn

from ..utils.box_ops import box_cxcywh_to_xyxy, scale_boxes


class PostProcess(nn.Module):
    """Keep the ``num_select`` highest-scoring object queries of each image.

    Boxes are predicted normalised to the unpadded (resized) query image, so scaling by the
    original size maps them to original pixels, whatever resize the data pipeline applied.
    """

    def __init__(self, num_select: int = 100):
        super().__init__()
        self.num_select = num_select

    @torch.no_grad()
    def forward(self, outputs: dict, target_sizes: Tensor) -> list[dict]:
        """``outputs`` (``pred_logits [B, Q, 1]``, ``pred_boxes [B, Q, 4]``), ``target_sizes [B, 2]``
        (height, width of the original images) -> per image ``scores [K]``, ``boxes [K, 4]`` (xyxy,
        absolute pixels, clipped to the image), sorted by score."""
        scores = outputs["pred_logits"][..., 0].float().sigmoid()
        boxes = scale_boxes(box_cxcywh_to_xyxy(outputs["pred_boxes"].float()), target_sizes)
        k = min(self.num_select, scores.shape[1])
        top_scores, top_idx = scores.topk(k, dim=1)
        results = []
        for i in range(scores.shape[0]):
            h, w = target_sizes[i].tolist()
            b = boxes[i, top_idx[i]]
            b[:, 0::2] = b[:, 0::2].clamp(0, w)
            b[:, 1::2] = b[:, 1::2].clamp(0, h)
            results.append({"scores": top_scores[i], "boxes": b})
        return results
