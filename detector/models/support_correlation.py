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
        (True = padding) -> best cosine similarity per channel ``[B, N, channels]`` in ``[-1, 1]``.

        Padding cells enter as ``cosine - 3``: they never win over a valid cell. No check that each
        support has a valid cell (it would make the host wait for the device at every forward): the
        detector's supports always do (the backbone keeps the cell of an image's top-left pixel),
        and an all-padding support gives finite similarities of -2 or less, never a NaN.

        When a gradient is wanted, the best cell is found without one and only the ``[B, N,
        channels]`` chosen cosines are computed again with it (:meth:`_best_match`): the gradient of
        a maximum is that of its arg-max entry, so this is the same gradient without a backward
        through the ``[B * channels, N, M]`` similarity map. Otherwise (inference, ONNX export) the
        maximum is taken over that map directly (:meth:`similarity_reference`).
        """
        wants_grad = torch.is_grad_enabled() and (query_feats.requires_grad or support_feats.requires_grad
                                                  or self.proj_query.weight.requires_grad)
        if not wants_grad or torch.onnx.is_in_onnx_export():
            return self.similarity_reference(query_feats, support_feats, support_padding_mask)
        return self._best_match(query_feats, support_feats, support_padding_mask)

    def _projected(self, query_feats: Tensor, support_feats: Tensor) -> tuple[Tensor, Tensor]:
        """``(query [B, C, N, X]`` projected, not normalised (a view), ``support [B, C, M, X]``
        projected and normalised)."""
        b, n, _ = query_feats.shape
        m = support_feats.shape[1]
        c, x = self.channels, self.channel_dim
        a = self.proj_query(query_feats).view(b, n, c, x).transpose(1, 2)
        s = F.normalize(self.proj_support(support_feats).view(b, m, c, x), dim=-1).transpose(1, 2)
        return a, s

    def similarity_reference(self, query_feats: Tensor, support_feats: Tensor, support_padding_mask: Tensor) -> Tensor:
        """:meth:`similarity` as the maximum over the whole ``[B * channels, N, M]`` cosine map: the
        definition, and the cheaper form when no gradient is wanted."""
        b, n, _ = query_feats.shape
        m = support_feats.shape[1]
        c, x = self.channels, self.channel_dim
        a = F.normalize(self.proj_query(query_feats).view(b, n, c, x), dim=-1)
        s = F.normalize(self.proj_support(support_feats).view(b, m, c, x), dim=-1)
        a = a.permute(0, 2, 1, 3).reshape(b * c, n, x)
        s = s.permute(0, 2, 3, 1).reshape(b * c, x, m)
        # Padding enters the product as an additive -3 (cosines lie in [-1, 1]).
        pad = (support_padding_mask.to(a.dtype) * -3.0)[:, None, None, :].expand(b, c, 1, m).reshape(b * c, 1, m)
        sim = torch.baddbmm(pad, a, s)  # [B*C, N, M]
        return sim.max(dim=-1).values.view(b, c, n).transpose(1, 2)

    def _best_match(self, query_feats: Tensor, support_feats: Tensor, support_padding_mask: Tensor) -> Tensor:
        """:meth:`similarity`, differentiated through each row's best support cell only."""
        a, s = self._projected(query_feats, support_feats)  # [B, C, N, X], [B, C, M, X]
        b, c, n, x = a.shape
        m = s.shape[2]
        with torch.no_grad():
            # The best cell of a row maximises the cosine, and so the product with the normalised
            # support cells (the query cell's norm is common to its row). Padding is left out,
            # unless a support is all padding: then its cells compete alike, as cosine - 3 does.
            pad = support_padding_mask & ~support_padding_mask.all(dim=1, keepdim=True)
            skip = torch.zeros(pad.shape, dtype=a.dtype, device=a.device).masked_fill_(pad, float("-inf"))
            product = torch.bmm(a.reshape(b * c, n, x), s.reshape(b * c, m, x).transpose(1, 2))  # [B*C, N, M]
            best = product.view(b, c, n, m).add_(skip[:, None, None, :]).argmax(dim=-1)  # [B, C, N]
            flat = best + (torch.arange(b * c, device=best.device) * m).view(b, c, 1)  # rows of s.flatten(0, 1)
        chosen = s.reshape(b * c * m, x).index_select(0, flat.flatten()).view(b, c, n, x)
        norm = torch.linalg.vector_norm(a, dim=-1).clamp_min(1e-12)  # F.normalize's eps
        padded = torch.gather(support_padding_mask[:, None, :].expand(b, c, m), 2, best)
        cos = (a * chosen).sum(dim=-1) / norm - 3.0 * padded.to(norm.dtype)
        return cos.transpose(1, 2)

    def forward(self, query_feats: Tensor, support_feats: Tensor, support_padding_mask: Tensor) -> Tensor:
        """Same inputs as :meth:`similarity` -> ``[B, N, d_model]`` to add to the values."""
        return self.out(self.similarity(query_feats, support_feats, support_padding_mask))
