"""Indirect attention: object queries score against one sequence (keys) and read another (values).

In the detector the keys come from the support (exemplar) features and the values from the query
image features, so position ``j`` of the keys and position ``j`` of the values describe different
content. A learned, per-head relative-position bias over (object query, value position) restores
the alignment (Bahaduri et al. 2025):

    s_ij = q_i . k_j / sqrt(d_head) + bias_ij,   o_i = sum_j softmax_j(s_ij) v_j

The bias over a value grid of ``H x W`` positions is *factored*: ``bias_ij = bias_y[i, row(j)] +
bias_x[i, col(j)]``, a ``[B, heads, Q, H]`` and a ``[B, heads, Q, W]`` table. A 1-D sequence is the
grid ``1 x n`` with ``bias_y = 0``. Two kernels compute the same thing:

* ``reference``: materialises ``bias`` as ``[B, heads, Q, H*W]`` and adds it to the logits: the
  straightforward form, kept as the ground truth.
* ``fused``: appends the two tables to the queries and one-hot row/column codes to the keys, so
  that one ``scaled_dot_product_attention`` call computes ``q.k/sqrt(d) + bias`` exactly without
  ever forming the bias or the logits in Python.
"""
from __future__ import annotations

import math
from typing import NamedTuple, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..utils.box_ops import box_cxcywh_to_xyxy


class FactoredBias(NamedTuple):
    """A relative-position bias over an ``H x W`` value grid, as two per-axis tables.

    Attributes:
        bias_y: ``[B, heads, Q, H]``; bias of each object query for each value row.
        bias_x: ``[B, heads, Q, W]``; bias of each object query for each value column.
    """

    bias_y: Tensor
    bias_x: Tensor

    def materialise(self) -> Tensor:
        """The full ``[B, heads, Q, H*W]`` bias (row-major over the grid)."""
        b = self.bias_y[..., :, None] + self.bias_x[..., None, :]
        return b.flatten(-2)


def _signed_log(x: Tensor) -> Tensor:
    # Plain-DETR's log-spaced offsets: fine resolution near the box edge, compressed far away.
    return torch.sign(x) * torch.log2(x.abs() * 8.0 + 1.0) / 3.0


class BoxRelativePositionBias(nn.Module):
    """Decomposed box relative-position bias (Plain-DETR's BoxRPB), one value per head.

    For each object query with reference box ``(x0, y0, x1, y1)`` and each value column centre
    ``px`` the x-MLP sees ``(x0 - px, x1 - px)``; likewise the y-MLP for rows. Each MLP is
    ``Linear(2, hidden) -> ReLU -> Linear(hidden, heads)``.

    Args:
        num_heads: attention heads (one bias per head).
        hidden_dim: hidden width of each per-axis MLP (512 in the official code).
    """

    def __init__(self, num_heads: int, hidden_dim: int = 512):
        super().__init__()
        self.num_heads = num_heads
        self.mlp_x = nn.Sequential(nn.Linear(2, hidden_dim), nn.ReLU(inplace=True), nn.Linear(hidden_dim, num_heads))
        self.mlp_y = nn.Sequential(nn.Linear(2, hidden_dim), nn.ReLU(inplace=True), nn.Linear(hidden_dim, num_heads))
        # Start unbiased: the last layers begin at zero so that training decides how much to steer.
        for mlp in (self.mlp_x, self.mlp_y):
            nn.init.zeros_(mlp[2].weight)
            nn.init.zeros_(mlp[2].bias)

    def forward(self, reference_boxes_cxcywh: Tensor, grid_hw: tuple[int, int], valid_hw: Tensor) -> FactoredBias:
        """Bias tables for every object query over a padded value grid.

        Args:
            reference_boxes_cxcywh: ``[B, Q, 4]`` boxes normalised to the unpadded query image.
            grid_hw: ``(H, W)`` of the padded value grid.
            valid_hw: ``[B, 2]`` rows and columns of the grid covered by the unpadded image, so that
                cell centres are ``(j + 0.5) / valid_w`` in the boxes' normalised coordinates.

        Returns:
            ``FactoredBias`` with ``bias_y [B, heads, Q, H]`` and ``bias_x [B, heads, Q, W]``.
        """
        grid_h, grid_w = grid_hw
        boxes = box_cxcywh_to_xyxy(reference_boxes_cxcywh)
        dtype, device = boxes.dtype, boxes.device
        valid = valid_hw.to(dtype)
        cx = (torch.arange(grid_w, device=device, dtype=dtype) + 0.5)[None, :] / valid[:, 1:2]  # [B, W]
        cy = (torch.arange(grid_h, device=device, dtype=dtype) + 0.5)[None, :] / valid[:, 0:1]  # [B, H]
        dx = boxes[:, :, None, 0::2] - cx[:, None, :, None]  # [B, Q, W, 2]
        dy = boxes[:, :, None, 1::2] - cy[:, None, :, None]  # [B, Q, H, 2]
        bias_x = self.mlp_x(_signed_log(dx)).permute(0, 3, 1, 2)  # [B, heads, Q, W]
        bias_y = self.mlp_y(_signed_log(dy)).permute(0, 3, 1, 2)  # [B, heads, Q, H]
        return FactoredBias(bias_y=bias_y, bias_x=bias_x)


