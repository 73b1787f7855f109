"""A DETR-style decoder for the sequence tasks, with the detector's attention module.

Object queries (one per output slot) run ``num_layers`` pre-norm layers of self-attention, a cross
step and an FFN. The cross step is the detector's
:class:`~detector.models.indirect_attention.IndirectAttention`; the three variants differ only in
what it is given:

* ``indirect``: keys from the conditioning sequence X, values from the content sequence Y, and a
  :class:`~detector.models.indirect_attention.SequenceRelativeBias` from each slot's reference
  position (the 1-D counterpart of the detector's box bias);
* ``misaligned``: the same keys and values, no bias;
* ``standard``: ordinary cross-attention, keys = values = the concatenation ``[X; Y]`` (length
  ``2n``, a learned type embedding per sequence), no bias. Keys and values describe the same tokens,
  and the conditioning sequence is visible both to the scores and in the values.

As in the detector, every slot has a reference in ``[0, 1]`` (a position on the shared grid of X and
Y instead of a box); its sine embedding through an MLP is the slot's query position embedding in every
variant. Two output modes:

* per-slot pointer (sorting): slot ``i`` predicts a distribution over the ``n`` positions; its first
  reference is learned, and each layer refines it, ``P^(l+1) = g(o^(l))`` with ``g`` the expected
  position under that layer's prediction, detached (as the detector detaches its refined boxes);
* proposals (retrieval, ``slots_from_content``): slot ``j`` starts from content token ``j`` (two-stage
  DETR's proposals from the query image), its reference is fixed on position ``j``, and its score is
  the logit of "the answer is ``j``" (one distribution over positions, ``[B, 1, n]``).

Token features are a shared embedding plus a sine encoding of the position ``(j + 0.5) / n`` on both
sequences. Every layer's prediction is returned for the auxiliary losses.
"""
from __future__ import annotations

import math
import os
import sys

import torch
from torch import Tensor, nn

_REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
if _REPO not in sys.path:
    sys.path.insert(0, _REPO)

from detector.models.indirect_attention import IndirectAttention  # noqa: E402
from detector.models.relative_bias import SequenceRelativeBias  # noqa: E402

VARIANTS = ("indirect", "misaligned", "standard")


