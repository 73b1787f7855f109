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


# The fake deepforest tiles of the real-photo tests: (stem, (width, height), [(name, VOC box)]).
# VOC boxes are 1-based inclusive; sides (sqrt(w * h)) differ so the median exemplar is known.
FAKE_TILES = (
    ("OSBS_029", (80, 60), [("Tree", (11, 6, 40, 30)), ("Tree", (1, 1, 10, 10)), ("Tree", (41, 31, 60, 50))]),
    ("SOAP_061", (64, 64), [("Dead", (1, 1, 8, 8)), ("Alive", (10, 10, 21, 21)), ("Dead", (30, 30, 45, 45)),
                            ("Alive", (40, 1, 63, 24))]),
    ("2019_YELL_2_541000_4977000_image_crop", (96, 72), [("Tree", (5, 5, 16, 16)), ("Tree", (20, 20, 33, 33)),
                                                          ("Tree", (40, 40, 49, 49)), ("Tree", (60, 10, 77, 27)),
                                                          ("Tree", (70, 50, 76, 56))]),
    ("2019_YELL_2_528000_4978000_image_crop2", (120, 90), [("Tree", (1, 1, 20, 20)), ("Tree", (50, 40, 61, 51))]),
)


@pytest.fixture
def fake_deepforest(tmp_path):
    """A folder holding ``deepforest/data/`` with the four benchmark tiles as small random PNGs and
    VOC XMLs (:data:`FAKE_TILES`; ``OSBS_029.xml`` names the ``.tif``, as the real one does) and a
    ``deepforest-2.1.0.dist-info``; returns the folder (for ``--packages`` or
    ``ONESHOT_PHOTO_PACKAGES``)."""
    import numpy as np
    from PIL import Image

    root = tmp_path / "photo-packages"
    data = root / "deepforest" / "data"
    data.mkdir(parents=True)
    (root / "deepforest-2.1.0.dist-info").mkdir()
    (root / "deepforest-2.1.0.dist-info" / "METADATA").write_text("Name: deepforest\nVersion: 2.1.0\n")
    rng = np.random.default_rng(0)
    for stem, (w, h), objects in FAKE_TILES:
        Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(data / f"{stem}.png")
        objs = "".join(f"<object><name>{n}</name><difficult>0</difficult><bndbox><xmin>{b[0]}</xmin><ymin>{b[1]}</ymin>"
                       f"<xmax>{b[2]}</xmax><ymax>{b[3]}</ymax></bndbox></object>" for n, b in objects)
        name = f"{stem}.tif" if stem == "OSBS_029" else f"{stem}.png"
        (data / f"{stem}.xml").write_text(f"<annotation><filename>{name}</filename><size><width>{w}</width>"
                                          f"<height>{h}</height><depth>3</depth></size>{objs}</annotation>")
    return str(root)
