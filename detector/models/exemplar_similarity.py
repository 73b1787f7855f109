"""Parameter-free similarity of the query image with the exemplar, read by the decoder.

Every other way the exemplar reaches a decision (the keys, :class:`SupportCorrelation`'s
projections) is a projection learned on the training data. Trained on procedural shapes only,
nothing makes such a projection mean "looks like the exemplar" on a photo. Class-agnostic counting
models (FamNet, LOCA, DAVE) compare the exemplar with the image through a fixed similarity of
frozen features and learn only what turns similarity maps into boxes, the part that carries across
domains. :class:`ExemplarSimilarity` does that for the one-shot DETR:

:meth:`ExemplarSimilarity.maps` compares the frozen backbone's *body* features (before the
trainable projection) of each query cell with the exemplar, by cosine, in :data:`MAPS` ways:

* ``mean``: with the exemplar's mean feature (its valid cells averaged);
* ``best``: with the exemplar's best-matching cell;
* ``window``: the query's 3 x 3 window of cells around the cell with the exemplar pooled to 3 x 3
  cells (``roi_align`` over its valid cells): a template match of the layout, at about the
  trained object size (45.7 px, 2.9 cells at stride 16);
* ``window2``: the same with the window dilated by 2 (5 x 5 cells: larger objects).

Nothing in :meth:`maps` is learned. Two linear readers are: one adds the maps to the decoder's
values (what a box reads says how much its cells look like the exemplar), one to the memory the
proposals are scored from (object queries start on look-alikes). The keys are unchanged.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.ops import roi_align

MAPS = ("mean", "best", "window", "window2")
WINDOW = 3  # the exemplar is pooled to WINDOW x WINDOW cells for the window maps


def _window_cosine(query: Tensor, template: Tensor, dilation: int) -> Tensor:
    """Cosine of each ``WINDOW x WINDOW`` window (dilated, zero-padded, centred on a cell) of
    ``query [B, C, H, W]`` (unit-norm cells, zero at padding) with ``template [B, C, 3, 3]`` ->
    ``[B, H, W]``. Windows with no valid cell give 0."""
    b, c, h, w = query.shape
    pad = dilation * (WINDOW // 2)
    windows = F.unfold(query, WINDOW, dilation=dilation, padding=pad)  # [B, C*9, H*W]
    t = F.normalize(template.flatten(1), dim=1)  # [B, C*9]
    dot = torch.einsum("bk,bkn->bn", t, windows)
    norm = windows.pow(2).sum(1).clamp(min=1e-12).sqrt()
    return (dot / norm).view(b, h, w)


class ExemplarSimilarity(nn.Module):
    """The similarity maps of the module docstring and their two learned readers.

    Args:
        d_model: width of the decoder's values and of the proposals' memory.
    """

    def __init__(self, d_model: int):
        super().__init__()
        self.to_values = nn.Linear(len(MAPS), d_model)
        self.to_proposals = nn.Linear(len(MAPS), d_model)

    @staticmethod
    def maps(query_body: Tensor, query_mask: Tensor, support_body: Tensor, support_mask: Tensor) -> Tensor:
        """``query_body [B, C, H, W]``, ``query_mask [B, H, W]``, ``support_body [B, C, h, w]``,
        ``support_mask [B, h, w]`` (True = padding; body features of the frozen backbone) ->
        ``[B, H * W, len(MAPS)]`` cosines in ``[-1, 1]`` (0 at padded query cells). No parameter."""
        q = F.normalize(query_body.float(), dim=1).masked_fill(query_mask[:, None], 0.0)
        s_valid = (~support_mask).float()[:, None]  # [B, 1, h, w]
        s = F.normalize(support_body.float(), dim=1) * s_valid
        proto = F.normalize((support_body.float() * s_valid).sum((2, 3)) / s_valid.sum((2, 3)).clamp(min=1), dim=1)
        mean = torch.einsum("bchw,bc->bhw", q, proto)
        cells = torch.einsum("bcn,bcm->bnm", q.flatten(2), s.flatten(2))  # [B, H*W, h*w]
        cells = cells - 3.0 * support_mask.flatten(1)[:, None].float()  # padding never the best
        best = cells.max(dim=-1).values.view_as(mean)
        rows = s_valid[:, 0, :, 0].sum(1)  # valid rows / columns (top-left aligned crops)
        cols = s_valid[:, 0, 0, :].sum(1)
        zero = torch.zeros_like(rows)
        index = torch.ones_like(rows).cumsum(0) - 1  # 0..B-1, a batch size an ONNX trace keeps dynamic
        boxes = torch.stack([index, zero, zero, cols, rows], 1)
        template = roi_align(support_body.float(), boxes, (WINDOW, WINDOW), spatial_scale=1.0, sampling_ratio=2,
                             aligned=False)  # [B, C, 3, 3] over the valid cells
        window = _window_cosine(q, template, 1)
        window2 = _window_cosine(q, template, 2)
        out = torch.stack([mean, best, window, window2], dim=-1).masked_fill(query_mask[..., None], 0.0)
        return out.flatten(1, 2)

    def forward(self, maps: Tensor) -> tuple[Tensor, Tensor]:
        """``maps [B, N, len(MAPS)]`` -> (to add to the values, to add to the proposal memory), each
        ``[B, N, d_model]``."""
        return self.to_values(maps), self.to_proposals(maps)
