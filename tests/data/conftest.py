"""Fixtures of the data tests: the tiny synthetic benchmark (generated once per session) and a
writer of small COCO-format datasets with real image files."""
import json
import os

import numpy as np
import pytest
from PIL import Image

from detector.data import generate_synthetic


@pytest.fixture(scope="session")
def tiny_root(tmp_path_factory):
    """The ``tiny`` synthetic benchmark (seed 0) in a session temp folder."""
    root = str(tmp_path_factory.mktemp("synthetic_tiny"))
    generate_synthetic(root, "tiny", seed=0, workers=1)
    return root


def write_coco(root, images, annotations, categories, name="ann.json"):
    """Write ``images`` (list of (id, file_name, uint8 array or None)) as PNG files under
    ``root/images`` and a COCO JSON; returns (annotation path, image folder)."""
    image_dir = os.path.join(root, "images")
    os.makedirs(image_dir, exist_ok=True)
    entries = []
    for image_id, file_name, array in images:
        if array is not None:
            Image.fromarray(array).save(os.path.join(image_dir, file_name))
            h, w = array.shape[:2]
        else:
            h, w = 64, 64
        entries.append({"id": image_id, "file_name": file_name, "width": w, "height": h})
    anns = [{"id": i + 1, "iscrowd": 0, **a} for i, a in enumerate(annotations)]
    path = os.path.join(root, name)
    with open(path, "w") as f:
        json.dump({"images": entries, "annotations": anns, "categories": categories}, f)
    return path, image_dir


@pytest.fixture
def make_coco(tmp_path):
    """``make_coco(images, annotations, categories)`` -> (annotation path, image folder)."""
    return lambda images, annotations, categories, name="ann.json": write_coco(str(tmp_path), images, annotations,
                                                                              categories, name)


@pytest.fixture
def noise_image():
    """``noise_image(seed, h=64, w=64)`` -> a random ``uint8`` RGB image."""
    return lambda seed, h=64, w=64: np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)
