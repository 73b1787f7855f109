"""The decoder (pre-norm, iterative box refinement, look-forward-twice) and the double
cross-attention baseline's support-fusion stage."""
from __future__ import annotations

import copy
from typing import Optional, Union

import torch
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from ..utils.box_ops import inverse_sigmoid
from .box_frame import SupportGrid, box_frame
from .indirect_attention import IndirectAttention, recompute_except_attention, resolve_impl
from .kshot import ExemplarKeys
from .relative_bias import BoxRelativePositionBias
from .position_encoding import box_sine_embedding


class MLP(nn.Module):
    """``num_layers`` linear layers with ReLU between them."""

    def __init__(self, in_dim: int, hidden_dim: int, out_dim: int, num_layers: int):
        super().__init__()
        dims = [in_dim] + [hidden_dim] * (num_layers - 1) + [out_dim]
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(dims[:-1], dims[1:]))

    def forward(self, x: Tensor) -> Tensor:
        for i, layer in enumerate(self.layers):
            x = layer(x)
            if i < len(self.layers) - 1:
                x = torch.relu(x)
        return x


class FeedForward(nn.Module):
    """Pre-norm FFN block body: ``Linear -> ReLU -> Dropout -> Linear``."""

    def __init__(self, d_model: int, dim_feedforward: int, dropout: float):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(d_model, dim_feedforward), nn.ReLU(inplace=True), nn.Dropout(dropout),
                                 nn.Linear(dim_feedforward, d_model))

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


class DecoderLayer(nn.Module):
    """Self-attention among object queries, the cross step, FFN; each pre-norm with a residual.

    The cross step is an :class:`IndirectAttention`: keys and values are passed separately, so the
    same layer serves indirect (keys from the support), misaligned (same, no bias) and standard
    cross-attention (keys and values from one sequence).
    """

    def __init__(self, d_model: int, num_heads: int, dim_feedforward: int, dropout: float, attention_impl: str,
                 attention_sink: bool = False):
        super().__init__()
        self.norm1 = nn.LayerNorm(d_model)
        self.self_attn = nn.MultiheadAttention(d_model, num_heads, dropout=dropout, batch_first=True)
        self.norm2 = nn.LayerNorm(d_model)
        self.cross_attn = IndirectAttention(d_model, num_heads, impl=attention_impl, sink=attention_sink)
        self.norm3 = nn.LayerNorm(d_model)
        self.ffn = FeedForward(d_model, dim_feedforward, dropout)
        self.dropout = nn.Dropout(dropout)

    def forward(self, object_queries: Tensor, query_pos: Tensor, keys: Tensor, values: Tensor,
                key_padding_mask: Optional[Tensor], bias, self_attn_mask: Optional[Tensor], frame=None) -> Tensor:
        """``object_queries, query_pos [B, Q, d]``; ``keys, values [B, N, d]`` (position encodings
        included; with a ``frame``, ``keys`` is the support grid ``[B, Hs*Ws, d]``);
        ``key_padding_mask [B, N]``; ``bias`` a ``FactoredBias`` or ``None``; ``self_attn_mask
        [Q, Q]`` bool (True = blocked) or ``None``; ``frame`` a ``BoxFrame``, a k-shot
        ``ExemplarFrame`` or ``None``. Returns
        ``[B, Q, d]``."""
        x = object_queries
        h = self.norm1(x)
        qk = h + query_pos
        x = x + self.dropout(self.self_attn(qk, qk, h, attn_mask=self_attn_mask, need_weights=False)[0])
        h = self.norm2(x)
        x = x + self.dropout(self.cross_attn(h + query_pos, keys, values, bias=bias, key_padding_mask=key_padding_mask,
                                             frame=frame))
        x = x + self.dropout(self.ffn(self.norm3(x)))
        return x