def sine_embedding(positions: Tensor, dim: int, temperature: float = 10000.0) -> Tensor:
    """``positions [...]`` in ``[0, 1]`` -> ``[..., dim]`` sine/cosine features (DETR-style)."""
    freqs = temperature ** (2 * (torch.arange(dim // 2, dtype=positions.dtype, device=positions.device)) / dim)
    angles = positions[..., None] * (2 * math.pi) / freqs
    return torch.cat([angles.sin(), angles.cos()], dim=-1)


class SequenceDecoderLayer(nn.Module):
    """Pre-norm self-attention among slots, the cross step (:class:`IndirectAttention`), FFN."""

    def __init__(self, d_model: int, num_heads: int, dim_feedforward: int):
        super().__init__()
        self.norm1 = nn.LayerNorm(d_model)
        self.self_attn = nn.MultiheadAttention(d_model, num_heads, batch_first=True)
        self.norm2 = nn.LayerNorm(d_model)
        self.cross_attn = IndirectAttention(d_model, num_heads)
        self.norm3 = nn.LayerNorm(d_model)
        self.ffn = nn.Sequential(nn.Linear(d_model, dim_feedforward), nn.ReLU(inplace=True),
                                 nn.Linear(dim_feedforward, d_model))

    def forward(self, x: Tensor, query_pos: Tensor, keys: Tensor, values: Tensor, bias) -> Tensor:
        """``x, query_pos [B, Q, d]``; ``keys, values [B, N, d]``; ``bias`` FactoredBias or None."""
        h = self.norm1(x)
        qk = h + query_pos
        x = x + self.self_attn(qk, qk, h, need_weights=False)[0]
        x = x + self.cross_attn(self.norm2(x) + query_pos, keys, values, bias=bias)
        return x + self.ffn(self.norm3(x))


class SequenceModel(nn.Module):
    """Slots that point into the content sequence.

    Args:
        variant: ``"indirect"``, ``"misaligned"`` or ``"standard"`` (module docstring).
        num_slots: object queries ``Q`` (one per output).
        length: sequence length ``n`` (both sequences).
        vocab: token ids ``0 .. vocab-1`` (padding included).
        d_model, num_heads, num_layers, dim_feedforward: decoder sizes (paper: 128, 4, 6).
        bias_hidden_dim: hidden width of each layer's bias MLP.
        slots_from_content: requires ``num_slots == length``; slot ``j`` starts from the learned slot
            embedding plus the feature of content token ``j`` (two-stage DETR's proposals from the
            query image: "q_i = m_i + a feature of Y").
    """

    def __init__(self, variant: str, num_slots: int, length: int, vocab: int, d_model: int = 128,
                 num_heads: int = 4, num_layers: int = 6, dim_feedforward: int = 256, bias_hidden_dim: int = 128,
                 slots_from_content: bool = False):
        super().__init__()
        if slots_from_content and num_slots != length:
            raise ValueError(f"slots_from_content needs num_slots == length, got {num_slots} and {length}")
        self.slots_from_content = slots_from_content
        if variant not in VARIANTS:
            raise ValueError(f"variant must be one of {VARIANTS}, got {variant!r}")
        self.variant = variant
        self.length = length
        self.d_model = d_model
        self.token_embed = nn.Embedding(vocab, d_model)
        self.type_embed = nn.Embedding(2, d_model) if variant == "standard" else None
        self.slot_embed = nn.Embedding(num_slots, d_model)
        init_ref = (torch.arange(num_slots, dtype=torch.float32) + 0.5) / num_slots
        self.init_reference_logit = nn.Parameter(torch.log(init_ref / (1 - init_ref)))
        self.ref_point_head = nn.Sequential(nn.Linear(d_model, d_model), nn.ReLU(inplace=True),
                                            nn.Linear(d_model, d_model))
        self.layers = nn.ModuleList(SequenceDecoderLayer(d_model, num_heads, dim_feedforward)
                                    for _ in range(num_layers))
        self.biases = nn.ModuleList(SequenceRelativeBias(num_heads, bias_hidden_dim)
                                    for _ in range(num_layers)) if variant == "indirect" else None
        self.norm = nn.LayerNorm(d_model)
        self.head = nn.Linear(d_model, 1 if slots_from_content else length)
        self.register_buffer("centres", (torch.arange(length, dtype=torch.float32) + 0.5) / length, persistent=False)

    def _features(self, tokens: Tensor) -> Tensor:
        return self.token_embed(tokens) + sine_embedding(self.centres, self.d_model)[None]

    def forward(self, conditioning: Tensor, content: Tensor) -> dict:
        """Predict distributions over the ``n`` positions (per slot, or one from the proposals).

        Args:
            conditioning: ``[B, n]`` token ids of X.
            content: ``[B, n]`` token ids of Y.

        Returns:
            ``{"logits": [B, Q, n] (last layer; [B, 1, n] with slots_from_content), "aux_logits": list
            of num_layers such tensors,
            "references": list of num_layers [B, Q] (the reference each layer used)}``.
        """
        if conditioning.shape != content.shape or content.shape[1] != self.length:
            raise ValueError(f"expected two [B, {self.length}] sequences, got {tuple(conditioning.shape)} "
                             f"and {tuple(content.shape)}")
        b = content.shape[0]
        x_feat, y_feat = self._features(conditioning), self._features(content)
        if self.variant == "standard":
            memory = torch.cat([x_feat + self.type_embed.weight[0], y_feat + self.type_embed.weight[1]], dim=1)
            keys = values = memory
        else:
            keys, values = x_feat, y_feat
        x = self.slot_embed.weight[None].expand(b, -1, -1)
        if self.slots_from_content:
            x = x + y_feat
        ref = (self.centres if self.slots_from_content else self.init_reference_logit.sigmoid())[None].expand(b, -1)
        all_logits, refs = [], []
        for i, layer in enumerate(self.layers):
            query_pos = self.ref_point_head(sine_embedding(ref, self.d_model))
            bias = self.biases[i](ref, self.length) if self.biases is not None else None
            x = layer(x, query_pos, keys, values, bias)
            logits = self.head(self.norm(x))
            refs.append(ref)
            if self.slots_from_content:
                # Slot j is the proposal "the answer is position j": its score is the logit of j, and
                # its reference stays on j.
                logits = logits.transpose(1, 2)  # [B, 1, n]
            else:
                ref = (logits.softmax(-1) * self.centres).sum(-1).detach()
            all_logits.append(logits)
        return {"logits": all_logits[-1], "aux_logits": all_logits, "references": refs}
