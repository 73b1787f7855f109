"""The ``box`` support layout: the exemplar laid into each object query's box frame.

Indirect attention needs keys and values of equal length, position ``j`` of the keys coming from the
support and position ``j`` of the values from the query image. The official code zero-pads both maps
to one grid (our ``pad`` layout), so the exemplar fills one corner of the grid; an object query whose
box bias keeps it inside its box then scores against keys that hold no exemplar content unless its
box lies in that corner (docs/PAPER_NOTES.md section 7).

The ``box`` layout gives every object query the whole exemplar: the support crop (the exemplar box
plus its context margin) is resized onto the query's reference box enlarged by the same margin, so
that the key at value cell ``j`` is the exemplar's feature at ``j``'s position *relative to the box*.
Keys and values then line up part by part (the exemplar's left half over the box's left half), and
the layout moves with the box, which each decoder layer refines. Cells outside the enlarged box get
no key (a score of zero; the box bias decides how much they are read).

The resize is an area average, separable per axis: the weight of support column ``c`` for value
column ``x`` of object query ``i`` is the share of cell ``x`` (in box-relative coordinates) that
support column ``c`` covers. So the key scores never exist per (object query, value cell, channel):
an object query first scores against the support's own ``Hs x Ws`` cells (``[B, heads, Q, Hs*Ws]``),
and the two weight tables carry those scores to the ``H x W`` value grid:
``score[i, y, x] = sum_{a, c} wy[i, y, a] * g[i, a, c] * wx[i, x, c]``.
"""
from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

from ..utils.box_ops import box_cxcywh_to_xyxy


class SupportGrid(NamedTuple):
    """The key source of the ``box`` layout: the support's own feature grid.

    Attributes:
        features: ``[B, Hs*Ws, d]`` support features with their position encoding (row-major,
            zero in the padding).
        grid_hw: ``(Hs, Ws)`` of the padded support grid.
        valid_hw: ``[B, 2]`` valid rows and columns of each support crop (top-left aligned).
        margin: context around the exemplar box in the crop, a fraction of the box size per side
            (``data.support_margin``): the object query's box is enlarged by it before the crop is
            laid into it, so that box matches box and context matches context.
    """

    features: Tensor
    grid_hw: tuple[int, int]
    valid_hw: Tensor
    margin: float


class BoxFrame(NamedTuple):
    """Per-object-query resize weights from the support grid to the value grid (see the module
    docstring).

    Attributes:
        weight_y: ``[B, Q, H, Hs]``; row ``y`` of the value grid from the support rows.
        weight_x: ``[B, Q, W, Ws]``; column ``x`` from the support columns.
    """

    weight_y: Tensor
    weight_x: Tensor

    def scores(self, support_scores: Tensor) -> Tensor:
        """``support_scores [B, heads, Q, Hs*Ws]`` -> ``[B, heads, Q, H*W]`` (row-major value grid)."""
        b, h, q, _ = support_scores.shape
        hs, ws = self.weight_y.shape[-1], self.weight_x.shape[-1]
        g = support_scores.reshape(b, h, q, hs, ws)
        g = torch.matmul(g, self.weight_x.transpose(-1, -2)[:, None].to(g.dtype))  # [B, heads, Q, Hs, W]
        g = torch.matmul(self.weight_y[:, None].to(g.dtype), g)  # [B, heads, Q, H, W]
        return g.flatten(-2)


def _axis_weights(lo: Tensor, hi: Tensor, cells: int, valid: Tensor, support_cells: int, support_valid: Tensor) -> Tensor:
    """Area weights of one axis.

    ``lo, hi [B, Q]``: the enlarged box edges in the query image's normalised coordinates;
    ``valid [B]``: value cells covering the unpadded query image (cell ``x`` spans
    ``[x / valid, (x + 1) / valid]``); ``support_valid [B]``: valid support cells. Returns
    ``[B, Q, cells, support_cells]``.
    """
    dtype = lo.dtype
    span = (hi - lo).clamp(min=1e-6)
    edges = torch.arange(cells + 1, device=lo.device, dtype=dtype)[None, :] / valid.to(dtype)[:, None]  # [B, cells+1]
    rel = (edges[:, None, :] - lo[..., None]) / span[..., None]  # [B, Q, cells+1], box-relative
    a, b = rel[..., :-1, None], rel[..., 1:, None]  # [B, Q, cells, 1]
    n = support_valid.to(dtype)[:, None, None, None]
    c = torch.arange(support_cells, device=lo.device, dtype=dtype)
    c_lo, c_hi = c / n, (c + 1) / n  # [B, 1, 1, Ws]
    overlap = (torch.minimum(b, c_hi) - torch.maximum(a, c_lo)).clamp(min=0)
    overlap = overlap * (c[None, None, None, :] < n).to(dtype)
    return overlap / (b - a).clamp(min=1e-6)


def box_frame(reference_boxes_cxcywh: Tensor, grid_hw: tuple[int, int], valid_hw: Tensor, support: SupportGrid) -> BoxFrame:
    """The resize weights that lay ``support`` into each object query's enlarged box.

    Args:
        reference_boxes_cxcywh: ``[B, Q, 4]`` normalised to the unpadded query image.
        grid_hw: ``(H, W)`` of the value grid; ``valid_hw [B, 2]`` its rows / columns inside the
            unpadded query image.
        support: the support grid and its margin.

    Returns:
        :class:`BoxFrame` with ``weight_y [B, Q, H, Hs]`` and ``weight_x [B, Q, W, Ws]``; each value
        cell's weights sum to the share of the cell inside the enlarged box (1 inside, 0 outside).
    """
    boxes = box_cxcywh_to_xyxy(reference_boxes_cxcywh.float())
    wh = boxes[..., 2:] - boxes[..., :2]
    lo = boxes[..., :2] - support.margin * wh
    hi = boxes[..., 2:] + support.margin * wh
    valid, s_valid = valid_hw.to(boxes.device), support.valid_hw.to(boxes.device)
    wy = _axis_weights(lo[..., 1], hi[..., 1], grid_hw[0], valid[:, 0], support.grid_hw[0], s_valid[:, 0])
    wx = _axis_weights(lo[..., 0], hi[..., 0], grid_hw[1], valid[:, 1], support.grid_hw[1], s_valid[:, 1])
    return BoxFrame(weight_y=wy, weight_x=wx)
