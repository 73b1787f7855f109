"""Normalised cross-correlation of pixels: the exemplar used as a template over the query image.

The training-free template matcher (:mod:`detector.matching`) is the strongest reference on real
photos, and nothing of it is learned: a look-alike is where the exemplar's pixels, shifted, agree
with the image's. :func:`pixel_ncc_maps` computes that inside the model, batched and without
parameters, so that the decoder can read it beside the features (:class:`ExemplarSimilarity`):

* the query image is average-pooled to stride :data:`STRIDE` (4);
* the exemplar box (the support crop without its context margin) is resampled to a square
  template of each side in :data:`SCALES` (query-image pixels; the trained object side is about
  46 px, so the scales span half to one and a half of it) with ``roi_align``;
* each template is slid over the query (zero-mean template, each window's own mean and norm, the
  three colour channels together: OpenCV's ``TM_CCOEFF_NORMED``), one grouped convolution per scale
  for the whole batch;
* the maximum over the cells of each feature cell gives one map per scale on the query's feature
  grid, in ``[-1, 1]``; padded cells are 0.

A square template ignores the exemplar's aspect ratio (a long object is squeezed): the price of
one kernel shape per scale for the whole batch.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor
from torchvision.ops import roi_align

SCALES = (24, 34, 48, 68)  # template sides in query-image pixels
STRIDE = 4  # the query image and the templates are compared at 1/STRIDE of the pixels
# Added to each window's and template's squared norm (per pixel and channel, [0, 1] pixels): a flat
# window (a noise level of about 1% of the range) scores near 0 instead of an arbitrary sign.
FLAT = 1e-4


def template_boxes(support_sizes: Tensor, margin: float) -> Tensor:
    """``roi_align`` boxes ``[B, 5]`` (batch index, x0, y0, x1, y1) of the exemplar box inside each
    support crop: the crop's valid ``(height, width)`` in ``support_sizes [B, 2]`` less the context
    ``margin`` (a fraction of the box side added on each side by the crop)."""
    h, w = support_sizes[:, 0].float(), support_sizes[:, 1].float()
    inset = margin / (1.0 + 2.0 * margin)
    index = torch.ones_like(h).cumsum(0) - 1  # 0..B-1, kept dynamic by an ONNX trace
    return torch.stack([index, inset * w, inset * h, (1 - inset) * w, (1 - inset) * h], 1)


def _window_sums(padded: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """Per channel sums of an image padded by :func:`_same_pad` ``[B, 3, h + k - 1, w + k - 1]``
    and of its squares over each ``k x k`` window -> two ``[B, 3, h, w]`` (a separable box
    filter: rows, then columns)."""
    def box(x: Tensor) -> Tensor:
        return F.avg_pool2d(F.avg_pool2d(x, (k, 1), stride=1), (1, k), stride=1) * (k * k)

    return box(padded), box(padded * padded)


def _same_pad(image: Tensor, k: int) -> Tensor:
    before = (k - 1) // 2
    return F.pad(image, (before, k - 1 - before, before, k - 1 - before), mode="replicate")


def ncc(image: Tensor, template: Tensor) -> Tensor:
    """Normalised cross-correlation of each ``image [B, 3, h, w]`` with its own ``template
    [B, 3, k, k]`` (zero-mean template and windows, channels together) -> ``[B, h, w]`` (``same``
    size, replicate padding), in ``[-1, 1]``."""
    b, c, h, w = image.shape
    k = int(template.shape[-1])  # a Python int: a constant in an ONNX trace
    t = template - template.mean((2, 3), keepdim=True)
    t_norm2 = t.pow(2).sum((1, 2, 3)) + FLAT * k * k * c
    padded = _same_pad(image, k)
    if torch.onnx.is_in_onnx_export():
        # A grouped convolution's group count would be fixed to the traced batch size: unfolded
        # windows instead (the same numbers, 8x slower on the CPU, so only in an export).
        dot = torch.einsum("bk,bkn->bn", t.flatten(1), F.unfold(padded, k)).view(b, h, w)
    else:  # each image with its own template: one group per image
        dot = F.conv2d(padded.reshape(1, b * c, h + k - 1, w + k - 1), t, groups=b).view(b, h, w)
    sums, squares = _window_sums(padded, k)
    var = (squares - sums * sums / (k * k)).sum(1).clamp(min=0) + FLAT * k * k * c
    return (dot / (var * t_norm2[:, None, None]).sqrt()).clamp(-1.0, 1.0)


def pixel_ncc_maps(query_pixels: Tensor, query_sizes: Tensor, support_pixels: Tensor, support_sizes: Tensor,
                   feature_stride: int, margin: float) -> Tensor:
    """The maps of the module docstring.

    Args:
        query_pixels: ``[B, 3, H, W]`` query images in ``[0, 1]`` (zero padding; ``H`` and ``W``
            multiples of the feature stride).
        query_sizes: ``[B, 2]`` valid ``(height, width)`` of each query image.
        support_pixels: ``[B, 3, S, S]`` exemplar crops in ``[0, 1]``, top-left aligned.
        support_sizes: ``[B, 2]`` valid ``(height, width)`` of each crop.
        feature_stride: the stride of the query's feature grid the maps are max-pooled to (a
            multiple of :data:`STRIDE`).
        margin: the context margin of the crops (``data.support_margin``).

    Returns:
        ``[B, H / feature_stride * W / feature_stride, len(SCALES)]``, 0 at padded cells. No
        parameter.
    """
    q = F.avg_pool2d(query_pixels.float(), STRIDE)
    b, _, h, w = q.shape
    rows = torch.arange(h, device=q.device)[None, :, None] * STRIDE
    cols = torch.arange(w, device=q.device)[None, None, :] * STRIDE
    valid = (rows < query_sizes[:, 0, None, None]) & (cols < query_sizes[:, 1, None, None])  # [B, h, w]
    mean = (q * valid[:, None]).sum((2, 3), keepdim=True) / valid.sum((1, 2)).clamp(min=1)[:, None, None, None]
    q = torch.where(valid[:, None], q, mean)  # padding as the image's mean colour: no false edges
    boxes = template_boxes(support_sizes, margin)
    pool = feature_stride // STRIDE
    cell_valid = F.max_pool2d(valid[:, None].float(), pool)[:, 0] > 0  # [B, gh, gw]: any valid pixel
    maps = []
    for side in SCALES:
        k = max(3, round(side / STRIDE))
        template = roi_align(support_pixels.float(), boxes, (k, k), spatial_scale=1.0, sampling_ratio=2, aligned=True)
        score = ncc(q, template).masked_fill(~valid, -1.0)  # the cell's maximum over its valid pixels only
        maps.append(F.max_pool2d(score[:, None], pool)[:, 0])
    out = torch.stack(maps, -1).masked_fill(~cell_valid[..., None], 0.0)  # [B, gh, gw, len(SCALES)]
    return out.flatten(1, 2)
