"""Several exemplars of one class (k-shot): how the detector combines k supports, path by path.

:meth:`OneShotDETR.forward <detector.models.detector.OneShotDETR.forward>` takes one support batch
(one exemplar per query image) or a list of ``k`` of them, and goes through one path for both
(:class:`~detector.models.cross_inputs.CrossInputs`): every exemplar goes through the backbone on
its own and each support path combines the ``k`` encodings in the way natural to it (with one
exemplar every combination below is the identity):

* ``keys`` (the cross step). Each exemplar is laid out as in the one-shot model (in the ``box``
  layout: laid into every object query's reference box, :mod:`detector.models.box_frame`), giving
  each object query ``k`` key scores ``s_1 .. s_k`` at every value cell. ``shot_keys`` combines them:

  - ``"mean"`` (default): the mean of the ``k`` scores. Scores are linear in the keys and the box
    layout's resize is linear too, so this is the attention to the *mean exemplar*: the mean of the
    ``k`` exemplars' (box-aligned) key embeddings.
  - ``"joint"``: all ``k x N`` (exemplar, cell) keys compete in one softmax, each exemplar with the
    prior weight ``1 / k``. A cell's value is then read with the weight ``sum_s exp(s_s + bias) / k``,
    so the softmax over the ``N`` cells with logits ``logsumexp_s(s_s) - log k + bias`` is exactly
    that attention (the sink, when there is one, keeps its own logit). An object query reads a
    cell as much as its *best-matching* exemplars say.

  Either way ``k`` copies of one exemplar give the one-shot logits (up to float rounding).
* ``correlation`` (values): ``shot_correlation`` ``"mean"`` (default): the mean over exemplars of
  each one's best cosine match with a query cell; ``"max"``: a query cell's best match with any cell
  of any exemplar (the one-shot correlation over the union of the exemplars' cells).
* pooled embeddings (``object_queries``, ``logits``, ``proposals``): the mean of the ``k`` pooled
  embeddings (a prototype).
* ``fusion`` (the double cross-attention baseline): the query features attend to the cells of all
  ``k`` exemplars at once.

The defaults were chosen on the validation split (``docs/RESULTS.md`` section 5): with k = 5 the
mean correlation is 2 points of unseen AP50 above the max (the best match over more cells also
rises on cells of other classes), and the mean keys half a point above the joint softmax.
"""
from __future__ import annotations

import math
from typing import NamedTuple, Sequence

import torch
from torch import Tensor

from ..config import SHOT_CORRELATIONS, SHOT_KEYS
from .box_frame import SupportGrid, box_frame



def as_shots(support) -> list:
    """``support``: one batch (one exemplar per query image) or a list / tuple of ``k`` batches ->
    the list of ``k >= 1`` batches."""
    shots = list(support) if isinstance(support, (list, tuple)) else [support]
    if not shots:
        raise ValueError("no support: give one support batch or a list of k >= 1")
    return shots


def combine_scores(scores: Sequence[Tensor], how: str) -> Tensor:
    """``k`` key-score tensors of one shape -> one (``"joint"`` or ``"mean"``, module docstring)."""
    if len(scores) == 1:
        return scores[0]
    stacked = torch.stack(list(scores))
    if how == "joint":
        return torch.logsumexp(stacked, dim=0) - math.log(len(scores))
    if how == "mean":
        return stacked.mean(dim=0)
    raise ValueError(f"shot_keys must be one of {SHOT_KEYS}, got {how!r}")


def combine_correlation(similarities: Sequence[Tensor], how: str) -> Tensor:
    """``k`` correlation maps ``[B, N, C]`` (best cosine per query cell and channel) -> one
    (``"max"`` or ``"mean"`` over the exemplars; one: itself)."""
    if len(similarities) == 1:
        return similarities[0]
    stacked = torch.stack(list(similarities))
    if how == "max":
        return stacked.amax(dim=0)
    if how == "mean":
        return stacked.mean(dim=0)
    raise ValueError(f"shot_correlation must be one of {SHOT_CORRELATIONS}, got {how!r}")


