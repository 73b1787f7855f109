"""The composition root: config -> (model, criterion, postprocessor)."""
from __future__ import annotations

from typing import Optional

from ..config import Config, LossConfig, ModelConfig
from .backbone import Backbone
from .criterion import SetCriterion
from .detector import OneShotDETR
from .exemplar_similarity import ExemplarSimilarity
from .matcher import HungarianMatcher
from .postprocess import PostProcess
from .support_correlation import SupportCorrelation
from .transformer import Decoder, SupportFusionEncoder


def build_backbone(cfg: ModelConfig, load_weights: bool = True) -> Backbone:
    """Backbone from ``cfg.backbone``, projected to ``cfg.d_model``; ``load_weights=False`` builds it
    with its pretrained input normalisation but without reading the weights (a checkpoint's follow)."""
    b = cfg.backbone
    return Backbone(b.name, cfg.d_model, output_stride=b.output_stride, pretrained=b.pretrained,
                    sha256=b.sha256, freeze=b.freeze, load_weights=load_weights)


def build_decoder(cfg: ModelConfig) -> Decoder:
    """Decoder; the box bias exists only for ``attention`` choices that use it."""
    return Decoder(cfg.d_model, cfg.num_heads, cfg.num_decoder_layers, cfg.dim_feedforward, cfg.dropout,
                   use_bias=cfg.attention in ("indirect", "double_cross"), bias_hidden_dim=cfg.bias_hidden_dim,
                   attention_impl=cfg.attention_impl, look_forward_twice=cfg.look_forward_twice,
                   bias_box_prior=cfg.bias_box_prior, attention_sink=cfg.attention_sink)


def build_criterion(cfg: LossConfig) -> SetCriterion:
    """Matcher and losses from ``cfg``."""
    matcher = HungarianMatcher(cfg.match_class_weight, cfg.match_bbox_weight, cfg.match_giou_weight,
                               cfg.focal_alpha, cfg.focal_gamma)
    return SetCriterion(matcher, cfg.class_weight, cfg.bbox_weight, cfg.giou_weight, cfg.focal_alpha,
                        cfg.focal_gamma, aux_loss=cfg.aux_loss, one2many_repeat=cfg.one2many_repeat,
                        one2many_weight=cfg.one2many_weight)


def build_similarity(cfg: Config) -> Optional[ExemplarSimilarity]:
    """The parameter-free similarity maps the model reads (``model.exemplar_similarity``: frozen
    features, ``model.pixel_similarity``: pixels), or ``None`` when it reads neither."""
    m = cfg.model
    if not (m.exemplar_similarity or m.pixel_similarity):
        return None
    return ExemplarSimilarity(m.d_model, features=m.exemplar_similarity, pixels=m.pixel_similarity,
                              margin=cfg.data.support_margin)


def build_model(cfg: Config, load_weights: bool = True) -> tuple[OneShotDETR, SetCriterion, PostProcess]:
    """The one composition root: ``(model, criterion, postprocessor)`` from a full config;
    ``load_weights=False`` leaves the backbone's pretrained weights unread (a checkpoint's follow)."""
    m = cfg.model
    fusion = None
    if m.attention == "double_cross":
        fusion = SupportFusionEncoder(m.d_model, m.num_heads, m.num_decoder_layers, m.dim_feedforward, m.dropout)
    elif m.fusion_layers:
        fusion = SupportFusionEncoder(m.d_model, m.num_heads, m.fusion_layers, m.dim_feedforward, m.dropout,
                                      final_norm=False)
    model = OneShotDETR(build_backbone(m, load_weights), build_decoder(m), attention=m.attention,
                        support_layout=m.support_layout,
                        num_queries=m.num_queries, num_queries_one2many=m.num_queries_one2many,
                        two_stage=m.two_stage, proposal_sizes=m.proposal_sizes,
                        proposal_nms=m.proposal_nms,
                        proposal_conditioning=m.proposal_conditioning,
                        support_conditioning=m.support_conditioning, fusion_encoder=fusion,
                        correlation=SupportCorrelation(m.d_model, m.correlation_channels) if m.correlation_channels else None,
                        support_margin=cfg.data.support_margin, query_content=m.query_content,
                        correlation_dropout=m.correlation_dropout, shot_keys=m.shot_keys,
                        shot_correlation=m.shot_correlation,
                        similarity=build_similarity(cfg))
    return model, build_criterion(cfg.loss), PostProcess(cfg.eval.max_detections, cfg.eval.nms_iou)
