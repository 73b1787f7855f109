"""The one-shot DETR: backbone, support layout, query selection, decoder, heads."""
from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..structures import ImageBatch
from ..utils.box_ops import inverse_sigmoid
from .backbone import Backbone, FeatureBatch
from ..config import QUERY_CONTENTS
from .kshot import as_shots, mean_embeddings
from .cross_inputs import CrossInputs
from .exemplar_similarity import ExemplarSimilarity
from .nms import distinct_top_k
from .position_encoding import PositionEmbeddingSine
from .relative_bias import cell_centres
from .support_correlation import SupportCorrelation
from .support_layout import SupportLayout, resize_valid, valid_extent  # noqa: F401 (resize_valid: re-export)
from .transformer import MLP, Decoder, SupportFusionEncoder
# Every way the support can reach the detections (the probe of tools/analysis/support_paths.py feeds
# each its own exemplar through ``forward(..., path_supports=...)``).
SUPPORT_PATHS = ("keys", "fusion", "object_queries", "logits", "correlation", "proposals", "similarity")


def pixels_of(batch: ImageBatch | FeatureBatch) -> Optional[Tensor]:
    """The ``[B, 3, H, W]`` pixels of a batch: an image batch's, or those a feature batch carries (or ``None``)."""
    return batch.pixels if isinstance(batch, FeatureBatch) else batch.tensors


def masked_mean(feats: Tensor, mask: Tensor) -> Tensor:
    """``feats [B, d, H, W]``, ``mask [B, H, W]`` (True = padding) -> mean over valid cells ``[B, d]``."""
    valid = (~mask).to(feats.dtype)[:, None]
    return (feats * valid).sum(dim=(2, 3)) / valid.sum(dim=(2, 3)).clamp(min=1)


def select_distinct(scores: Tensor, boxes: Tensor, k: int, iou_threshold: float) -> Tensor:
    """Indices of ``k`` high-scoring, mutually distinct proposals per image (DDQ-DETR's distinct
    queries): class-agnostic NMS at ``iou_threshold`` over the ``8 k`` best proposals (the
    candidates), then, if fewer than ``k`` survive, the best suppressed candidates, so that every
    image gets exactly ``k``. NMS keeps or drops a box by the boxes scored above it only, so
    whenever ``k`` candidates survive the result is that of an NMS over all proposals; it is
    quadratic in its input (on the CPU, 6 ms per image over the 1024 proposals of a 16 x 16 map
    with 4 anchors, 0.9 ms over 320).

    ``scores [B, N]``, ``boxes [B, N, 4]`` (cxcywh) -> ``[B, k]`` long, survivors in score order first.
    The whole batch at once (:func:`~detector.models.nms.distinct_top_k`): on CUDA the host waits
    for the NMS once per few images, not once per image, and an ONNX export sees no loop.
    """
    if torch.onnx.is_in_onnx_export():  # (a no_grad block would break the trace)
        return distinct_top_k(scores, boxes, k, iou_threshold)
    with torch.no_grad():
        return distinct_top_k(scores, boxes, k, iou_threshold)


class SupportSimilarity(nn.Module):
    """A logit term ``scale * cos(W_o x, W_s support)``: how much an object query (or a proposal)
    looks like the exemplar. Through attention weights alone the support says little about "which
    class"; this gives the classifier a direct path to it."""

    def __init__(self, d_model: int):
        super().__init__()
        self.proj_object = nn.Linear(d_model, d_model)
        self.proj_support = nn.Linear(d_model, d_model)
        self.log_scale = nn.Parameter(torch.tensor(math.log(10.0)))

    def forward(self, x: Tensor, support_embedding: Tensor) -> Tensor:
        """``x [B, Q, d]``, ``support_embedding [B, d]`` -> ``[B, Q, 1]``."""
        a = F.normalize(self.proj_object(x), dim=-1)
        b = F.normalize(self.proj_support(support_embedding), dim=-1)
        return (a * b[:, None]).sum(-1, keepdim=True) * self.log_scale.exp()