class ExemplarFrame(NamedTuple):
    """Where the key scores of ``k`` exemplars land on the value grid, and how they combine.

    Duck-types :class:`~detector.models.box_frame.BoxFrame` for
    :func:`~detector.models.indirect_attention.key_scores`: the keys are the ``k`` exemplars' key
    sequences one after the other, so the scores against them arrive as ``[B, heads, Q, k * M]``.

    Attributes:
        frames: one :class:`BoxFrame` per exemplar (``box`` layout) or ``None`` (the exemplar's
            keys already lie on the value grid: ``resize`` / ``pad`` layouts).
        length: ``M``, key positions per exemplar.
        how: ``"joint"`` | ``"mean"`` (module docstring).
    """

    frames: tuple
    length: int
    how: str

    def scores(self, support_scores: Tensor) -> Tensor:
        """``[B, heads, Q, k * M]`` -> combined scores on the value grid ``[B, heads, Q, N]``."""
        chunks = support_scores.split(self.length, dim=-1)
        if len(chunks) != len(self.frames):
            raise ValueError(f"{support_scores.shape[-1]} key positions for {len(self.frames)} exemplars "
                             f"of {self.length}")
        framed = [c if f is None else f.scores(c) for c, f in zip(chunks, self.frames)]
        return combine_scores(framed, self.how)


class ExemplarKeys(NamedTuple):
    """The keys of ``k`` exemplars for the decoder (the counterpart of one exemplar's key tensor or
    :class:`SupportGrid`).

    Attributes:
        shots: per exemplar, keys ``[B, N, d]`` on the value grid, or a :class:`SupportGrid`
            (``box`` layout).
        how: ``"joint"`` | ``"mean"``.
    """

    shots: tuple
    how: str

    @property
    def features(self) -> Tensor:
        """``[B, k * M, d]``: every exemplar's key sequence, one after the other."""
        return torch.cat([s.features if isinstance(s, SupportGrid) else s for s in self.shots], dim=1)

    def frame(self, reference_boxes_cxcywh: Tensor, grid_hw: tuple[int, int], valid_hw: Tensor) -> ExemplarFrame:
        """The :class:`ExemplarFrame` of the object queries' current reference boxes ``[B, Q, 4]``."""
        frames = tuple(box_frame(reference_boxes_cxcywh, grid_hw, valid_hw, s) if isinstance(s, SupportGrid) else None
                       for s in self.shots)
        first = self.shots[0]
        length = first.features.shape[1] if isinstance(first, SupportGrid) else first.shape[1]
        return ExemplarFrame(frames, int(length), self.how)


def mean_embeddings(shots: Sequence[dict], paths: Sequence[str], pool) -> dict:
    """``{path: mean over exemplars of pool(features, mask)}`` for the pooled-embedding ``paths``
    present in the encodings ``shots`` (``pool`` is the one-shot pooling, a masked mean; one
    exemplar: its pooled embeddings as they are)."""
    if len(shots) == 1:
        return {p: pool(*shots[0][p]) for p in paths if p in shots[0]}
    return {p: torch.stack([pool(*s[p]) for s in shots]).mean(dim=0) for p in paths if p in shots[0]}


def check_choices(shot_keys: str, shot_correlation: str) -> None:
    """``ValueError`` naming the argument for an unknown combination."""
    if shot_keys not in SHOT_KEYS:
        raise ValueError(f"shot_keys must be one of {SHOT_KEYS}, got {shot_keys!r}")
    if shot_correlation not in SHOT_CORRELATIONS:
        raise ValueError(f"shot_correlation must be one of {SHOT_CORRELATIONS}, got {shot_correlation!r}")


__all__ = ["SHOT_KEYS", "SHOT_CORRELATIONS", "ExemplarFrame", "ExemplarKeys", "as_shots", "check_choices",
           "combine_correlation", "combine_scores", "mean_embeddings"]
