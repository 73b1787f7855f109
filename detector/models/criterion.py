"""Set-prediction losses: sigmoid focal loss, L1 and GIoU on matched boxes, for the final layer,
every auxiliary layer, the proposals, and (hybrid matching) the one-to-many queries.

The prediction sets that share object queries and targets (the decoder layers, the proposals) are
stacked and matched and scored together: one cost computation per stack, one copy of all the costs
to the host for the Hungarian algorithm (the only point where the host waits for the device in a
training step), and the losses of every set from one pass over the stack. The result is the same as
scoring each set on its own (``tests/models/test_criterion.py``)."""
from __future__ import annotations

from typing import NamedTuple, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..utils.box_ops import box_cxcywh_to_xyxy, paired_generalized_box_iou
from ..utils.device import upload
from ..utils.dist import all_reduce_mean, is_distributed
from .matcher import HungarianMatcher

LOSS_NAMES = ("loss_class", "loss_bbox", "loss_giou")


def sigmoid_focal_loss(logits: Tensor, targets: Tensor, alpha: float = 0.25, gamma: float = 2.0) -> Tensor:
    """Element-wise focal loss (Lin et al. 2017): ``logits, targets [...]`` -> ``[...]``."""
    prob = logits.sigmoid()
    ce = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
    p_t = prob * targets + (1 - prob) * (1 - targets)
    loss = ce * (1 - p_t) ** gamma
    if alpha >= 0:
        loss = (alpha * targets + (1 - alpha) * (1 - targets)) * loss
    return loss


class _Stack(NamedTuple):
    """Prediction sets scored together: ``names[S]`` (loss-name suffixes), ``logits [S, B, Q, 1]``,
    ``boxes [S, B, Q, 4]``, the targets they are matched to (the per-image dicts, and their boxes
    concatenated once: ``target_boxes [M, 4]``, ``sizes[b]`` of image ``b``), and the weight of
    their losses."""
    names: list
    logits: Tensor
    boxes: Tensor
    targets: list
    target_boxes: Tensor
    sizes: list
    weight: float


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

    def _stacks(self, outputs: dict, targets: list[dict]) -> list[_Stack]:
        """The output dict -> stacks of sets with the same object queries and targets."""
        def sets(out: dict, suffix: str) -> list:
            named = [("", out)]
            if self.aux_loss:
                named += [(f"_aux{i}", aux) for i, aux in enumerate(out.get("aux_outputs", []))]
            return [(name + suffix, o) for name, o in named]

        groups = [(sets(outputs, ""), targets, 1.0)]
        if self.aux_loss and "enc_outputs" in outputs:
            groups.append(([("_enc", outputs["enc_outputs"])], targets, 1.0))
        if "one2many" in outputs:
            repeated = [{**t, "boxes": t["boxes"].repeat(self.one2many_repeat, 1)} for t in targets]
            groups.append((sets(outputs["one2many"], "_o2m"), repeated, self.one2many_weight))
        stacks = []
        for named, tgts, weight in groups:
            # Sets of one group with the same number of object queries share a stack (the proposals
            # usually have as many as the decoder, and join its layers).
            logits = torch.stack([o["pred_logits"] for _, o in named])
            boxes = torch.stack([o["pred_boxes"] for _, o in named])
            last = stacks[-1] if stacks else None
            if last is not None and last.targets is tgts and last.logits.shape[2] == logits.shape[2] \
                    and last.weight == weight:
                stacks[-1] = last._replace(names=last.names + [n for n, _ in named],
                                           logits=torch.cat([last.logits, logits]), boxes=torch.cat([last.boxes, boxes]))
            else:
                target_boxes = torch.cat([t["boxes"] for t in tgts]) if tgts else boxes.new_zeros(0, 4)
                stacks.append(_Stack([n for n, _ in named], logits, boxes, tgts, target_boxes,
                                     [len(t["boxes"]) for t in tgts], weight))
        return stacks

    def _num_boxes(self, stacks: list[_Stack], device: torch.device) -> list[Union[float, Tensor]]:
        """Per stack, the number of target boxes per image batch (averaged over processes), at least 1."""
        counts = [float(len(s.target_boxes)) for s in stacks]
        if not is_distributed():
            return [max(c, 1.0) for c in counts]
        reduced = all_reduce_mean(upload(torch.tensor(counts), device)).clamp(min=1.0)
        return list(reduced.unbind())

    def _stack_losses(self, stack: _Stack, matched: Tensor, num_boxes: Union[float, Tensor]) -> Tensor:
        """Weighted losses ``[3, S]`` (rows :data:`LOSS_NAMES`) of one stack, given its matched
        pairs ``[4, K]`` (set, image, prediction, target; on the device)."""
        set_i, image_i, pred_i, target_i = matched.unbind(0)
        logits = stack.logits.float()
        target_classes = torch.zeros_like(logits)
        target_classes[set_i, image_i, pred_i, 0] = 1.0
        loss_class = sigmoid_focal_loss(logits, target_classes, self.focal_alpha, self.focal_gamma).flatten(1).sum(1)
        pred = stack.boxes[set_i, image_i, pred_i].float()
        tgt = stack.target_boxes.to(pred)[target_i]
        per_pair = torch.stack([(pred - tgt).abs().sum(-1),
                                1 - paired_generalized_box_iou(box_cxcywh_to_xyxy(pred), box_cxcywh_to_xyxy(tgt))])
        box_losses = per_pair.new_zeros(2, logits.shape[0]).index_add_(1, set_i, per_pair)
        w = [self.weights[k] * stack.weight for k in LOSS_NAMES]
        return torch.stack([loss_class * w[0], box_losses[0] * w[1], box_losses[1] * w[2]]) / num_boxes

    def forward(self, outputs: dict, targets: list[dict]) -> dict:
        """Weighted losses and their sum.

        Args:
            outputs: the model's output dict.
            targets: per image ``boxes [M, 4]`` (cxcywh, normalised to the unpadded query image).

        Returns:
            ``{name: scalar}`` with every weighted term (``loss_class``, ``loss_bbox_aux0``,
            ``loss_giou_enc``, ``loss_class_o2m`` ...) and ``"loss"``, their sum.
        """
        stacks = self._stacks(outputs, targets)
        device = stacks[0].logits.device
        matched = self.matcher.match_stacked([(s.logits.detach(), s.boxes.detach(), s.target_boxes, s.sizes)
                                              for s in stacks])
        losses, total = {}, []
        for stack, pairs, num_boxes in zip(stacks, matched, self._num_boxes(stacks, device)):
            per_set = self._stack_losses(stack, upload(pairs, device), num_boxes)
            total.append(per_set.sum())
            for k, name in enumerate(LOSS_NAMES):
                for s, suffix in enumerate(stack.names):
                    losses[f"{name}{suffix}"] = per_set[k, s]
        losses["loss"] = torch.stack(total).sum()
        return losses
