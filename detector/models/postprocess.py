"""From model outputs to scored boxes in pixels of the original query image."""
from __future__ import annotations

import torch
from torch import Tensor, nn

from ..utils.box_ops import box_cxcywh_to_xyxy, scale_boxes
from .nms import nms_mask, survivors_first


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
        absolute pixels, clipped to the image), sorted by score.

        Without NMS the whole batch goes through batched operators and nothing makes the host wait
        for the device; with NMS the host waits for the NMS of the batch (torchvision's kernel
        reads its result on the host; several images per call) and for the number of survivors
        per image, once for the batch."""
        scores = outputs["pred_logits"][..., 0].float().sigmoid()
        boxes = scale_boxes(box_cxcywh_to_xyxy(outputs["pred_boxes"].float()), target_sizes)
        hw = target_sizes.to(boxes)
        bounds = torch.stack([hw[:, 1], hw[:, 0], hw[:, 1], hw[:, 0]], dim=-1)[:, None, :]  # [B, 1, 4]
        boxes = torch.minimum(boxes.clamp(min=0), bounds)
        if self.nms_iou <= 0:
            k = min(self.num_select, scores.shape[1])
            top_scores, top = scores.topk(k, dim=1)  # sorted, as argsort(descending) would order them
            top_boxes = boxes.gather(1, top[..., None].expand(-1, -1, 4))
            return [{"scores": s, "boxes": b} for s, b in zip(top_scores, top_boxes)]
        keep = nms_mask(boxes, scores, self.nms_iou)  # [B, Q]
        k = min(self.num_select, scores.shape[1])
        order = scores.argsort(dim=1, descending=True)
        top = order.gather(1, survivors_first(keep.gather(1, order), k))  # [B, k], by decreasing score
        counts = keep.sum(dim=1).clamp(max=k).tolist()  # the one read: how many survive per image
        return [{"scores": scores[i, top[i, :c]], "boxes": boxes[i, top[i, :c]]} for i, c in enumerate(counts)]


def results_to_host(results: list[dict]) -> list[dict]:
    """Per-image result dicts of tensors (any device) -> the same as float32 CPU tensors, with one
    copy from the device for the whole list (instead of one per tensor, each a wait)."""
    flat = [(i, k, v) for i, r in enumerate(results) for k, v in r.items()]
    if not flat:
        return [{} for _ in results]
    host = torch.cat([v.detach().float().reshape(-1) for _, _, v in flat]).cpu()
    out: list = [{} for _ in results]
    start = 0
    for i, k, v in flat:
        out[i][k] = host[start:start + v.numel()].view(v.shape)
        start += v.numel()
    return out
