"""A tiny checkpoint whose scores spread over [0, 1], and a few images, for the server's tests."""
import os

import numpy as np
import pytest
import torch
from PIL import Image

from detector.config import load_config, to_dict
from detector.models import build_model
from detector.utils.checkpoint import checkpoint_state, save_checkpoint

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TINY = os.path.join(ROOT, "configs", "tiny.yaml")


def make_checkpoint(path) -> str:
    """Random weights of configs/tiny.yaml (6 detections at most), the class heads scaled so that
    the scores spread on both sides of the default threshold 0.3."""
    torch.manual_seed(0)
    cfg = load_config(TINY, ["eval.max_detections=6"])
    model = build_model(cfg)[0]
    with torch.no_grad():
        for head in model.class_embed:
            head.bias.zero_()
            head.weight.mul_(3.0)
    return save_checkpoint(str(path), checkpoint_state(model, to_dict(cfg), iteration=0))


@pytest.fixture(scope="session")
def serve_files(tmp_path_factory):
    """``{"dir", "ckpt", "query", "support", "query_jpeg_rotated"}``: a checkpoint and image paths."""
    d = tmp_path_factory.mktemp("serve")
    rng = np.random.default_rng(0)
    query, support = d / "query.png", d / "support.png"
    Image.fromarray(rng.integers(0, 256, (60, 80, 3), dtype=np.uint8)).save(query)
    Image.fromarray(rng.integers(0, 256, (40, 50, 3), dtype=np.uint8)).save(support)
    rotated = d / "rotated.jpg"  # EXIF orientation 6: shown 60 wide and 90 high
    im = Image.fromarray(rng.integers(0, 256, (60, 90, 3), dtype=np.uint8))
    exif = im.getexif()
    exif[0x0112] = 6
    im.save(rotated, exif=exif.tobytes(), quality=95)
    return {"dir": d, "ckpt": make_checkpoint(d / "tiny.pth"), "query": str(query), "support": str(support),
            "query_jpeg_rotated": str(rotated)}


@pytest.fixture(autouse=True)
def _serve_tests_on_one_thread(one_thread):
    """Every test of this folder runs torch on one thread (``one_thread`` of tests/conftest.py)."""
