"""Model, criterion and postprocessor of the one-shot DETR with indirect attention."""
from .build import build_criterion, build_model
from .detector import OneShotDETR
from .indirect_attention import AttentionSink, IndirectAttention
from .relative_bias import BoxRelativePositionBias, FactoredBias, SequenceRelativeBias

__all__ = ["build_model", "build_criterion", "OneShotDETR", "IndirectAttention", "BoxRelativePositionBias",
           "FactoredBias", "SequenceRelativeBias"]
