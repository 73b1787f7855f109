"""What the decoder's cross step reads, from one or ``k`` exemplars: one path for both.

The cross step (``model.attention``; the allowed names are :data:`detector.config.ATTENTIONS`)
takes its keys from the exemplar and its values from the query image:

* ``indirect`` and ``misaligned``: keys from the exemplar, laid out by a
  :class:`~detector.models.support_layout.SupportLayout`, values from the query image (the two
  differ in the decoder: ``misaligned`` has no box bias);
* ``double_cross`` (the paper's strong baseline): the query features first cross-attend to the
  exemplar in a fusion encoder, and the decoder reads the result as keys and values.

``indirect`` and ``misaligned`` may also get a light fusion step (``model.fusion_layers``): the
query features cross-attend to the exemplar before the layout, so that the values (and the
proposals' memory) are query features that have already seen the exemplar; the keys stay the
exemplar's own. In training, the images that the side-path dropout leaves out read the query
features unfused.

An optional :class:`~detector.models.support_correlation.SupportCorrelation` adds the per-cell
match with the exemplar to the values. With ``k > 1`` exemplars every path combines them as
:mod:`detector.models.kshot` says; with one exemplar the combination is the identity, so one
exemplar and a list of one give the same tensors, bit for bit.
"""
from __future__ import annotations

from functools import reduce
from typing import Optional, Sequence

import torch
from torch import Tensor

from ..config import ATTENTIONS
from .kshot import ExemplarKeys, check_choices, combine_correlation
from .position_encoding import PositionEmbeddingSine
from .support_correlation import SupportCorrelation
from .support_layout import SupportLayout
from .transformer import SupportFusionEncoder


def _cat(parts: Sequence[Tensor]) -> Tensor:
    """The ``k`` exemplars' token sequences one after the other (one: the tensor itself)."""
    return parts[0] if len(parts) == 1 else torch.cat(list(parts), dim=1)


def tokens(x: Tensor) -> Tensor:
    """``[B, d, h, w]`` -> ``[B, h*w, d]``; ``[B, h, w]`` masks -> ``[B, h*w]``."""
    return x.flatten(1) if x.dim() == 3 else x.flatten(2).transpose(1, 2)