class Decoder(nn.Module):
    """``num_layers`` decoder layers with iterative box refinement.

    Each layer derives its object-query position embedding and (when ``use_bias``) its box bias from
    the current reference boxes, then predicts a refinement in inverse-sigmoid space. The reference
    passed to the next layer is detached; with ``look_forward_twice`` the layer's output box is
    refined from the *undetached* previous prediction, so that each layer's box loss also trains the
    layer before it (DINO).

    Args:
        d_model, num_heads, num_layers, dim_feedforward, dropout: usual transformer sizes.
        use_bias: compute a :class:`BoxRelativePositionBias` per layer.
        bias_hidden_dim: hidden width of the bias MLPs.
        bias_box_prior: starting strength of the box prior of the bias (see
            :class:`BoxRelativePositionBias`; 0 = start at zero).
        attention_impl: ``"reference"``, ``"fused"`` or ``"auto"`` (by device and mode:
            :func:`~detector.models.indirect_attention.resolve_impl`). ``"fused"`` also
            recomputes in backward what the reference stores: the bias MLPs' hidden activations and,
            in training, each layer's activations (checkpointing; same values, same gradients).
        look_forward_twice: see above.
        attention_sink: give every cross step an :class:`~detector.models.indirect_attention.AttentionSink`.
    """

    def __init__(self, d_model: int, num_heads: int, num_layers: int, dim_feedforward: int, dropout: float,
                 use_bias: bool, bias_hidden_dim: int = 512, attention_impl: str = "reference",
                 look_forward_twice: bool = True, bias_box_prior: float = 0.0, attention_sink: bool = False):
        super().__init__()
        self.d_model = d_model
        self.num_layers = num_layers
        layer = DecoderLayer(d_model, num_heads, dim_feedforward, dropout, attention_impl, attention_sink)
        self.layers = nn.ModuleList(copy.deepcopy(layer) for _ in range(num_layers))
        # The fast path recomputes in backward instead of storing: the bias MLPs' activations and each
        # layer's (activation checkpointing). The reference keeps everything, as autograd does.
        recompute = attention_impl != "reference"  # "auto": decided per call (resolve_impl)
        self.attention_impl = attention_impl
        self.recompute_layers = True  # with the fused kernel in training (tools can turn it off)
        self.biases = nn.ModuleList(BoxRelativePositionBias(num_heads, bias_hidden_dim, recompute_hidden=recompute,
                                                           box_prior=bias_box_prior)
                                    for _ in range(num_layers)) if use_bias else None
        self.norm = nn.LayerNorm(d_model)
        self.ref_point_head = MLP(d_model, d_model, d_model, 2)
        self.bbox_embed = nn.ModuleList(MLP(d_model, d_model, 4, 3) for _ in range(num_layers))
        for mlp in self.bbox_embed:
            nn.init.zeros_(mlp.layers[-1].weight)
            nn.init.zeros_(mlp.layers[-1].bias)
        self.look_forward_twice = look_forward_twice

    def forward(self, object_queries: Tensor, reference_boxes: Tensor, keys: Union[Tensor, SupportGrid], values: Tensor,
                key_padding_mask: Optional[Tensor], grid_hw: tuple[int, int], valid_hw: Tensor,
                self_attn_mask: Optional[Tensor] = None) -> tuple[list[Tensor], list[Tensor]]:
        """Run all layers.

        Args:
            object_queries: ``[B, Q, d]`` content of the object queries.
            reference_boxes: ``[B, Q, 4]`` initial boxes, cxcywh normalised to the unpadded query image.
            keys, values: ``[B, N, d]`` with ``N = H * W`` of ``grid_hw``; or ``keys`` a
                :class:`~detector.models.box_frame.SupportGrid` (the ``box`` layout): each layer then
                lays the support into every object query's current reference box; or an
                :class:`~detector.models.kshot.ExemplarKeys` (several exemplars).
            key_padding_mask: ``[B, N]`` bool, True = excluded.
            grid_hw: ``(H, W)`` of the value grid.
            valid_hw: ``[B, 2]`` rows/columns of the grid inside each unpadded query image.
            self_attn_mask: ``[Q, Q]`` bool, True = blocked (hybrid matching groups).

        Returns:
            (hidden states, boxes): two lists of ``num_layers`` tensors ``[B, Q, d]`` (normed) and
            ``[B, Q, 4]`` (cxcywh, normalised).
        """
        fused = resolve_impl(self.attention_impl, values.device, self.training) == "fused"
        x = object_queries
        ref_in = reference_boxes.detach()
        prev = reference_boxes
        hidden, boxes = [], []
        for i, layer in enumerate(self.layers):
            query_pos = self.ref_point_head(box_sine_embedding(ref_in, self.d_model // 4))
            bias = self.biases[i](ref_in, grid_hw, valid_hw, recompute_hidden=fused) if self.biases is not None else None
            if isinstance(keys, ExemplarKeys):  # several exemplars (k-shot)
                frame, key_source = keys.frame(ref_in, grid_hw, valid_hw), keys.features
            else:
                frame = box_frame(ref_in, grid_hw, valid_hw, keys) if isinstance(keys, SupportGrid) else None
                key_source = keys.features if isinstance(keys, SupportGrid) else keys
            if fused and self.recompute_layers and torch.is_grad_enabled():
                x = checkpoint(layer, x, query_pos, key_source, values, key_padding_mask, bias, self_attn_mask, frame,
                               use_reentrant=False, context_fn=recompute_except_attention)
            else:
                x = layer(x, query_pos, key_source, values, key_padding_mask, bias, self_attn_mask, frame)
            h = self.norm(x)
            base = prev if self.look_forward_twice else ref_in
            new_boxes = (self.bbox_embed[i](h) + inverse_sigmoid(base)).sigmoid()
            hidden.append(h)
            boxes.append(new_boxes)
            prev = new_boxes
            ref_in = new_boxes.detach()
        return hidden, boxes


class SupportFusionEncoder(nn.Module):
    """Query-image features cross-attend to the support features in ``num_layers`` pre-norm layers
    (cross-attention + FFN, each with a residual).

    Two users: the double cross-attention baseline's first stage (``final_norm``: the decoder reads
    the normed result as keys and values), and the indirect decoder's light fusion step
    (``model.fusion_layers``; no final norm, so the fused features are the query features plus what
    the exemplar added, on the scale of the features they replace).
    """

    def __init__(self, d_model: int, num_heads: int, num_layers: int, dim_feedforward: int, dropout: float,
                 final_norm: bool = True):
        super().__init__()
        if num_layers < 1:
            raise ValueError(f"a fusion encoder needs num_layers >= 1, got {num_layers}")
        self.attn = nn.ModuleList(nn.MultiheadAttention(d_model, num_heads, dropout=dropout, batch_first=True)
                                  for _ in range(num_layers))
        self.norm_attn = nn.ModuleList(nn.LayerNorm(d_model) for _ in range(num_layers))
        self.ffn = nn.ModuleList(FeedForward(d_model, dim_feedforward, dropout) for _ in range(num_layers))
        self.norm_ffn = nn.ModuleList(nn.LayerNorm(d_model) for _ in range(num_layers))
        self.norm = nn.LayerNorm(d_model) if final_norm else nn.Identity()

    def forward(self, query_feats: Tensor, query_pos: Tensor, support_feats: Tensor, support_pos: Tensor,
                support_padding_mask: Tensor) -> Tensor:
        """``query_feats, query_pos [B, N, d]``, ``support_feats, support_pos [B, M, d]``,
        ``support_padding_mask [B, M]`` -> fused query features ``[B, N, d]``."""
        x = query_feats
        keys = support_feats + support_pos
        for attn, n1, ffn, n2 in zip(self.attn, self.norm_attn, self.ffn, self.norm_ffn):
            x = x + attn(n1(x) + query_pos, keys, support_feats, key_padding_mask=support_padding_mask,
                         need_weights=False)[0]
            x = x + ffn(n2(x))
        return self.norm(x)
