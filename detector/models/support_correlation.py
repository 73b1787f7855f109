"""Per-cell correlation of the query image with the exemplar, added to the decoder's values.

Indirect attention lets the support choose *where* an object query reads (through the keys) but the
values it reads describe the query image only, and the softmax normalises the keys' overall match
away: nothing in the values says "this cell looks like the exemplar". Classic one-shot detectors
(SiamFC, OSCD, CoAE) compute exactly that as a correlation map. :class:`SupportCorrelation` is a
small, multi-channel version of it: for each of ``channels`` learned projections, the best cosine
similarity between a query-map cell and any valid support cell. The result is projected to
``d_model`` and added to the values, so what a box reads (through the box bias, when the
attention has one) includes how much its cells look like the exemplar. The keys are unchanged.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class SupportCorrelation(nn.Module):
    """``channels`` cosine-similarity maps between query cells and their best-matching support cell.

    Args:
        d_model: width of the query and support features.
        channels: number of correlation channels (learned projection pairs).
        channel_dim: width of each projection.
    """

    def __init__(self, d_model: int, channels: int = 16, channel_dim: int = 32):
        super().__init__()
        if channels < 1 or channel_dim < 1:
            raise ValueError(f"channels and channel_dim must be positive, got {channels}, {channel_dim}")
        self.channels = channels
        self.channel_dim = channel_dim
        self.proj_query = nn.Linear(d_model, channels * channel_dim)
        self.proj_support = nn.Linear(d_model, channels * channel_dim)
        self.out = nn.Linear(channels, d_model)

    def similarity(self, query_feats: Tensor, support_feats: Tensor, support_padding_mask: Tensor) -> Tensor:
        """``query_feats [B, N, d]``, ``support_feats [B, M, d]``, ``support_padding_mask [B, M]``
        (True = padding) -> best cosine similarity per channel ``[B, N, channels]`` in ``[-1, 1]``."""
        b, n, _ = query_feats.shape
        m = support_feats.shape[1]
        c, x = self.channels, self.channel_dim
        # No check that each support has a valid cell: it would make the host wait for the device
        # at every forward. The detector's supports always do (the backbone keeps the cell of an
        # image's top-left pixel), and an all-padding support would give finite similarities of -2
        # or less (padding enters as -3 below), never a NaN.
        a = F.normalize(self.proj_query(query_feats).view(b, n, c, x), dim=-1)
        s = F.normalize(self.proj_support(support_feats).view(b, m, c, x), dim=-1)
        a = a.permute(0, 2, 1, 3).reshape(b * c, n, x)
        s = s.permute(0, 2, 3, 1).reshape(b * c, x, m)
        # Padding enters the product as an additive -3 (cosines lie in [-1, 1]), and the best match
        # is taken with max (its backward scatters into the arg-max cell; amax's would compare and
        # divide over the whole [B*C, N, M] map, several times slower on the CPU).
        pad = (support_padding_mask.to(a.dtype) * -3.0)[:, None, None, :].expand(b, c, 1, m).reshape(b * c, 1, m)
        sim = torch.baddbmm(pad, a, s)  # [B*C, N, M]
        return sim.max(dim=-1).values.view(b, c, n).transpose(1, 2)

    def forward(self, query_feats: Tensor, support_feats: Tensor, support_padding_mask: Tensor) -> Tensor:
        """Same inputs as :meth:`similarity` -> ``[B, N, d_model]`` to add to the values."""
        return self.out(self.similarity(query_feats, support_feats, support_padding_mask))
