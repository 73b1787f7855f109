"""The support layout: how the exemplar's keys line up with the query image's values.

Indirect attention scores an object query against keys from the support (exemplar) feature map and
reads values from the query-image feature map, so the two need one grid. Three layouts
(``model.support_layout``; the allowed names are :data:`detector.config.SUPPORT_LAYOUTS`):

* ``box`` (the product): the exemplar crop laid into each object query's reference box, enlarged by
  the crop's context margin, in every layer (:mod:`detector.models.box_frame`); cells outside the
  box get no key score.
* ``pad`` (the official code): both maps zero-padded to a common grid, the exemplar in one corner;
  a position is excluded only where both maps are padding.
* ``resize``: the support map resized bilinearly onto the query image's valid grid.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from ..config import SUPPORT_LAYOUTS
from .box_frame import SupportGrid
from .position_encoding import PositionEmbeddingSine


def valid_extent(mask: Tensor) -> Tensor:
    """``mask [B, H, W]`` -> ``[B, 2]`` number of valid rows and columns (top-left aligned images)."""
    return torch.stack([(~mask[:, :, 0]).sum(1), (~mask[:, 0, :]).sum(1)], dim=1)


def resize_valid(features: Tensor, from_hw: Tensor, to_hw: Tensor, out_hw: tuple[int, int]) -> Tensor:
    """Each map's valid top-left region resized bilinearly onto another top-left region, as
    ``F.interpolate(region, size, mode="bilinear", align_corners=False)`` does it, for the whole batch
    in one ``grid_sample`` (no per-image size is read on the host).

    ``features [B, C, Hs, Ws]``, ``from_hw [B, 2]`` valid rows and columns of each map, ``to_hw
    [B, 2]`` the rows and columns to resize them to -> ``[B, C, H, W]`` with ``(H, W) = out_hw``;
    cells outside ``to_hw`` hold border values (callers mask them).
    """
    b, _, hs_pad, ws_pad = features.shape
    h, w = out_hw
    src, dst = from_hw.float(), to_hw.float().clamp(min=1)

    def source(n: int, axis: int) -> Tensor:  # [B, n] source pixel coordinate of each output pixel
        pos = torch.arange(n, device=features.device, dtype=torch.float32)
        coord = ((pos[None] + 0.5) * (src[:, axis] / dst[:, axis])[:, None] - 0.5).clamp(min=0)
        return torch.minimum(coord, (src[:, axis] - 1)[:, None])

    gy = (2 * source(h, 0) + 1) / hs_pad - 1  # grid_sample's normalised coordinates (align_corners=False)
    gx = (2 * source(w, 1) + 1) / ws_pad - 1
    grid = torch.stack([gx[:, None, :].expand(b, h, w), gy[:, :, None].expand(b, h, w)], dim=-1)
    out = F.grid_sample(features.float(), grid, mode="bilinear", padding_mode="border", align_corners=False)
    return out.to(features.dtype)


class SupportLayout:
    """One of the layouts of the module docstring; parameter-free.

    Args:
        kind: ``"box"`` | ``"pad"`` | ``"resize"``.
        position_encoding: the sine encoding added to keys and values (the model's own).
        support_margin: context around the exemplar box in the crop (``data.support_margin``),
            used by ``box``.
    """

    def __init__(self, kind: str, position_encoding: PositionEmbeddingSine, support_margin: float = 0.1):
        if kind not in SUPPORT_LAYOUTS:
            raise ValueError(f"support_layout must be one of {SUPPORT_LAYOUTS}, got {kind!r}")
        self.kind, self.position_encoding, self.support_margin = kind, position_encoding, float(support_margin)

    def __call__(self, q_feat: Tensor, q_mask: Tensor, s_feat: Tensor, s_mask: Tensor):
        """Keys, values and padding mask for the cross step, from ``q_feat [B, d, H, W]``, ``q_mask
        [B, H, W]``, ``s_feat [B, d, h, w]``, ``s_mask [B, h, w]`` (True = padding).

        Returns ``keys`` (``[B, N, d]``, or a :class:`SupportGrid` for ``box``), ``values [B, N, d]``,
        ``key_padding_mask [B, N]`` and the query features and mask on the value grid (padded
        further by ``pad``).
        """
        encode = self.position_encoding
        q_pos = encode(q_mask)
        if self.kind == "pad":
            gh, gw = max(q_feat.shape[-2], s_feat.shape[-2]), max(q_feat.shape[-1], s_feat.shape[-1])
            pad = lambda t, v: F.pad(t, (0, gw - t.shape[-1], 0, gh - t.shape[-2]), value=v)  # noqa: E731
            q_feat, q_mask = pad(q_feat, 0.0), pad(q_mask, True)
            s_feat, s_mask = pad(s_feat, 0.0), pad(s_mask, True)
            q_pos = encode(q_mask)
            keys = (s_feat + encode(s_mask)).flatten(2).transpose(1, 2)
            key_padding_mask = (q_mask & s_mask).flatten(1)
        elif self.kind == "box":
            s_grid = (s_feat + encode(s_mask)).masked_fill(s_mask[:, None], 0.0)
            keys = SupportGrid(s_grid.flatten(2).transpose(1, 2), tuple(s_feat.shape[-2:]), valid_extent(s_mask),
                               self.support_margin)
            key_padding_mask = q_mask.flatten(1)
        else:
            resized = resize_valid(s_feat, valid_extent(s_mask), valid_extent(q_mask), tuple(q_feat.shape[-2:]))
            resized = resized.masked_fill(q_mask[:, None], 0.0)
            keys = (resized + q_pos).flatten(2).transpose(1, 2)
            key_padding_mask = q_mask.flatten(1)
        values = (q_feat + q_pos).flatten(2).transpose(1, 2)
        return keys, values, key_padding_mask, q_feat, q_mask