class CrossInputs:
    """Keys, values and padding mask of the cross step, and the memory the proposals are computed
    from. Parameter-free: the modules it uses are the model's (registered there).

    Args:
        attention: ``"indirect"`` | ``"misaligned"`` | ``"double_cross"``.
        position_encoding: the model's sine encoding.
        layout: the support layout (``indirect`` / ``misaligned``; ``None`` for ``double_cross``).
        fusion_encoder: the double cross-attention baseline's first stage (needed by that choice), or
            the light fusion step of ``indirect`` / ``misaligned`` (optional).
        correlation: optional exemplar correlation added to the values.
        shot_keys, shot_correlation: how ``k > 1`` exemplars combine (:mod:`detector.models.kshot`).
    """

    def __init__(self, attention: str, position_encoding: PositionEmbeddingSine, layout: Optional[SupportLayout],
                 fusion_encoder: Optional[SupportFusionEncoder] = None,
                 correlation: Optional[SupportCorrelation] = None, shot_keys: str = "mean",
                 shot_correlation: str = "mean"):
        if attention not in ATTENTIONS:
            raise ValueError(f"attention must be one of {ATTENTIONS}, got {attention!r}")
        if attention == "double_cross" and fusion_encoder is None:
            raise ValueError("attention='double_cross' needs a fusion_encoder")
        if (layout is None) != (attention == "double_cross"):
            raise ValueError("a support layout is needed by, and only by, the indirect and misaligned cross steps")
        check_choices(shot_keys, shot_correlation)
        self.attention, self.position_encoding, self.layout = attention, position_encoding, layout
        self.fusion_encoder, self.correlation = fusion_encoder, correlation
        self.shot_keys, self.shot_correlation = shot_keys, shot_correlation

    def __call__(self, q_feat: Tensor, q_mask: Tensor, shots: Sequence[dict], keep: Optional[Tensor] = None):
        """``q_feat [B, d, H, W]``, ``q_mask [B, H, W]``; ``shots``: ``k >= 1`` exemplar encodings
        ``{path: (features [B, d, h, w], mask [B, h, w])}`` (paths ``keys`` or ``fusion``, and
        ``correlation``); ``keep [B]``: the images whose side paths (correlation, light fusion) are
        kept (path dropout).

        Returns ``(keys, values [B, N, d], key_padding_mask [B, N], memory [B, N, d], q_feat,
        q_mask)``, the last two on the value grid. ``keys`` is ``[B, N, d]`` or a
        :class:`~detector.models.box_frame.SupportGrid` for one exemplar, an
        :class:`~detector.models.kshot.ExemplarKeys` for several (``double_cross``: the values).
        """
        if self.attention == "double_cross":
            keys, values, key_padding_mask, memory = self._fused(q_feat, q_mask, shots)
        else:
            if self.fusion_encoder is not None:
                q_feat = self._light_fusion(q_feat, q_mask, shots, keep)
            layouts = [self.layout(q_feat, q_mask, *s["keys"]) for s in shots]
            if len({tuple(lay[1].shape) for lay in layouts}) != 1:
                raise ValueError("the exemplars give value grids of different sizes: pad every support batch alike")
            _, values, _, q_feat, q_mask = layouts[0]
            keys = layouts[0][0] if len(layouts) == 1 else ExemplarKeys(tuple(lay[0] for lay in layouts),
                                                                        self.shot_keys)
            # A position is excluded only where it is for every exemplar (``pad`` layout: query and
            # support padding; the others: query padding, the same for all).
            key_padding_mask = reduce(torch.logical_and, [lay[2] for lay in layouts])
            memory = tokens(q_feat)
        if self.correlation is not None:
            sims = [self.correlation.similarity(tokens(q_feat), tokens(s["correlation"][0]), tokens(s["correlation"][1]))
                    for s in shots]
            match = self.correlation.out(combine_correlation(sims, self.shot_correlation))
            if keep is not None:
                match = match * keep[:, None, None].to(match.dtype)
            values = values + match
            if self.attention == "double_cross":  # the baseline reads its keys from the values
                keys = values
        return keys, values, key_padding_mask, memory, q_feat, q_mask

    def _fuse(self, q_feat: Tensor, q_mask: Tensor, shots: Sequence[dict]) -> tuple[Tensor, Tensor]:
        """The query features after attending to the cells of every exemplar at once, and their
        position encoding: ``([B, H*W, d], [B, H*W, d])``."""
        pos = tokens(self.position_encoding(q_mask))
        s_feat = _cat([tokens(s["fusion"][0]) for s in shots])
        s_pos = _cat([tokens(self.position_encoding(s["fusion"][1])) for s in shots])
        s_mask = _cat([tokens(s["fusion"][1]) for s in shots])
        return self.fusion_encoder(tokens(q_feat), pos, s_feat, s_pos, s_mask), pos

    def _fused(self, q_feat: Tensor, q_mask: Tensor, shots: Sequence[dict]):
        """``double_cross``: the fused features are keys, values and memory."""
        memory, pos = self._fuse(q_feat, q_mask, shots)
        keys = values = memory + pos
        return keys, values, q_mask.flatten(1), memory

    def _light_fusion(self, q_feat: Tensor, q_mask: Tensor, shots: Sequence[dict], keep: Optional[Tensor]) -> Tensor:
        """``indirect`` / ``misaligned`` with a fusion step: ``q_feat [B, d, H, W]`` fused with the
        exemplar, except for the images ``keep [B]`` leaves out -> ``[B, d, H, W]``."""
        b, d, h, w = q_feat.shape
        fused = self._fuse(q_feat, q_mask, shots)[0].transpose(1, 2).reshape(b, d, h, w)
        if keep is not None:
            fused = torch.where(keep[:, None, None, None], fused, q_feat)
        return fused
