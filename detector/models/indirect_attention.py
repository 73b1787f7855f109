"""Indirect attention: object queries score against one sequence (keys) and read another (values).

In the detector the keys come from the support (exemplar) features and the values from the query
image features, so position ``j`` of the keys and position ``j`` of the values describe different
content. A learned, per-head relative-position bias over (object query, value position) restores
the alignment (Bahaduri et al. 2025):

    s_ij = q_i . k_j / sqrt(d_head) + bias_ij,   o_i = sum_j softmax_j(s_ij) v_j

The bias is factored per axis (:class:`~detector.models.relative_bias.FactoredBias`, computed by
:mod:`detector.models.relative_bias`). Two refinements of the mechanism live here too, both off by
default: an :class:`AttentionSink` (a learned null key, so that how well the keys match survives the
softmax) and the ``box`` support layout's :class:`~detector.models.box_frame.BoxFrame` (the exemplar
laid into each object query's box, :mod:`detector.models.box_frame`). Two kernels compute the same
thing:

* ``reference``: materialises ``bias`` as ``[B, heads, Q, H*W]`` and adds it to the logits: the
  straightforward form, kept as the ground truth. Its box-bias MLPs keep their hidden activations
  for the backward pass, as autograd does by default (``FeatureMajorMLP``: the rows along the
  columns, the layout the CPU's matmuls are fast in at these widths).
* ``fused``: appends the two tables to the queries and one-hot row/column codes to the keys, so
  that one ``scaled_dot_product_attention`` call computes ``q.k/sqrt(d) + bias`` exactly. The values
  are zero-padded to the same head width so that the kernel is the fused (flash) one on the CPU too;
  neither the bias nor the logits exist at ``[B, heads, Q, H*W]``, forward or backward. Its box-bias
  MLPs recompute their hidden activations in the backward pass (``RecomputedMLP``), and the
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

from ..config import ATTENTION_IMPLS
from .box_frame import BoxFrame
from .relative_bias import FactoredBias


class AttentionSink(NamedTuple):
    """A learned extra key/value pair per head that every object query may attend to instead of
    the keys ("attention sink", a null key).

    The softmax over the keys normalises their overall match away: whether an object query's keys
    match it well or badly, its weights sum to one, so the match changes *where* it reads but never
    *how much*. With a sink the weights on the keys sum to ``1 - a_sink``: a good match takes mass
    from the sink and a poor one leaves it there, so the output says how well the keys matched.

    Attributes:
        key: ``[heads, d_head]``; the sink's logit is ``q . key / sqrt(d_head)`` (no box bias).
        value: ``[heads, d_head]``; what an object query reads from the sink.
    """

    key: Tensor
    value: Tensor


def key_scores(q: Tensor, k: Tensor, frame: Optional[BoxFrame]) -> Tensor:
    """``q.k / sqrt(d_head)`` over the value positions: ``[B, heads, Q, N]``. With a ``frame``,
    ``k`` holds the support's own grid ``[B, heads, Hs*Ws, d_head]`` and the frame lays the scores
    into each object query's box (:mod:`detector.models.box_frame`); a k-shot
    :class:`~detector.models.kshot.ExemplarFrame` (the same ``scores`` method) lays and combines
    the scores of several exemplars' keys, one after the other in ``k``."""
    scores = torch.matmul(q, k.transpose(-1, -2)) / math.sqrt(q.shape[-1])
    return frame.scores(scores) if frame is not None else scores