class OneShotDETR(nn.Module):
    """A DETR that finds every instance of the support's class in the query image.

    Args:
        backbone: shared by the query image and the support crop.
        decoder: the refinement decoder (its cross step decides indirect / misaligned / standard).
        attention: ``"indirect"`` | ``"misaligned"`` | ``"double_cross"``.
        support_layout: ``"resize"`` (support map resized onto the query's valid grid, every value
            position has a key) | ``"pad"`` (official: both maps zero-padded to a common grid,
            a position is excluded only where both are padding) | ``"box"`` (the exemplar crop laid
            into each object query's reference box, enlarged by ``support_margin``, in every layer:
            :mod:`detector.models.box_frame`).
        support_margin: context around the exemplar box in the crop (``data.support_margin``);
            used by the ``box`` layout.
        query_content: ``"learned"`` (the object queries' content is a learned embedding, as DINO
            and Plain-DETR) | ``"proposal"`` (plus the query-image feature of the proposal's cell,
            "q_i = m_i + a feature of Y" in the paper), so that the first cross step already knows
            what its box looks like and can compare it with the exemplar's keys.
        num_queries: one-to-one object queries.
        num_queries_one2many: extra one-to-many queries used in training only (hybrid matching).
        two_stage: initial boxes from the top-scoring proposals on the query map.
        proposal_sizes: anchor sides (normalised) per query-map cell for the proposals.
        proposal_nms: IoU threshold of a class-agnostic NMS over the proposals before the top
            ``num_queries`` become object queries (DDQ-DETR's distinct queries); 0 = plain top-k.
            Without it, neighbouring cells and anchors propose the same object, several object
            queries start on it, and the decoder must learn to suppress the duplicates. The
            one-to-many queries of hybrid matching take the best proposals left over, without NMS.
        proposal_conditioning: condition the proposals on the support (FiLM by the pooled support
            embedding, plus the similarity term). Off (Plain-DETR, the official code): proposals
            see the query image alone, so deciding which objects match the exemplar is left to the
            decoder's cross step. On, the proposals already rank the matching objects first and the
            cross step barely matters (misaligned attention then scores as well as indirect).
        support_conditioning: add the pooled support embedding to the object queries' content and
            a query-support similarity term to every logit.
        fusion_encoder: the double cross-attention baseline's first stage (needed by that choice),
            or, for ``indirect`` / ``misaligned``, an optional light fusion step: the query features
            attend to the exemplar before the decoder, so the values and the proposals' memory have
            seen it; the keys stay the exemplar's (``model.fusion_layers``).
        correlation: optional :class:`SupportCorrelation`; its per-cell match with the exemplar is
            added to the values (the keys stay the support's), so that what a box reads says how
            much it looks like the exemplar. Proposals do not see it.
        correlation_dropout: in training, the share of images whose side paths (correlation,
            similarity, light fusion) are left out (path dropout): the decoder then cannot rely on
            them alone and must also learn to find the exemplar through the keys. Evaluation always
            uses them.
        similarity: optional :class:`ExemplarSimilarity`: parameter-free cosine maps of the frozen
            body features of the query with the exemplar, and/or the normalised cross-correlation
            of their pixels, read into the values and into the proposals' memory (object queries
            start on look-alikes). The keys stay the support's.
        shot_keys, shot_correlation: with several exemplars per query image (k-shot), how the keys
            and the correlation combine them (:mod:`detector.models.kshot`); unused with one.
    """

    def __init__(self, backbone: Backbone, decoder: Decoder, attention: str = "indirect",
                 support_layout: str = "resize", num_queries: int = 300, num_queries_one2many: int = 0,
                 two_stage: bool = True, proposal_sizes: tuple = (0.1,), proposal_nms: float = 0.0,
                 proposal_conditioning: bool = False, support_conditioning: bool = True,
                 fusion_encoder: Optional[SupportFusionEncoder] = None,
                 correlation: Optional[SupportCorrelation] = None, support_margin: float = 0.1,
                 query_content: str = "learned", correlation_dropout: float = 0.0, shot_keys: str = "mean",
                 shot_correlation: str = "mean", similarity: Optional[ExemplarSimilarity] = None):
        super().__init__()
        if query_content not in QUERY_CONTENTS:
            raise ValueError(f"query_content must be one of {QUERY_CONTENTS}, got {query_content!r}")
        if query_content == "proposal" and not two_stage:
            raise ValueError("query_content='proposal' needs two_stage proposals")
        d = decoder.d_model
        self.backbone = backbone
        self.decoder = decoder
        self.fusion_encoder = fusion_encoder
        self.correlation = correlation
        self.exemplar_similarity = similarity
        if not 0.0 <= correlation_dropout < 1.0:
            raise ValueError(f"correlation_dropout must be in [0, 1), got {correlation_dropout}")
        self.correlation_dropout = float(correlation_dropout)
        self.attention = attention
        self.support_layout = support_layout
        self.support_margin = float(support_margin)
        self.num_queries = num_queries
        self.num_queries_one2many = num_queries_one2many
        self.two_stage = two_stage
        self.proposal_sizes = tuple(float(s) for s in proposal_sizes)
        self.register_buffer("proposal_size_values", torch.tensor(self.proposal_sizes), persistent=False)
        if not 0.0 <= proposal_nms <= 1.0:
            raise ValueError(f"proposal_nms is an IoU threshold in [0, 1] (0 = off), got {proposal_nms}")
        self.proposal_nms = float(proposal_nms)
        self.position_encoding = PositionEmbeddingSine(d // 2)
        layout = None if attention == "double_cross" else SupportLayout(support_layout, self.position_encoding,
                                                                         support_margin)
        self.cross_inputs = CrossInputs(attention, self.position_encoding, layout, fusion_encoder, correlation,
                                        shot_keys, shot_correlation)
        total = num_queries + num_queries_one2many
        self.query_embed = nn.Embedding(total, d)
        prior = -math.log((1 - 0.01) / 0.01)
        self.class_embed = nn.ModuleList(nn.Linear(d, 1) for _ in range(decoder.num_layers))
        for head in self.class_embed:
            nn.init.constant_(head.bias, prior)
        self.similarity = SupportSimilarity(d) if support_conditioning else None
        self.support_to_query = nn.Linear(d, d) if support_conditioning else None
        if two_stage:
            a = len(self.proposal_sizes)
            self.enc_proj = nn.Linear(d, d)
            self.enc_film = None
            if proposal_conditioning:
                self.enc_film = nn.Linear(d, 2 * d)
                nn.init.zeros_(self.enc_film.weight)
                nn.init.zeros_(self.enc_film.bias)
            self.enc_norm = nn.LayerNorm(d)
            self.enc_class = nn.Linear(d, a)
            nn.init.constant_(self.enc_class.bias, prior)
            self.enc_bbox = MLP(d, d, 4 * a, 3)
            nn.init.zeros_(self.enc_bbox.layers[-1].weight)
            nn.init.zeros_(self.enc_bbox.layers[-1].bias)
        else:
            self.reference_embed = nn.Embedding(total, 4)
            nn.init.uniform_(self.reference_embed.weight, -2.0, 2.0)
        self.content_proj = nn.Sequential(nn.Linear(d, d), nn.LayerNorm(d)) if query_content == "proposal" else None

    @property
    def support_paths(self) -> tuple[str, ...]:
        """The ways the support reaches the detections in this model (a subset of
        :data:`SUPPORT_PATHS`): ``keys`` (the cross step's keys), ``fusion`` (the double
        cross-attention encoder, or the indirect decoder's light fusion step), ``object_queries``
        (pooled support embedding added to their content), ``logits`` (the support-similarity
        logit), ``correlation`` (exemplar correlation in the values), ``proposals``
        (support-conditioned proposals), ``similarity`` (parameter-free similarity maps in the
        values and the proposals)."""
        present = {"keys": self.attention != "double_cross", "fusion": self.fusion_encoder is not None,
                   "object_queries": self.support_to_query is not None, "logits": self.similarity is not None,
                   "correlation": self.correlation is not None,
                   "proposals": self.two_stage and self.enc_film is not None,
                   "similarity": self.exemplar_similarity is not None}
        return tuple(p for p in SUPPORT_PATHS if present[p])

    @property
    def uses_pixels(self) -> bool:
        """Whether the model compares pixels (``model.pixel_similarity``): cached features must then
        carry their images' pixels (:class:`~detector.features.FeatureCache` ``keep_pixels``)."""
        return self.exemplar_similarity is not None and self.exemplar_similarity.pixels

    # -- proposals ------------------------------------------------------------------------------
    def _proposals(self, memory: Tensor, mask: Tensor, grid_hw, valid_hw: Tensor, support_embedding: Optional[Tensor]):
        """Per-cell, per-anchor proposals (conditioned on the support with ``proposal_conditioning``).

        ``memory [B, N, d]``, ``mask [B, N]`` -> logits ``[B, N*A, 1]``, boxes ``[B, N*A, 4]``
        (cxcywh, normalised), validity ``[B, N*A]``.
        """
        b, n, d = memory.shape
        a = len(self.proposal_sizes)
        enc = self.enc_proj(memory)
        if self.enc_film is not None:
            gamma, beta = self.enc_film(support_embedding).chunk(2, dim=-1)
            enc = enc * (1 + gamma[:, None]) + beta[:, None]
        enc = self.enc_norm(enc)
        logits = self.enc_class(enc)  # [B, N, A]
        if self.enc_film is not None and self.similarity is not None:
            logits = logits + self.similarity(enc, support_embedding)
        gh, gw = grid_hw
        cy, cx = cell_centres(grid_hw, valid_hw.to(memory.device), memory.dtype)  # [B, H], [B, W]
        centres = torch.stack([cx[:, None, :].expand(b, gh, gw), cy[:, :, None].expand(b, gh, gw)], dim=-1).reshape(b, n, 1, 2)
        sizes = self.proposal_size_values.to(memory.dtype)
        anchors = torch.cat([centres.expand(b, n, a, 2), sizes[None, None, :, None].expand(b, n, a, 2)], dim=-1)
        deltas = self.enc_bbox(enc).view(b, n, a, 4)
        boxes = (deltas + inverse_sigmoid(anchors)).sigmoid()
        valid_cells = (~mask)[:, :, None].expand(b, n, a).reshape(b, n * a)
        logits = logits.reshape(b, n * a, 1).masked_fill(~valid_cells[..., None], -1e4)
        return logits, boxes.reshape(b, n * a, 4), valid_cells

    def _logits(self, layer: int, hidden: Tensor, support_embedding: Optional[Tensor]) -> Tensor:
        logits = self.class_embed[layer](hidden)
        if self.similarity is not None:
            logits = logits + self.similarity(hidden, support_embedding)
        return logits

    def _encode_supports(self, support, path_supports: Optional[dict]) -> dict:
        """``{path: (features [B, d, h, w], mask [B, h, w])}`` for every path of this model (for
        ``similarity`` ``(body features [B, C, h, w] before the projection, mask, pixels or None,
        image_sizes)``); each distinct support batch goes through the backbone once."""
        path_supports = dict(path_supports or {})
        unknown = set(path_supports) - set(self.support_paths)
        if unknown:
            raise ValueError(f"path_supports names {sorted(unknown)}, which this model does not have; "
                             f"its support paths: {list(self.support_paths)}")
        encoded: dict = {}
        out = {}
        for path in self.support_paths:
            source = path_supports.get(path, support)
            if len(source) != len(support):
                raise ValueError(f"path_supports['{path}'] has {len(source)} supports for {len(support)} query images")
            if id(source) not in encoded:
                encoded[id(source)] = self.backbone.encode(source)
            body, feats, mask = encoded[id(source)]
            out[path] = (body, mask, pixels_of(source), source.image_sizes) if path == "similarity" else (feats, mask)
        return out

    def _side_path_keep(self, batch: int, device) -> Optional[Tensor]:
        """In training with ``correlation_dropout``: ``[B]`` bool, the images whose side paths
        (correlation, similarity, light fusion) are kept (one draw per forward, shared by all); else
        ``None``."""
        light_fusion = self.fusion_encoder is not None and self.attention != "double_cross"
        if self.training and self.correlation_dropout > 0 and (self.correlation is not None or light_fusion
                                                               or self.exemplar_similarity is not None):
            return torch.rand(batch, device=device) >= self.correlation_dropout
        return None

    def _add_similarity(self, keys, values: Tensor, memory: Tensor, maps: Tensor, grid_hw, value_hw,
                        keep: Optional[Tensor]):
        """The similarity ``maps [B, H*W, M]`` (on the query grid ``grid_hw``) read into the values and
        the proposals' memory (on ``value_hw``: the ``pad`` layout's grid is larger, its extra cells
        get zero maps), except for the images that ``keep [B]`` leaves out -> ``(keys, values,
        memory)``."""
        b, _, m = maps.shape
        (h, w), (gh, gw) = grid_hw, value_hw
        if (gh, gw) != (h, w):
            maps = F.pad(maps.view(b, h, w, m), (0, 0, 0, gw - w, 0, gh - h)).flatten(1, 2)
        to_values, to_proposals = self.exemplar_similarity(maps.to(values.dtype))
        if keep is not None:
            k = keep[:, None, None].to(to_values.dtype)
            to_values, to_proposals = to_values * k, to_proposals * k
        values = values + to_values
        return (values if self.attention == "double_cross" else keys), values, memory + to_proposals

    def _select(self, memory: Tensor, q_mask: Tensor, grid_hw, valid_hw: Tensor, num: int,
                proposal_embedding: Optional[Tensor]) -> tuple[Tensor, Tensor, Optional[dict]]:
        """Two-stage query selection: the ``num`` starting boxes ``[B, num, 4]`` (detached), the
        indices of their proposals ``[B, num]`` and the proposals' outputs for the loss; without
        two-stage, the learned reference boxes, ``None``, ``None``."""
        b = memory.shape[0]
        if not self.two_stage:
            return self.reference_embed.weight[:num].sigmoid()[None].expand(b, num, 4), None, None
        enc_logits, enc_boxes, _ = self._proposals(memory, q_mask.flatten(1), grid_hw, valid_hw, proposal_embedding)
        if num > enc_logits.shape[1]:
            raise ValueError(f"{num} object queries but only {enc_logits.shape[1]} proposals on a "
                             f"{grid_hw[0]}x{grid_hw[1]} feature map: use larger images, more proposal_sizes "
                             f"or fewer queries")
        scores = enc_logits[..., 0].detach()
        if self.proposal_nms > 0:
            top = select_distinct(scores, enc_boxes.detach(), self.num_queries, self.proposal_nms)
        else:
            top = scores.topk(self.num_queries, dim=1).indices
        if num > self.num_queries:
            # The one-to-many queries (training) take the best proposals the one-to-one queries
            # did not take, duplicates included: several queries per object is their point.
            rest = scores.scatter(1, top, float("-inf"))
            top = torch.cat([top, rest.topk(num - self.num_queries, dim=1).indices], dim=1)
        reference = torch.gather(enc_boxes, 1, top[..., None].expand(b, num, 4)).detach()
        return reference, top, {"pred_logits": enc_logits, "pred_boxes": enc_boxes}

    def forward(self, query: ImageBatch | FeatureBatch, support: ImageBatch | FeatureBatch | list,
                path_supports: Optional[dict] = None) -> dict:
        """Detect the support's class in the query images.

        Args:
            query: ``[B, 3, H, W]`` images searched (or their precomputed backbone body features,
                a :class:`FeatureBatch`, when the backbone is frozen).
            support: ``[B, 3, S, S]`` exemplar crops, one per query image (or their body features);
                or a list of ``k`` such batches, ``k`` exemplars of one class per query image
                (k-shot, combined as :mod:`detector.models.kshot` says). A list of one is the
                one-shot path, bit for bit.
            path_supports: optional ``{path: support batch}`` feeding some of :attr:`support_paths`
                other exemplars than ``support`` (same shapes; one exemplar only): the probe of
                ``tools/analysis/support_paths.py``. Paths not named see ``support``.

        Returns:
            ``pred_logits [B, Q, 1]``, ``pred_boxes [B, Q, 4]`` (cxcywh normalised to the unpadded
            query image), ``aux_outputs`` (earlier layers), and when used ``enc_outputs``
            (proposals) and, in training with hybrid matching, ``one2many`` (same keys).
        """
        shots = as_shots(support)
        for s in shots:
            if len(query) != len(s):
                raise ValueError(f"{len(query)} query images but {len(s)} supports: one support per query image")
        q_body, q_feat, q_mask = self.backbone.encode(query)
        query_hw, query_mask = tuple(q_feat.shape[-2:]), q_mask
        keep = self._side_path_keep(q_feat.shape[0], q_feat.device)
        if path_supports and len(shots) > 1:
            raise ValueError("path_supports needs one exemplar per query image, not a list of them")
        encoded = [self._encode_supports(s, path_supports) for s in shots]
        embedding = mean_embeddings(encoded, ("object_queries", "logits", "proposals"), masked_mean)
        keys, values, key_padding_mask, memory, q_feat, q_mask = self.cross_inputs(q_feat, q_mask, encoded, keep)
        grid_hw, valid_hw = tuple(q_feat.shape[-2:]), valid_extent(q_mask)
        if self.exemplar_similarity is not None:  # several exemplars: the mean of their maps
            q = (q_body, query_mask, pixels_of(query), query.image_sizes)
            maps = torch.stack([self.exemplar_similarity.all_maps(q, e["similarity"], self.backbone.stride)
                                for e in encoded]).mean(0)
            keys, values, memory = self._add_similarity(keys, values, memory, maps, query_hw, grid_hw, keep)

        # The batch size as a tensor dimension, not len(): an ONNX trace keeps it dynamic.
        b, num = q_feat.shape[0], self.num_queries + (self.num_queries_one2many if self.training else 0)
        reference, top, enc_outputs = self._select(memory, q_mask, grid_hw, valid_hw, num, embedding.get("proposals"))
        content = self.query_embed.weight[:num][None].expand(b, num, -1)
        if self.support_to_query is not None:
            content = content + self.support_to_query(embedding["object_queries"])[:, None]
        if self.content_proj is not None:  # the query-image feature of each proposal's cell
            cells = torch.div(top, len(self.proposal_sizes), rounding_mode="floor")[..., None]
            content = content + self.content_proj(torch.gather(memory, 1, cells.expand(b, num, memory.shape[-1])))

        self_attn_mask = None
        if num > self.num_queries:
            self_attn_mask = torch.zeros(num, num, dtype=torch.bool, device=content.device)
            self_attn_mask[: self.num_queries, self.num_queries:] = True
            self_attn_mask[self.num_queries:, : self.num_queries] = True
        hidden, boxes = self.decoder(content, reference, keys, values, key_padding_mask, grid_hw, valid_hw, self_attn_mask)
        logits = [self._logits(i, h, embedding.get("logits")) for i, h in enumerate(hidden)]

        def pack(sl: slice) -> dict:
            layers = [{"pred_logits": lg[:, sl], "pred_boxes": bx[:, sl]} for lg, bx in zip(logits, boxes)]
            return {**layers[-1], "aux_outputs": layers[:-1]}

        out: dict = {} if enc_outputs is None else {"enc_outputs": enc_outputs}
        out.update(pack(slice(0, self.num_queries)))
        if num > self.num_queries:
            out["one2many"] = pack(slice(self.num_queries, num))
        return out
