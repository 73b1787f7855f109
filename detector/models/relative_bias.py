"""Relative-position biases of indirect attention: which value cells each object query reads.

The bias over a value grid of ``H x W`` positions is *factored*: ``bias_ij = bias_y[i, row(j)] +
bias_x[i, col(j)]``, a ``[B, heads, Q, H]`` and a ``[B, heads, Q, W]`` table
(:class:`FactoredBias`). :class:`BoxRelativePositionBias` computes it from each object query's
reference box (Plain-DETR's BoxRPB, the official code's choice), :class:`SequenceRelativeBias` from a
reference position on a 1-D sequence (the grid ``1 x n``, for the paper's sequence tasks).
"""
from __future__ import annotations

from typing import NamedTuple, Optional

import torch
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


class FeatureMajorMLP(torch.autograd.Function):
    """``Linear(c, hidden) -> ReLU -> Linear(hidden, out)`` on inputs laid out feature-major: the
    plain layers' values and gradients, with every matmul in the layout the CPU computes fast.

    The bias MLPs take ``c = 2`` inputs and give ``out = heads`` values per row, over tens of
    thousands of rows. Row-major, as ``nn.Linear`` runs them, the last layer's output and the first
    layer's weight gradient are matrices only 8 and 2 columns wide, and the CPU's matmul is several
    times slower on those than on their transposes (at the demo's scale, 5120 rows, hidden 128 and 8
    heads, one layer's two MLPs took 0.49x the time of ``nn.Linear``'s, forward and backward:
    ``tools/benchmark.py --suite kernels``). Here the rows run along the columns:
    ``apply(x [c, rows], w1 [hidden, c], b1 [hidden], w2 [out, hidden], b2 [out])`` ->
    ``[out, rows]``; the hidden activations ``[hidden, rows]`` are kept for the backward pass, as
    autograd keeps them. Under autocast the matmuls run in the autocast dtype and the gradients come
    back in the inputs' dtypes.
    """

    @staticmethod
    def forward(ctx, x: Tensor, w1: Tensor, b1: Tensor, w2: Tensor, b2: Tensor) -> Tensor:
        dtype = _compute_dtype(x)
        ctx.dtypes = (x.dtype, w1.dtype, b1.dtype, w2.dtype, b2.dtype)
        x, w1, b1, w2, b2 = (t.to(dtype) for t in (x, w1, b1, w2, b2))
        with torch.autocast(x.device.type, enabled=False):
            hidden = torch.addmm(b1[:, None], w1, x).relu_()  # [hidden, rows]
            out = torch.addmm(b2[:, None], w2, hidden)  # [out, rows]
        ctx.save_for_backward(x, w1, w2, hidden)
        return out

    @staticmethod
    def backward(ctx, grad_out: Tensor):
        x, w1, w2, hidden = ctx.saved_tensors
        grad_out = grad_out.to(x.dtype)
        with torch.autocast(x.device.type, enabled=False):
            grad_w2 = grad_out.mm(hidden.t())  # [out, hidden]
            grad_hidden = w2.t().mm(grad_out)  # [hidden, rows]
            grad_hidden = torch.ops.aten.threshold_backward.grad_input(grad_hidden, hidden, 0, grad_input=grad_hidden)
            grad_w1 = x.mm(grad_hidden.t()).t()  # [c, hidden] computed, then viewed as [hidden, c]
            grad_x = w1.t().mm(grad_hidden) if ctx.needs_input_grad[0] else None
            grads = (grad_x, grad_w1, grad_hidden.sum(1), grad_w2, grad_out.sum(1))
        return tuple(None if g is None else g.to(dt) for g, dt in zip(grads, ctx.dtypes))


def _block_rows(x: Tensor, hidden_dim: int) -> int:
    # About 1M hidden activations per block on the CPU (4 MB in float32: 2 MB per core of a
    # two-thread run, the L2 size here). Measured on one thread, 2K to 8K rows of 512 train at the
    # same speed and 2K is 25% faster than 8K in inference; 32K rows are 2x slower. Far smaller
    # blocks mean many small ops, and on a busy machine every op of a multi-threaded run waits for
    # its slowest thread. On an accelerator, large blocks: few kernel launches.
    # On CUDA 64M hidden activations (128 MB in bf16) per block: at the paper's training point
    # (batch 16, 1800 object queries, 32 columns) 7 blocks per axis and layer instead of 28 at 16M,
    # each block a handful of kernels whose launches the GPU would otherwise wait on.
    budget = 1 << 20 if x.device.type == "cpu" else 1 << 26
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

    def _mlp(self, mlp: nn.Sequential, offsets: Tensor, recompute_hidden: bool) -> Tensor:
        """``offsets [B, Q, L, 2]`` -> ``[B, heads, Q, L]``."""
        first, last = mlp[0], mlp[2]
        if not recompute_hidden:
            columns = offsets.permute(3, 0, 1, 2).reshape(offsets.shape[-1], -1)  # [c, B*Q*L]
            out = FeatureMajorMLP.apply(columns, first.weight, first.bias, last.weight, last.bias)
            return out.view(-1, *offsets.shape[:-1]).transpose(0, 1)  # [B, heads, Q, L]
        rows = offsets.reshape(-1, offsets.shape[-1])
        out = RecomputedMLP.apply(rows, first.weight, first.bias, last.weight, last.bias,
                                  _block_rows(rows, first.out_features))
        return out.view(*offsets.shape[:-1], -1).permute(0, 3, 1, 2)

    def forward(self, reference_boxes_cxcywh: Tensor, grid_hw: tuple[int, int], valid_hw: Tensor,
                recompute_hidden: Optional[bool] = None) -> FactoredBias:
        """Bias tables for every object query over a padded value grid (``recompute_hidden``: this
        call's choice, default the module's).

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
        recompute = self.recompute_hidden if recompute_hidden is None else recompute_hidden
        bias_x = self._mlp(self.mlp_x, _signed_log(dx), recompute)  # [B, heads, Q, W]
        bias_y = self._mlp(self.mlp_y, _signed_log(dy), recompute)  # [B, heads, Q, H]
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