def indirect_attention_reference(q: Tensor, k: Tensor, v: Tensor, bias: Optional[FactoredBias],
                                 key_padding_mask: Optional[Tensor], sink: Optional[AttentionSink] = None,
                                 frame: Optional[BoxFrame] = None) -> Tensor:
    """Straightforward indirect attention with a materialised bias.

    Args:
        q: ``[B, heads, Q, d_head]`` (not yet scaled).
        k: ``[B, heads, N, d_head]`` (with ``frame``: ``[B, heads, Hs*Ws, d_head]``, the support grid).
        v: ``[B, heads, N, d_head]``.
        bias: factored bias over the ``N = H*W`` positions, or ``None``.
        key_padding_mask: ``[B, N]`` bool, ``True`` where a position must get zero weight.
        sink: optional :class:`AttentionSink`.
        frame: optional :class:`~detector.models.box_frame.BoxFrame` (the ``box`` support layout).

    Returns:
        ``[B, heads, Q, d_head]``.
    """
    weights = indirect_attention_weights(q, k, bias, key_padding_mask, sink, frame)
    n = v.shape[-2]
    out = torch.matmul(weights[..., :n], v)
    if sink is not None:
        out = out + weights[..., n:] * sink.value[None, :, None, :].to(out.dtype)
    return out


def indirect_attention_weights(q: Tensor, k: Tensor, bias: Optional[FactoredBias],
                               key_padding_mask: Optional[Tensor], sink: Optional[AttentionSink] = None,
                               frame: Optional[BoxFrame] = None) -> Tensor:
    """The attention weights of :func:`indirect_attention_reference`: ``softmax(q.k / sqrt(d_head)
    + bias)`` with padded positions at zero, ``[B, heads, Q, N]``, and with a ``sink`` one more
    column, the sink's weight, last (same arguments, no values)."""
    logits = key_scores(q, k, frame)
    if bias is not None:
        logits = logits + bias.materialise()
    if key_padding_mask is not None:
        logits = logits.masked_fill(key_padding_mask[:, None, None, :], float("-inf"))
    if sink is not None:
        sink_logits = (q * sink.key[None, :, None, :].to(q.dtype)).sum(-1, keepdim=True) / math.sqrt(q.shape[-1])
        logits = torch.cat([logits, sink_logits], dim=-1)
    return logits.softmax(dim=-1)


def _row_col_codes(grid_h: int, grid_w: int, width: int, device: torch.device, dtype: torch.dtype) -> Tensor:
    """``[H*W, width]``: the one-hot row code, then the one-hot column code, then zeros."""
    idx = torch.arange(grid_h * grid_w, device=device)
    codes = torch.zeros(grid_h * grid_w, width, device=device, dtype=dtype)
    codes[idx, idx // grid_w] = 1
    codes[idx, grid_h + idx % grid_w] = 1
    return codes


def indirect_attention_fused(q: Tensor, k: Tensor, v: Tensor, bias: Optional[FactoredBias],
                             key_padding_mask: Optional[Tensor], sink: Optional[AttentionSink] = None,
                             frame: Optional[BoxFrame] = None) -> Tensor:
    """The same as :func:`indirect_attention_reference`, through one fused SDPA call.

    The bias tables are appended to the queries (``[q * s, bias_y, bias_x]``) and one-hot row and
    column codes to the keys (``[k, e_row(j), e_col(j)]``), with the SDPA scale set to 1, so that
    the kernel's dot product is exactly ``q.k / sqrt(d_head) + bias_y[row(j)] + bias_x[col(j)]``;
    the gradient of the appended query columns is the bias gradient. The fused CPU (flash) kernel
    needs one head width for queries, keys and values, so all three are zero-padded to
    ``d_head + H + W`` rounded up to a multiple of 8 (the alignment the CUDA kernels want); the
    zero value columns are dropped from the output. A ``sink`` is one more key row (its codes are
    zero: no bias) and value row, never masked.

    With a ``frame`` (the ``box`` layout) the key scores differ per object query and cannot ride in
    a shared key matrix: that case runs :func:`indirect_attention_reference`.
    """
    if frame is not None:
        return indirect_attention_reference(q, k, v, bias, key_padding_mask, sink, frame)
    b, h, n, d_head = k.shape
    if bias is None:
        q, width = q * (1.0 / math.sqrt(d_head)), d_head
    else:
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
    v = F.pad(v, (0, width - d_head))
    attn_mask = None if key_padding_mask is None else ~key_padding_mask
    if sink is not None:
        pad = (0, width - d_head)
        k = torch.cat([k, F.pad(sink.key.to(k.dtype), pad)[None, :, None, :].expand(b, h, 1, width)], dim=2)
        v = torch.cat([v, F.pad(sink.value.to(v.dtype), pad)[None, :, None, :].expand(b, h, 1, width)], dim=2)
        if attn_mask is not None:
            attn_mask = torch.cat([attn_mask, attn_mask.new_ones(b, 1)], dim=1)
    if attn_mask is not None:
        attn_mask = attn_mask[:, None, None, :]
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, scale=1.0)
    return out[..., :d_head]


