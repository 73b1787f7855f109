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

With ``pixels=True`` the readers also take the normalised cross-correlation of the pixels, one
map per template scale (:mod:`detector.models.pixel_correlation`); ``features=False`` leaves the
cosine maps out.

Nothing in :meth:`maps` is learned. Two linear readers are: one adds the maps to the decoder's
values (what a box reads says how much its cells look like the exemplar), one to the memory the
proposals are scored from (object queries start on look-alikes). The keys are unchanged.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.ops import roi_align

from .pixel_correlation import SCALES, pixel_ncc_maps

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
        features: read the cosine maps of the frozen features (:data:`MAPS`).
        pixels: read the pixel correlation maps (one per :data:`~detector.models.pixel_correlation.SCALES`);
            the model then needs the images' pixels, also when it is given cached features.
        margin: the support crops' context margin (``data.support_margin``): the pixel template
            is the crop without it.
    """

    def __init__(self, d_model: int, features: bool = True, pixels: bool = False, margin: float = 0.1):
        super().__init__()
        if not (features or pixels):
            raise ValueError("ExemplarSimilarity needs the feature maps, the pixel maps or both")
        self.features, self.pixels, self.margin = bool(features), bool(pixels), float(margin)
        num_maps = len(MAPS) * self.features + len(SCALES) * self.pixels
        self.to_values = nn.Linear(num_maps, d_model)
        self.to_proposals = nn.Linear(num_maps, d_model)

    def all_maps(self, query: tuple, support: tuple, feature_stride: int) -> Tensor:
        """Every map this module reads -> ``[B, H * W, num_maps]`` on the query's feature grid.

        ``query`` is ``(body [B, C, H, W], mask [B, H, W], pixels [B, 3, H', W'] or None,
        image_sizes [B, 2])``, ``support`` the same for the exemplar crops (pixels are needed only
        with ``pixels``); ``feature_stride`` the backbone's (``H' = H * feature_stride``)."""
        q_body, q_mask, q_pixels, q_sizes = query
        s_body, s_mask, s_pixels, s_sizes = support
        out = []
        if self.features:
            out.append(self.maps(q_body, q_mask, s_body, s_mask))
        if self.pixels:
            if q_pixels is None or s_pixels is None:
                raise ValueError("this model reads pixel correlation maps: give it images, or cached features "
                                 "that carry their pixels (FeatureCache(keep_pixels=True))")
            with torch.no_grad():  # data, not parameters: nothing to differentiate
                pixel_maps = pixel_ncc_maps(q_pixels, q_sizes, s_pixels, s_sizes, feature_stride, self.margin)
            out.append(pixel_maps.to(q_body.dtype))  # 0 at padded cells, as the cosine maps
        return torch.cat(out, -1) if len(out) > 1 else out[0]

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
        """``maps [B, N, num_maps]`` -> (to add to the values, to add to the proposal memory), each
        ``[B, N, d_model]``."""
        return self.to_values(maps), self.to_proposals(maps)
