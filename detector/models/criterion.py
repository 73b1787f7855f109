"""Set-prediction losses: sigmoid focal loss, L1 and GIoU on matched boxes, for the final layer,
every auxiliary layer, the proposals, and (hybrid matching) the one-to-many queries."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..utils.box_ops import box_cxcywh_to_xyxy, generalized_box_iou
from ..utils.dist import all_reduce_mean
from .matcher import HungarianMatcher


def sigmoid_focal_loss(logits: Tensor, targets: Tensor, alpha: float = 0.25, gamma: float = 2.0) -> Tensor:
    """Element-wise focal loss (Lin et al. 2017), summed: ``logits, targets [...]`` -> scalar."""
    prob = logits.sigmoid()
    ce = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
    p_t = prob * targets + (1 - prob) * (1 - targets)
    loss = ce * (1 - p_t) ** gamma
    if alpha >= 0:
        loss = (alpha * targets + (1 - alpha) * (1 - targets)) * loss
    return loss.sum()


class SetCriterion(nn.Module):
    """Losses of one forward pass.

    Args:
        matcher: the Hungarian matcher.
        class_weight, bbox_weight, giou_weight: loss weights.
        focal_alpha, focal_gamma: focal loss parameters.
        aux_loss: also supervise ``aux_outputs`` and ``enc_outputs``.
        one2many_repeat: targets are repeated this many times for the one-to-many queries.
        one2many_weight: weight of the one-to-many losses.
    """

    def __init__(self, matcher: HungarianMatcher, class_weight: float = 2.0, bbox_weight: float = 5.0,
                 giou_weight: float = 2.0, focal_alpha: float = 0.25, focal_gamma: float = 2.0,
                 aux_loss: bool = True, one2many_repeat: int = 6, one2many_weight: float = 1.0):
        super().__init__()
        self.matcher = matcher
        self.weights = {"loss_class": class_weight, "loss_bbox": bbox_weight, "loss_giou": giou_weight}
        self.focal_alpha, self.focal_gamma = focal_alpha, focal_gamma
        self.aux_loss = aux_loss
        self.one2many_repeat = one2many_repeat
        self.one2many_weight = one2many_weight

    def single(self, outputs: dict, targets: list[dict], num_boxes: float) -> dict:
        """Unweighted losses of one prediction set (``pred_logits [B, Q, 1]``, ``pred_boxes [B, Q, 4]``)."""
        indices = self.matcher(outputs, targets)
        logits = outputs["pred_logits"]
        device = logits.device
        batch_idx = torch.cat([torch.full_like(src, i) for i, (src, _) in enumerate(indices)]).to(device)
        src_idx = torch.cat([src for src, _ in indices]).to(device)
        target_classes = torch.zeros_like(logits)
        target_classes[batch_idx, src_idx, 0] = 1.0
        loss_class = sigmoid_focal_loss(logits.float(), target_classes, self.focal_alpha, self.focal_gamma) / num_boxes
        pred = outputs["pred_boxes"][batch_idx, src_idx].float()
        tgt = torch.cat([t["boxes"][j] for t, (_, j) in zip(targets, indices)]).to(device).float()
        if len(tgt) == 0:
            zero = outputs["pred_boxes"].sum() * 0.0
            return {"loss_class": loss_class, "loss_bbox": zero, "loss_giou": zero}
        loss_bbox = F.l1_loss(pred, tgt, reduction="sum") / num_boxes
        giou = torch.diag(generalized_box_iou(box_cxcywh_to_xyxy(pred), box_cxcywh_to_xyxy(tgt)))
        loss_giou = (1 - giou).sum() / num_boxes
        return {"loss_class": loss_class, "loss_bbox": loss_bbox, "loss_giou": loss_giou}

    def _group(self, outputs: dict, targets: list[dict], suffix: str, weight: float) -> dict:
        n = sum(len(t["boxes"]) for t in targets)
        device = outputs["pred_logits"].device
        num_boxes = all_reduce_mean(torch.tensor(float(n), device=device)).clamp(min=1.0).item()
        losses = {}
        sets = [("", outputs)]
        if self.aux_loss:
            sets += [(f"_aux{i}", aux) for i, aux in enumerate(outputs.get("aux_outputs", []))]
        for name, out in sets:
            for k, v in self.single(out, targets, num_boxes).items():
                losses[f"{k}{name}{suffix}"] = v * self.weights[k] * weight
        return losses

    def forward(self, outputs: dict, targets: list[dict]) -> dict:
        """Weighted losses and their sum.

        Args:
            outputs: the model's output dict.
            targets: per image ``boxes [M, 4]`` (cxcywh, normalised to the unpadded query image).

        Returns:
            ``{name: scalar}`` with every weighted term and ``"loss"``, their sum.
        """
        losses = self._group(outputs, targets, "", 1.0)
        if self.aux_loss and "enc_outputs" in outputs:
            losses.update(self._group(outputs["enc_outputs"], targets, "_enc", 1.0))
        if "one2many" in outputs:
            repeated = [{**t, "boxes": t["boxes"].repeat(self.one2many_repeat, 1)} for t in targets]
            losses.update(self._group(outputs["one2many"], repeated, "_o2m", self.one2many_weight))
        losses["loss"] = sum(losses.values())
        return losses