IMPLS = ATTENTION_IMPLS  # detector.config lists them


def resolve_impl(impl: str, device: torch.device, training: bool) -> str:
    """The kernel ``impl`` stands for on ``device``: ``"auto"`` is ``fused`` on the CPU (0.31x the
    time of the reference at the paper's training point, docs/PERFORMANCE.md) and in CUDA training
    (about a tenth of the memory), and ``reference`` in CUDA inference, where the materialised bias
    was the faster one at every point measured (issue 14: 23.5 vs 28.1 ms per evaluation forward on
    an H200) and its memory is small."""
    if impl != "auto":
        return impl
    return "reference" if device.type == "cuda" and not training else "fused"

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
        impl: one of :data:`IMPLS`, ``"reference"``, ``"fused"`` (see the module docstring) or
            ``"auto"`` (:func:`resolve_impl`: by device and mode, at each call).
    """

    def __init__(self, d_model: int, num_heads: int, impl: str = "reference", sink: bool = False):
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
        d_head = d_model // num_heads
        # The sink starts as a zero key (logit 0, about one cell's worth of attention) and a zero value.
        self.sink_key = nn.Parameter(torch.zeros(num_heads, d_head)) if sink else None
        self.sink_value = nn.Parameter(torch.zeros(num_heads, d_head)) if sink else None

    @property
    def sink(self) -> Optional[AttentionSink]:
        """The :class:`AttentionSink` of this module, or ``None``."""
        return None if self.sink_key is None else AttentionSink(self.sink_key, self.sink_value)

    def _split(self, x: Tensor) -> Tensor:
        b, n, d = x.shape
        return x.view(b, n, self.num_heads, d // self.num_heads).transpose(1, 2)

    def forward(self, object_queries: Tensor, key_source: Tensor, value_source: Tensor,
                bias: Optional[FactoredBias] = None, key_padding_mask: Optional[Tensor] = None,
                frame: Optional[BoxFrame] = None) -> Tensor:
        """Attend.

        Args:
            object_queries: ``[B, Q, d]`` (position embedding already added by the caller).
            key_source: ``[B, N, d]`` (support features + their position encoding); with a
                ``frame``, the support's own grid ``[B, Hs*Ws, d]``.
            value_source: ``[B, N, d]`` (query-image features + their position encoding).
            bias: optional ``FactoredBias`` over the ``N`` positions (``[B, heads, Q, H]`` and
                ``[B, heads, Q, W]``, ``H*W = N``).
            key_padding_mask: optional ``[B, N]`` bool, ``True`` = position excluded.
            frame: optional :class:`~detector.models.box_frame.BoxFrame` laying the support grid
                into each object query's box (the ``box`` support layout).

        Returns:
            ``[B, Q, d]``.
        """
        if frame is None and key_source.shape[:2] != value_source.shape[:2]:
            raise ValueError(
                f"keys {tuple(key_source.shape)} and values {tuple(value_source.shape)} must line up one to one")
        q = self._split(self.q_proj(object_queries))
        k = self._split(self.k_proj(key_source))
        v = self._split(self.v_proj(value_source))
        fused = resolve_impl(self.impl, q.device, self.training) == "fused"
        attend = indirect_attention_fused if fused else indirect_attention_reference
        out = attend(q, k, v, bias, key_padding_mask, self.sink, frame)
        b, h, nq, dh = out.shape
        return self.out_proj(out.transpose(1, 2).reshape(b, nq, h * dh))