class SequenceRelativeBias(nn.Module):
    """1-D relative-position bias for sequences: the grid ``1 x n`` of :class:`FactoredBias`.

    Each object query ``i`` has a (learned or given) reference position ``r_i`` in ``[0, 1]``; the
    bias to value position ``j`` is ``MLP(r_i - (j + 0.5) / n)``.
    """

    def __init__(self, num_heads: int, hidden_dim: int = 128):
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(1, hidden_dim), nn.ReLU(inplace=True), nn.Linear(hidden_dim, num_heads))

    def forward(self, reference_positions: Tensor, length: int) -> FactoredBias:
        """``reference_positions [B, Q]`` in ``[0, 1]`` -> ``FactoredBias`` over ``1 x length``."""
        centres = (torch.arange(length, device=reference_positions.device, dtype=reference_positions.dtype) + 0.5) / length
        offsets = reference_positions[:, :, None, None] - centres[None, None, :, None]  # [B, Q, n, 1]
        bias_x = self.mlp(offsets).permute(0, 3, 1, 2)  # [B, heads, Q, n]
        bias_y = bias_x.new_zeros(bias_x.shape[:3] + (1,))
        return FactoredBias(bias_y=bias_y, bias_x=bias_x)


def indirect_attention_reference(q: Tensor, k: Tensor, v: Tensor, bias: Optional[FactoredBias],
                                 key_padding_mask: Optional[Tensor]) -> Tensor:
    """Straightforward indirect attention with a materialised bias.

    Args:
        q: ``[B, heads, Q, d_head]`` (not yet scaled).
        k: ``[B, heads, N, d_head]``.
        v: ``[B, heads, N, d_head]``.
        bias: factored bias over the ``N = H*W`` positions, or ``None``.
        key_padding_mask: ``[B, N]`` bool, ``True`` where a position must get zero weight.

    Returns:
        ``[B, heads, Q, d_head]``.
    """
    logits = torch.matmul(q, k.transpose(-1, -2)) / math.sqrt(q.shape[-1])
    if bias is not None:
        logits = logits + bias.materialise()
    if key_padding_mask is not None:
        logits = logits.masked_fill(key_padding_mask[:, None, None, :], float("-inf"))
    return torch.matmul(logits.softmax(dim=-1), v)


