"""The inference API's input rules: arrays as documented (converted or refused, never guessed),
the pixel limit before decoding, devices, and the errors importable from ``detector``."""
import numpy as np
import pytest
import torch
from PIL import Image

from detector import CheckpointError, ConfigError, InputError, OneShotDetector
from detector.config import load_config, to_dict
from detector.inference import DEFAULT_MAX_PIXELS, load_image
from detector.models import build_model
from detector.utils.checkpoint import checkpoint_state, save_checkpoint


@pytest.fixture(scope="module")
def detector(tmp_path_factory):
    cfg = load_config(None, [
        "model.backbone.pretrained=none", "model.d_model=32", "model.num_heads=4", "model.num_decoder_layers=1",
        "model.dim_feedforward=32", "model.num_queries=4", "model.bias_hidden_dim=8", "data.eval_size=64",
        "model.support_size=32"])
    model, _, _ = build_model(cfg)
    path = save_checkpoint(str(tmp_path_factory.mktemp("api") / "c.pth"), checkpoint_state(model, to_dict(cfg)))
    return OneShotDetector.from_checkpoint(path)


def test_errors_are_importable_from_the_package():
    assert issubclass(InputError, ValueError) and issubclass(ConfigError, ValueError)
    assert issubclass(CheckpointError, RuntimeError)


def test_arrays_follow_the_documented_rules():
    rgb = np.random.default_rng(0).integers(0, 256, (5, 6, 3), dtype=np.uint8)
    assert np.array_equal(np.asarray(load_image(rgb)), rgb)
    assert np.array_equal(np.asarray(load_image(rgb.astype(np.float32) / 255.0)), rgb)  # floats in [0, 1]
    assert np.array_equal(np.asarray(load_image(rgb.astype(np.int64))), rgb)  # integers in 0-255
    gray = rgb[..., 0]
    assert np.array_equal(np.asarray(load_image(gray)), np.repeat(gray[..., None], 3, axis=2))
    assert np.array_equal(np.asarray(load_image(gray[..., None])), np.repeat(gray[..., None], 3, axis=2))
    rgba = np.concatenate([rgb, np.zeros((5, 6, 1), np.uint8)], axis=2)  # fully transparent: white, as for files
    assert (np.asarray(load_image(rgba)) == 255).all()


@pytest.mark.parametrize("array, message", [
    (np.full((4, 4, 3), 132.9, np.float32), r"float array must hold values in \[0, 1\], got 132\.9 to 132\.9"),
    (np.full((4, 4, 3), -0.5), r"got -0\.5 to -0\.5"),
    (np.full((4, 4, 3), np.nan), "NaN or inf"),
    (np.full((4, 4, 3), 1000, np.uint16), "integer array must hold values in 0-255, got 1000 to 1000"),
    (np.zeros((3, 8, 8), np.uint8), "channels first"),
    (np.zeros((4, 4, 3), bool), "unsupported array dtype bool"),
    (np.zeros((0, 4, 3), np.uint8), "got shape"),
])
def test_arrays_outside_the_rules_are_refused_not_guessed(array, message):
    with pytest.raises(InputError, match=message):
        load_image(array, "query image")


def test_a_float_array_of_0_255_values_is_refused_by_predict(detector):
    """The reported bug: such an array came out almost white (mean 132.9 -> 254.9)."""
    image = np.random.default_rng(1).uniform(0, 255, (40, 50, 3)).astype(np.float32)
    with pytest.raises(InputError, match=r"query image: a float array must hold values in \[0, 1\]"):
        detector.predict(image, image / 255.0)
    assert detector.predict(image / 255.0, image / 255.0, score_threshold=0.0)["width"] == 50


def test_oversized_images_are_refused_before_decoding(detector, tmp_path, fake_png):
    bomb = fake_png(tmp_path / "bomb.png", 20000, 20000)  # PIL's DecompressionBombError before
    with pytest.raises(InputError, match=r"bomb\.png: 20000x20000 pixels \(400\.0 megapixels\) is over the limit of 64"):
        detector.predict(bomb, bomb)
    big = fake_png(tmp_path / "big.png", 12000, 12000)  # 144 MP: accepted before, 2.8 GB and 15 s
    with pytest.raises(InputError, match="144.0 megapixels"):
        load_image(big)
    assert DEFAULT_MAX_PIXELS == 64_000_000
    small = tmp_path / "small.png"
    Image.new("RGB", (50, 40)).save(small)
    with pytest.raises(InputError, match=r"over the limit of 0\.001 megapixels"):
        load_image(str(small), max_pixels=1000)
    with pytest.raises(InputError, match="over the limit"):
        load_image(np.zeros((50, 40, 3), np.uint8), max_pixels=1000)
    assert load_image(str(small), max_pixels=None).size == (50, 40)


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a GPU")
def test_a_missing_gpu_is_an_input_error(tmp_path):
    with pytest.raises(InputError, match="cuda: no CUDA GPU is available"):
        OneShotDetector.from_checkpoint(str(tmp_path / "never_read.pth"), device="cuda")
    with pytest.raises(InputError, match="not a device name"):
        OneShotDetector.from_checkpoint(str(tmp_path / "never_read.pth"), device="gpu0")
