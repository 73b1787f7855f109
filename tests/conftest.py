"""Shared fixtures: a tiny model configuration that builds in a fraction of a second on the CPU."""
import os
import sys

import pytest
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from detector.config import load_config  # noqa: E402

TINY_MODEL = [
    "model.backbone.pretrained=none",
    "model.d_model=32",
    "model.num_heads=4",
    "model.num_decoder_layers=2",
    "model.dim_feedforward=64",
    "model.num_queries=6",
    "model.bias_hidden_dim=16",
]


@pytest.fixture(autouse=True)
def _deterministic():
    torch.manual_seed(0)
    yield


@pytest.fixture
def tiny_cfg():
    """A builder of tiny configs: ``tiny_cfg("model.attention=misaligned", ...)``."""

    def make(*overrides):
        return load_config(None, TINY_MODEL + list(overrides))

    return make
