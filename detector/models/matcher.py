"""Hungarian matching between object-query predictions and ground-truth boxes."""
from __future__ import annotations

import torch
from scipy.optimize import linear_sum_assignment
from torch import Tensor, nn

from ..utils.box_ops import box_cxcywh_to_xyxy, generalized_box_iou


def focal_class_cost(logits: Tensor, alpha: float, gamma: float) -> Tensor:
    """Matching cost of predicting "positive" with focal weighting (Deformable DETR):
    ``[..., 1]`` logits -> ``[...]`` costs (lower = better)."""
    prob = logits.sigmoid()[..., 0]
    neg = (1 - alpha) * prob.pow(gamma) * -(1 - prob + 1e-8).log()
    pos = alpha * (1 - prob).pow(gamma) * -(prob + 1e-8).log()
    return pos - neg


class HungarianMatcher(nn.Module):
    """One-to-one assignment minimising ``w_class * focal + w_bbox * L1 + w_giou * (-GIoU)``.

    Costs are computed for the whole batch at once and split per image, so the batched result
    equals matching each image on its own.
    """

    def __init__(self, cost_class: float = 2.0, cost_bbox: float = 5.0, cost_giou: float = 2.0,
                 focal_alpha: float = 0.25, focal_gamma: float = 2.0):
        super().__init__()
        self.cost_class, self.cost_bbox, self.cost_giou = cost_class, cost_bbox, cost_giou
        self.focal_alpha, self.focal_gamma = focal_alpha, focal_gamma

    def cost_matrix(self, pred_logits: Tensor, pred_boxes: Tensor, tgt_boxes: Tensor) -> Tensor:
        """``pred_logits [N, 1]``, ``pred_boxes [N, 4]``, ``tgt_boxes [M, 4]`` (cxcywh) -> ``[N, M]``."""
        c_class = focal_class_cost(pred_logits, self.focal_alpha, self.focal_gamma)[:, None]
        c_bbox = torch.cdist(pred_boxes, tgt_boxes, p=1)
        c_giou = -generalized_box_iou(box_cxcywh_to_xyxy(pred_boxes), box_cxcywh_to_xyxy(tgt_boxes))
        return self.cost_class * c_class + self.cost_bbox * c_bbox + self.cost_giou * c_giou

    @torch.no_grad()
    def forward(self, outputs: dict, targets: list[dict]) -> list[tuple[Tensor, Tensor]]:
        """Match.

        Args:
            outputs: ``pred_logits [B, Q, 1]``, ``pred_boxes [B, Q, 4]`` (cxcywh, normalised).
            targets: per image ``boxes [M_b, 4]`` (cxcywh, normalised); ``M_b`` may be 0.

        Returns:
            Per image ``(prediction_indices, target_indices)``, both ``int64 [min(Q, M_b)]``.
        """
        b, q = outputs["pred_logits"].shape[:2]
        sizes = [len(t["boxes"]) for t in targets]
        empty = torch.empty(0, dtype=torch.int64)
        if sum(sizes) == 0:
            return [(empty, empty) for _ in sizes]
        logits = outputs["pred_logits"].flatten(0, 1).float()
        boxes = outputs["pred_boxes"].flatten(0, 1).float()
        tgt = torch.cat([t["boxes"] for t in targets]).to(boxes)
        cost = self.cost_matrix(logits, boxes, tgt).view(b, q, -1).cpu()
        indices = []
        for i, c in enumerate(cost.split(sizes, dim=-1)):
            if sizes[i] == 0:
                indices.append((empty, empty))
                continue
            rows, cols = linear_sum_assignment(c[i].numpy())
            indices.append((torch.as_tensor(rows, dtype=torch.int64), torch.as_tensor(cols, dtype=torch.int64)))
        return indices
