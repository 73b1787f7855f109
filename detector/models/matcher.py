"""Hungarian matching between object-query predictions and ground-truth boxes."""
from __future__ import annotations

import numpy as np
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
        """Match one prediction set.

        Args:
            outputs: ``pred_logits [B, Q, 1]``, ``pred_boxes [B, Q, 4]`` (cxcywh, normalised).
            targets: per image ``boxes [M_b, 4]`` (cxcywh, normalised); ``M_b`` may be 0.

        Returns:
            Per image ``(prediction_indices, target_indices)``, both ``int64 [min(Q, M_b)]`` on the CPU.
        """
        sizes = [len(t["boxes"]) for t in targets]
        target_boxes = torch.cat([t["boxes"] for t in targets]) if targets else outputs["pred_boxes"].new_zeros(0, 4)
        matched = self.match_stacked([(outputs["pred_logits"][None], outputs["pred_boxes"][None], target_boxes, sizes)])[0]
        return [(matched[2][matched[1] == i], matched[3][matched[1] == i] - start)
                for i, start in enumerate(_offsets(sizes))]

    @torch.no_grad()
    def match_stacked(self, groups: list[tuple[Tensor, Tensor, Tensor, list[int]]]) -> list[Tensor]:
        """Match several stacks of prediction sets with one copy from the device to the host.

        Args:
            groups: ``(logits [S, B, Q, 1], boxes [S, B, Q, 4], target_boxes [M, 4], sizes)``: ``S``
                prediction sets (decoder layers) of the same object queries, all matched to the
                targets, the images' boxes concatenated (``sizes[b]`` of image ``b``, cxcywh).
                ``Q`` and the targets may differ between groups.

        Returns:
            Per group ``int64 [4, K]`` on the CPU: rows set, image, prediction index, and target
            index into the concatenation of the group's targets, ``K`` matched pairs in all.
            Matching each set and image on its own gives the same pairs.
        """
        blocks, plans = [], []
        for logits, boxes, target_boxes, sizes in groups:
            s, b, q = logits.shape[:3]
            plans.append((s, b, q, sizes))
            if sum(sizes) == 0:
                continue
            tgt = target_boxes.to(boxes.device, torch.float32)
            cost = self.cost_matrix(logits.flatten(0, 2).float(), boxes.flatten(0, 2).float(), tgt).view(s, b, q, -1)
            # Only the blocks of each image with its own targets travel: [S, Q, M_b] per image.
            blocks += [cost[:, i, :, start:start + m].flatten() for i, (start, m) in enumerate(zip(_offsets(sizes), sizes))]
        host = torch.cat(blocks).cpu().numpy() if blocks else None
        if host is not None and not np.isfinite(host).all():
            # Non-finite predictions (a diverged step): match anyway; the training loop reports the
            # non-finite loss when it reads the step's losses.
            host = np.nan_to_num(host, nan=1e8, posinf=1e8, neginf=-1e8)
        out, at = [], 0
        for s, b, q, sizes in plans:
            pairs = []
            if sum(sizes):
                for i, (start, m) in enumerate(zip(_offsets(sizes), sizes)):
                    costs = host[at:at + s * q * m].reshape(s, q, m)
                    at += s * q * m
                    for k in range(s if m else 0):
                        rows, cols = linear_sum_assignment(costs[k])
                        pairs.append(np.stack([np.full_like(rows, k), np.full_like(rows, i), rows, cols + start]))
            out.append(torch.from_numpy(np.concatenate(pairs, axis=1).astype(np.int64)) if pairs
                       else torch.zeros(4, 0, dtype=torch.int64))
        return out


def _offsets(sizes: list[int]) -> list[int]:
    return [sum(sizes[:i]) for i in range(len(sizes))]
