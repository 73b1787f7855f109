"""Shared fixtures: a tiny model configuration that builds in a fraction of a second on the CPU."""
import os
import struct
import sys
import zlib

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


@pytest.fixture
def fake_png():
    """``make(path, width, height)``: a PNG whose header claims ``width`` x ``height`` (its pixel
    data is two rows), to test refusals that must come before decoding without allocating it."""

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    def make(path, width, height):
        header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
        rows = zlib.compress(b"\0" * (1 + 3 * width) * 2)
        path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", rows) + chunk(b"IEND", b""))
        return str(path)

    return make


@pytest.fixture
def one_thread():
    """Torch on one thread for the test (tiny shapes run faster so, and a busy machine's other
    processes disturb them less); the previous count is restored after it. Use with
    ``pytestmark = pytest.mark.usefixtures("one_thread")``."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
