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
  straightforward form, kept as the ground truth. Its box-bias MLPs keep their ``[B, Q, W, hidden]``
  activations for the backward pass, as autograd does by default.
* ``fused``: appends the two tables to the queries and one-hot row/column codes to the keys, so
  that one ``scaled_dot_product_attention`` call computes ``q.k/sqrt(d) + bias`` exactly. The values
  are zero-padded to the same head width so that the kernel is the fused (flash) one on the CPU too;
  neither the bias nor the logits exist at ``[B, heads, Q, H*W]``, forward or backward. Its box-bias
  MLPs recompute their hidden activations in the backward pass (:class:`RecomputedMLP`), and the
  decoder recomputes each layer in backward except its attention kernels
  (:func:`recompute_except_attention`).

``docs/PERFORMANCE.md`` has the measurements behind this choice and ``tools/benchmark.py`` the
benchmark.
"""
from __future__ import annotations

import math
from typing import NamedTuple, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import CheckpointPolicy, create_selective_checkpoint_contexts

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


def _compute_dtype(x: Tensor) -> torch.dtype:
    """The dtype autocast would give a matmul on ``x``'s device (``x.dtype`` when it is off)."""
    device = x.device.type
    if device in ("cuda", "cpu") and torch.is_autocast_enabled(device):
        return torch.get_autocast_dtype(device)
    return x.dtype


class RecomputedMLP(torch.autograd.Function):
    """``Linear(c, hidden) -> ReLU -> Linear(hidden, out)`` over the rows of ``x``, without keeping
    the ``[rows, hidden]`` activations for the backward pass.

    Forward and backward walk over blocks of ``block_rows`` rows; the backward recomputes each
    block's hidden activations (exact: the same operations on the same inputs). Only the inputs and
    the weights are saved, so the memory is that of the input and the output. One block buffer is
    reused by every block, and blocks stay in the CPU caches, which also makes the forward several
    times faster than the unblocked layers.

    ``apply(x [rows, c], w1 [hidden, c], b1 [hidden], w2 [out, hidden], b2 [out], block_rows)`` ->
    ``[rows, out]``. Under autocast the matmuls run in the autocast dtype and the gradients come back
    in the parameters' dtypes.
    """

    @staticmethod
    def forward(ctx, x: Tensor, w1: Tensor, b1: Tensor, w2: Tensor, b2: Tensor, block_rows: int) -> Tensor:
        dtype = _compute_dtype(x)
        ctx.block_rows = block_rows
        ctx.dtypes = (x.dtype, w1.dtype, b1.dtype, w2.dtype, b2.dtype)
        # The first layer's bias rides in the matmul as a ones column: no broadcast copy per block.
        x1 = torch.cat([x.to(dtype), x.new_ones(x.shape[0], 1, dtype=dtype)], dim=1)
        w1b1 = torch.cat([w1, b1[:, None]], dim=1).to(dtype)
        w2, b2 = w2.to(dtype), b2.to(dtype)
        ctx.save_for_backward(x1, w1b1, w2)
        out = x1.new_empty(x.shape[0], w2.shape[0])
        # One block buffer reused by every block: no allocation per block (fresh pages cost page
        # faults, and many short-lived chunks fragment the heap).
        hidden = x1.new_empty(min(block_rows, x.shape[0]), w1b1.shape[0])
        with torch.autocast(x.device.type, enabled=False):
            for start in range(0, x.shape[0], block_rows):
                xb = x1[start:start + block_rows]
                hb = torch.mm(xb, w1b1.t(), out=hidden[: xb.shape[0]]).relu_()
                torch.addmm(b2, hb, w2.t(), out=out[start:start + block_rows])
        return out

    @staticmethod
    def backward(ctx, grad_out: Tensor):
        x1, w1b1, w2 = ctx.saved_tensors
        grad_out = grad_out.to(x1.dtype)
        grad_w1b1 = torch.zeros_like(w1b1.t())  # [c + 1, hidden]
        grad_w2 = torch.zeros_like(w2)
        grad_x = x1.new_empty(x1.shape[0], x1.shape[1] - 1) if ctx.needs_input_grad[0] else None
        n = min(ctx.block_rows, x1.shape[0])
        hidden, grad_hidden = x1.new_empty(n, w1b1.shape[0]), x1.new_empty(n, w1b1.shape[0])
        with torch.autocast(x1.device.type, enabled=False):
            for start in range(0, x1.shape[0], ctx.block_rows):
                rows = slice(start, start + ctx.block_rows)
                xb, gb = x1[rows], grad_out[rows]
                hb = torch.mm(xb, w1b1.t(), out=hidden[: xb.shape[0]]).relu_()
                grad_w2.addmm_(gb.t(), hb)
                gh = torch.mm(gb, w2, out=grad_hidden[: xb.shape[0]])
                gh = torch.ops.aten.threshold_backward.grad_input(gh, hb, 0, grad_input=gh)
                grad_w1b1.addmm_(xb.t(), gh)
                if grad_x is not None:
                    torch.mm(gh, w1b1[:, :-1], out=grad_x[rows])
        grads = (grad_x, grad_w1b1[:-1].t(), grad_w1b1[-1], grad_w2, grad_out.sum(0))
        cast = tuple(None if g is None else g.to(dt) for g, dt in zip(grads, ctx.dtypes))
        return cast + (None,)