def indirect_attention_fused(q: Tensor, k: Tensor, v: Tensor, bias: Optional[FactoredBias],
                             key_padding_mask: Optional[Tensor]) -> Tensor:
    """The same as :func:`indirect_attention_reference`, through one fused SDPA call.

    The bias tables are appended to the queries (``[q * s, bias_y, bias_x]``) and one-hot row and
    column codes to the keys (``[k, e_row(j), e_col(j)]``), with the SDPA scale set to 1, so that
    the kernel's dot product is exactly ``q.k / sqrt(d_head) + bias_y[row(j)] + bias_x[col(j)]``.
    """
    scale = 1.0 / math.sqrt(q.shape[-1])
    if bias is not None:
        b, h, n = k.shape[0], k.shape[1], k.shape[2]
        grid_h, grid_w = bias.bias_y.shape[-1], bias.bias_x.shape[-1]
        if grid_h * grid_w != n:
            raise ValueError(f"bias grid {grid_h}x{grid_w} does not match {n} key positions")
        idx = torch.arange(n, device=k.device)
        codes = torch.cat([F.one_hot(idx // grid_w, grid_h), F.one_hot(idx % grid_w, grid_w)], dim=-1).to(k.dtype)
        q = torch.cat([q * scale, bias.bias_y.to(q.dtype), bias.bias_x.to(q.dtype)], dim=-1)
        k = torch.cat([k, codes.expand(b, h, n, grid_h + grid_w)], dim=-1)
        scale = 1.0
    attn_mask = None
    if key_padding_mask is not None:
        attn_mask = ~key_padding_mask[:, None, None, :]
    return F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, scale=scale)


class IndirectAttention(nn.Module):
    """Multi-head attention whose keys and values may come from different sequences.

    ``q`` from the object queries, ``k`` from ``key_source`` (the support features in the
    detector), ``v`` from ``value_source`` (the query-image features). With ``key_source is
    value_source`` and no bias this is ordinary cross-attention.

    Args:
        d_model: model width.
        num_heads: heads; ``d_model`` must be divisible by it.
        impl: ``"reference"`` or ``"fused"`` (see the module docstring).
    """

    def __init__(self, d_model: int, num_heads: int, impl: str = "reference"):
        super().__init__()
        if d_model % num_heads != 0:
            raise ValueError(f"d_model={d_model} is not divisible by num_heads={num_heads}")
        if impl not in ("reference", "fused"):
            raise ValueError(f"impl must be 'reference' or 'fused', got {impl!r}")
        self.num_heads = num_heads
        self.impl = impl
        self.q_proj = nn.Linear(d_model, d_model)
        self.k_proj = nn.Linear(d_model, d_model)
        self.v_proj = nn.Linear(d_model, d_model)
        self.out_proj = nn.Linear(d_model, d_model)

    def _split(self, x: Tensor) -> Tensor:
        b, n, d = x.shape
        return x.view(b, n, self.num_heads, d // self.num_heads).transpose(1, 2)

    def forward(self, object_queries: Tensor, key_source: Tensor, value_source: Tensor,
                bias: Optional[FactoredBias] = None, key_padding_mask: Optional[Tensor] = None) -> Tensor:
        """Attend.

        Args:
            object_queries: ``[B, Q, d]`` (position embedding already added by the caller).
            key_source: ``[B, N, d]`` (support features + their position encoding).
            value_source: ``[B, N, d]`` (query-image features + their position encoding).
            bias: optional ``FactoredBias`` over the ``N`` positions (``[B, heads, Q, H]`` and
                ``[B, heads, Q, W]``, ``H*W = N``).
            key_padding_mask: optional ``[B, N]`` bool, ``True`` = position excluded.

        Returns:
            ``[B, Q, d]``.
        """
        if key_source.shape[:2] != value_source.shape[:2]:
            raise ValueError(
                f"keys {tuple(key_source.shape)} and values {tuple(value_source.shape)} must line up one to one")
        q = self._split(self.q_proj(object_queries))
        k = self._split(self.k_proj(key_source))
        v = self._split(self.v_proj(value_source))
        attend = indirect_attention_fused if self.impl == "fused" else indirect_attention_reference
        out = attend(q, k, v, bias, key_padding_mask)
        b, h, nq, dh = out.shape
        return self.out_proj(out.transpose(1, 2).reshape(b, nq, h * dh))