def _block_rows(x: Tensor, hidden_dim: int) -> int:
    # About 1M hidden activations per block on the CPU (4 MB in float32: 2 MB per core of a
    # two-thread run, the L2 size here). Measured on one thread, 2K to 8K rows of 512 train at the
    # same speed and 2K is 25% faster than 8K in inference; 32K rows are 2x slower. Far smaller
    # blocks mean many small ops, and on a busy machine every op of a multi-threaded run waits for
    # its slowest thread. On an accelerator, large blocks: few kernel launches.
    budget = 1 << 20 if x.device.type == "cpu" else 1 << 24
    return max(1, budget // hidden_dim)


def cell_centres(grid_hw: tuple[int, int], valid_hw: Tensor, dtype: Optional[torch.dtype] = None) -> tuple[Tensor, Tensor]:
    """Centres of the cells of a padded ``(H, W)`` feature grid in the normalised coordinates of
    each unpadded image: ``cy [B, H]`` with ``cy[b, i] = (i + 0.5) / valid_h[b]``, and ``cx [B, W]``.

    Args:
        grid_hw: ``(H, W)`` of the padded grid.
        valid_hw: ``[B, 2]`` rows and columns covered by each unpadded image (cells past them lie
            beyond 1).
        dtype: of the result (default: float32).
    """
    dtype = dtype or torch.float32
    valid = valid_hw.to(dtype)
    grid_h, grid_w = grid_hw
    cy = (torch.arange(grid_h, device=valid.device, dtype=dtype) + 0.5)[None, :] / valid[:, 0:1]
    cx = (torch.arange(grid_w, device=valid.device, dtype=dtype) + 0.5)[None, :] / valid[:, 1:2]
    return cy, cx


def init_box_prior(mlp: nn.Sequential, strength: float) -> None:
    """Make a per-axis bias MLP ``Linear(2, hidden) -> ReLU -> Linear(hidden, heads)`` output
    ``-s_h * (relu(u0) + relu(-u1))`` for its inputs ``(u0, u1) = (signed offset to the box's low
    edge, to its high edge)``: zero inside the box, falling with the (log-spaced) distance outside.
    Uses hidden units 0 and 1 and leaves the others as they are; ``s_h`` runs geometrically from
    ``strength / 4`` (head 0) to ``strength`` (last head)."""
    first, last = mlp[0], mlp[2]
    if first.out_features < 2 or first.in_features != 2:
        raise ValueError("the box prior needs a Linear(2, hidden >= 2) first layer")
    heads = last.out_features
    strengths = strength * torch.logspace(-2, 0, heads, base=2.0) if heads > 1 else torch.tensor([strength])
    with torch.no_grad():
        first.weight[0] = torch.tensor([1.0, 0.0])  # relu(u0): how far the cell lies before the low edge
        first.weight[1] = torch.tensor([0.0, -1.0])  # relu(-u1): how far it lies past the high edge
        first.bias[:2] = 0.0
        last.weight[:, :2] = -strengths.to(last.weight.dtype)[:, None]


class BoxRelativePositionBias(nn.Module):
    """Decomposed box relative-position bias (Plain-DETR's BoxRPB), one value per head.

    For each object query with reference box ``(x0, y0, x1, y1)`` and each value column centre
    ``px`` the x-MLP sees ``(x0 - px, x1 - px)``; likewise the y-MLP for rows. Each MLP is
    ``Linear(2, hidden) -> ReLU -> Linear(hidden, heads)``.

    Args:
        num_heads: attention heads (one bias per head).
        hidden_dim: hidden width of each per-axis MLP (512 in the official code).
        recompute_hidden: run the MLPs through :class:`RecomputedMLP` (same parameters, same
            values, no stored ``[B, Q, W, hidden]`` activations) instead of the plain layers.
        box_prior: 0: the bias starts at zero everywhere (the official code starts near zero),
            so the object queries begin by reading the whole image and must learn where their box
            is. > 0: the bias starts as ``-s_h * (distance outside the box along the axis)``
            (log-spaced offsets, see :func:`init_box_prior`), strengths ``s_h`` spread over the
            heads from ``box_prior / 4`` to ``box_prior``: every head starts reading around its box,
            the narrow ones mostly inside it. Still a learned MLP; only its starting point changes.
    """

    def __init__(self, num_heads: int, hidden_dim: int = 512, recompute_hidden: bool = False, box_prior: float = 0.0):
        super().__init__()
        if box_prior < 0:
            raise ValueError(f"box_prior must be >= 0, got {box_prior}")
        self.num_heads = num_heads
        self.recompute_hidden = recompute_hidden
        self.mlp_x = nn.Sequential(nn.Linear(2, hidden_dim), nn.ReLU(inplace=True), nn.Linear(hidden_dim, num_heads))
        self.mlp_y = nn.Sequential(nn.Linear(2, hidden_dim), nn.ReLU(inplace=True), nn.Linear(hidden_dim, num_heads))
        # The last layers begin at zero (no bias) and, with ``box_prior`` > 0, two hidden units per
        # axis start as the distance outside the box, so that every head starts reading inside its box.
        for mlp in (self.mlp_x, self.mlp_y):
            nn.init.zeros_(mlp[2].weight)
            nn.init.zeros_(mlp[2].bias)
            if box_prior > 0:
                init_box_prior(mlp, box_prior)

    def _mlp(self, mlp: nn.Sequential, offsets: Tensor) -> Tensor:
        """``offsets [B, Q, L, 2]`` -> ``[B, heads, Q, L]``."""
        if not self.recompute_hidden:
            return mlp(offsets).permute(0, 3, 1, 2)
        rows = offsets.reshape(-1, offsets.shape[-1])
        first, last = mlp[0], mlp[2]
        out = RecomputedMLP.apply(rows, first.weight, first.bias, last.weight, last.bias,
                                  _block_rows(rows, first.out_features))
        return out.view(*offsets.shape[:-1], -1).permute(0, 3, 1, 2)

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
        boxes = box_cxcywh_to_xyxy(reference_boxes_cxcywh)
        cy, cx = cell_centres(grid_hw, valid_hw.to(boxes.device), boxes.dtype)  # [B, H], [B, W]
        dx = boxes[:, :, None, 0::2] - cx[:, None, :, None]  # [B, Q, W, 2]
        dy = boxes[:, :, None, 1::2] - cy[:, None, :, None]  # [B, Q, H, 2]
        bias_x = self._mlp(self.mlp_x, _signed_log(dx))  # [B, heads, Q, W]
        bias_y = self._mlp(self.mlp_y, _signed_log(dy))  # [B, heads, Q, H]
        return FactoredBias(bias_y=bias_y, bias_x=bias_x)


class SequenceRelativeBias(nn.Module):
    """1-D relative-position bias for sequences: the grid ``1 x n`` of :class:`FactoredBias`.

    Each object query ``i`` has a (learned or given) reference position ``r_i`` in ``[0, 1]``; the
    bias to value position ``j`` is ``MLP(n * r_i - (j + 0.5))``: the offset is measured in positions,
    so that neighbouring positions differ by 1 at the MLP's input whatever ``n`` is (the sequence
    counterpart of BoxRPB's rescaled offsets). ``MLP = Linear(1, hidden) -> ReLU -> Linear(hidden,
    heads)``; like :class:`BoxRelativePositionBias` its last layer starts at zero (no bias at init).
    """

    def __init__(self, num_heads: int, hidden_dim: int = 128):
        super().__init__()
        self.num_heads = num_heads
        self.mlp = nn.Sequential(nn.Linear(1, hidden_dim), nn.ReLU(inplace=True), nn.Linear(hidden_dim, num_heads))
        nn.init.zeros_(self.mlp[2].weight)
        nn.init.zeros_(self.mlp[2].bias)

    def forward(self, reference_positions: Tensor, length: int) -> FactoredBias:
        """Bias tables of every object query over a sequence of ``length`` values.

        Args:
            reference_positions: ``[B, Q]`` in ``[0, 1]`` (position ``j`` has centre ``(j + 0.5) / n``).
            length: ``n``, the number of value positions.

        Returns:
            ``FactoredBias`` with ``bias_y [B, heads, Q, 1]`` (zeros) and ``bias_x [B, heads, Q, n]``.
        """
        centres = torch.arange(length, device=reference_positions.device, dtype=reference_positions.dtype) + 0.5
        offsets = reference_positions[:, :, None, None] * length - centres[None, None, :, None]  # [B, Q, n, 1]
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
    return torch.matmul(indirect_attention_weights(q, k, bias, key_padding_mask), v)


def indirect_attention_weights(q: Tensor, k: Tensor, bias: Optional[FactoredBias],
                               key_padding_mask: Optional[Tensor]) -> Tensor:
    """The attention weights of :func:`indirect_attention_reference`: ``softmax(q.k / sqrt(d_head)
    + bias)`` with padded positions at zero, ``[B, heads, Q, N]`` (same arguments, no values)."""
    logits = torch.matmul(q, k.transpose(-1, -2)) / math.sqrt(q.shape[-1])
    if bias is not None:
        logits = logits + bias.materialise()
    if key_padding_mask is not None:
        logits = logits.masked_fill(key_padding_mask[:, None, None, :], float("-inf"))
    return logits.softmax(dim=-1)


def _row_col_codes(grid_h: int, grid_w: int, width: int, device: torch.device, dtype: torch.dtype) -> Tensor:
    """``[H*W, width]``: the one-hot row code, then the one-hot column code, then zeros."""
    idx = torch.arange(grid_h * grid_w, device=device)
    codes = torch.zeros(grid_h * grid_w, width, device=device, dtype=dtype)
    codes[idx, idx // grid_w] = 1
    codes[idx, grid_h + idx % grid_w] = 1
    return codes


def indirect_attention_fused(q: Tensor, k: Tensor, v: Tensor, bias: Optional[FactoredBias],
                             key_padding_mask: Optional[Tensor]) -> Tensor:
    """The same as :func:`indirect_attention_reference`, through one fused SDPA call.

    The bias tables are appended to the queries (``[q * s, bias_y, bias_x]``) and one-hot row and
    column codes to the keys (``[k, e_row(j), e_col(j)]``), with the SDPA scale set to 1, so that
    the kernel's dot product is exactly ``q.k / sqrt(d_head) + bias_y[row(j)] + bias_x[col(j)]``;
    the gradient of the appended query columns is the bias gradient. The fused CPU (flash) kernel
    needs one head width for queries, keys and values, so all three are zero-padded to
    ``d_head + H + W`` rounded up to a multiple of 8 (the alignment the CUDA kernels want); the
    zero value columns are dropped from the output.
    """
    if bias is None:
        attn_mask = None if key_padding_mask is None else ~key_padding_mask[:, None, None, :]
        return F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)
    b, h, n, d_head = k.shape
    grid_h, grid_w = bias.bias_y.shape[-1], bias.bias_x.shape[-1]
    if grid_h * grid_w != n:
        raise ValueError(f"bias grid {grid_h}x{grid_w} does not match {n} key positions")
    width = -(-(d_head + grid_h + grid_w) // 8) * 8
    extra = width - d_head - grid_h - grid_w
    parts = [q * (1.0 / math.sqrt(d_head)), bias.bias_y.to(q.dtype), bias.bias_x.to(q.dtype)]
    if extra:
        parts.append(q.new_zeros(q.shape[:-1] + (extra,)))
    q = torch.cat(parts, dim=-1)
    codes = _row_col_codes(grid_h, grid_w, width - d_head, k.device, k.dtype)
    k = torch.cat([k, codes.expand(b, h, n, width - d_head)], dim=-1)
    v_padded = F.pad(v, (0, width - d_head))
    attn_mask = None if key_padding_mask is None else ~key_padding_mask[:, None, None, :]
    out = F.scaled_dot_product_attention(q, k, v_padded, attn_mask=attn_mask, scale=1.0)
    return out[..., :d_head]


IMPLS = ("reference", "fused")

# The fused attention kernels of every backend: their outputs are worth keeping when a block is
# recomputed (they are small, [B, heads, Q, width], and the kernels are the block's costliest ops).
_ATTENTION_KERNELS = tuple(getattr(torch.ops.aten, name).default for name in (
    "_scaled_dot_product_flash_attention_for_cpu", "_scaled_dot_product_flash_attention",
    "_scaled_dot_product_efficient_attention", "_scaled_dot_product_cudnn_attention")
    if hasattr(torch.ops.aten, name))


def _keep_attention_outputs(ctx, op, *args, **kwargs) -> CheckpointPolicy:
    return CheckpointPolicy.MUST_SAVE if op in _ATTENTION_KERNELS else CheckpointPolicy.PREFER_RECOMPUTE


def recompute_except_attention():
    """``context_fn`` for ``torch.utils.checkpoint.checkpoint(..., use_reentrant=False)``: the block
    is recomputed in backward except its fused attention kernels, whose outputs (and log-sum-exp)
    are kept from the forward pass."""
    return create_selective_checkpoint_contexts(_keep_attention_outputs)


class IndirectAttention(nn.Module):
    """Multi-head attention whose keys and values may come from different sequences.

    ``q`` from the object queries, ``k`` from ``key_source`` (the support features in the
    detector), ``v`` from ``value_source`` (the query-image features). With ``key_source is
    value_source`` and no bias this is ordinary cross-attention.

    Args:
        d_model: model width.
        num_heads: heads; ``d_model`` must be divisible by it.
        impl: one of :data:`IMPLS`, ``"reference"`` or ``"fused"`` (see the module docstring).
    """

    def __init__(self, d_model: int, num_heads: int, impl: str = "reference"):
        super().__init__()
        if d_model % num_heads != 0:
            raise ValueError(f"d_model={d_model} is not divisible by num_heads={num_heads}")
        if impl not in IMPLS:
            raise ValueError(f"impl must be one of {IMPLS}, got {impl!r}")
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
