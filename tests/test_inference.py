"""The inference API's input rules: arrays as documented (converted or refused, never guessed),
the pixel limit before decoding, devices, and the errors importable from ``detector``."""
import numpy as np
import pytest
import torch
from PIL import Image

from detector import CheckpointError, ConfigError, InputError, OneShotDetector
from detector.config import load_config, to_dict
from detector.errors import WorkLimitError
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


# Real photos: the query's working size, its rescale and tiles (detector/tiling.py).

def test_fit_is_today_s_pipeline_bit_for_bit(detector):
    """The default (rescale=fit) is the evaluation transform and one forward pass, as before."""
    from detector.structures import ImageBatch
    from detector.utils.box_ops import box_xyxy_to_xywh

    rng = np.random.default_rng(2)
    query, support = rng.integers(0, 256, (90, 130, 3), dtype=np.uint8), rng.integers(0, 256, (40, 50, 3), dtype=np.uint8)
    q, _, _ = detector.query_transform(query, np.zeros((0, 4)), np.zeros(0, dtype=bool))
    s = detector.support_transform(np.asarray(support))
    with torch.no_grad():
        out = detector.model(ImageBatch.from_tensors([q]), ImageBatch.from_tensors([s], size_divisibility=32))
        r = detector.postprocessor(out, torch.tensor([[90, 130]]))[0]
    expected = [{"bbox": [round(float(v), 2) for v in b], "score": round(float(sc), 4)}
                for b, sc in zip(box_xyxy_to_xywh(r["boxes"].float()), r["scores"].float())]
    for options in ({}, {"rescale": "fit", "size": 64}, {"rescale": "fit", "size": 0}):
        result = detector.predict(query, support, score_threshold=0.0, **options)
        assert result["detections"] == expected
        assert (result["scale"], result["tiles"]) == (round(64 / 130, 6), 1)


def test_exemplar_rescale_gives_the_exemplar_the_trained_object_size(detector):
    from detector.tiling import tile_grid

    query = np.random.default_rng(3).integers(0, 256, (60, 80, 3), dtype=np.uint8)
    result = detector.predict(query, query, support_box=(10, 10, 20, 30), score_threshold=0.0, rescale="exemplar",
                              object_size=40.0)
    scale = 40.0 / np.sqrt(20 * 30)
    assert result["scale"] == round(scale, 6)
    assert result["tiles"] == len(tile_grid(round(60 * scale), round(80 * scale), 64, 0.25)) > 1
    k_shot = detector.predict(query, query, support_boxes=[(0, 0, 10, 10), (0, 0, 30, 30)], rescale="exemplar",
                              object_size=40.0)
    assert k_shot["scale"] == 2.0  # the mean side of the k boxes: (10 + 30) / 2
    for det in result["detections"]:  # boxes in pixels of the original image
        x, y, w, h = det["bbox"]
        assert 0 <= x <= x + w <= 80 + 1e-3 and 0 <= y <= y + h <= 60 + 1e-3


def test_native_keeps_the_query_s_pixels_and_a_small_image_is_one_tile(detector):
    query = np.random.default_rng(4).integers(0, 256, (50, 60, 3), dtype=np.uint8)
    small = detector.predict(query, query, score_threshold=0.0, rescale="native")
    assert (small["scale"], small["tiles"], small["width"], small["height"]) == (1.0, 1, 60, 50)
    assert len(small["detections"]) == 4  # one tile: num_queries
    assert detector.predict(query, query, rescale="native", size=32)["tiles"] == 6  # 2 x 3 tiles of 32 px


def test_tiles_raise_the_detection_budget_up_to_max_detections(detector):
    query = np.random.default_rng(5).integers(0, 256, (200, 300, 3), dtype=np.uint8)
    fit = detector.predict(query, query, score_threshold=0.0)
    tiled = detector.predict(query, query, score_threshold=0.0, rescale="native", tile_overlap=0.0)
    assert len(fit["detections"]) == 4 and tiled["tiles"] == 20  # 4 x 5 tiles of 64 px
    assert 4 < len(tiled["detections"]) <= 1000
    scores = [d["score"] for d in tiled["detections"]]
    assert scores == sorted(scores, reverse=True)
    capped = detector.predict(query, query, score_threshold=0.0, rescale="native", max_detections=7)
    assert len(capped["detections"]) == 7
    batch = detector.predict_batch([query, query[:50, :60]], query, score_threshold=0.0, rescale="native")
    assert [r["tiles"] for r in batch] == [24, 1]  # 4 x 6 tiles at the default overlap 0.25; one for the small image
    assert batch[0]["detections"] == detector.predict(query, query, score_threshold=0.0, rescale="native")["detections"]


def test_infer_defaults_come_from_the_config(detector):
    query = np.random.default_rng(6).integers(0, 256, (50, 60, 3), dtype=np.uint8)
    before = detector.cfg.infer.rescale
    detector.cfg.infer.rescale = "native"
    try:
        assert detector.predict(query, query)["scale"] == 1.0
    finally:
        detector.cfg.infer.rescale = before


@pytest.mark.parametrize("options, message", [
    ({"rescale": "exemplar", "support_box": (1, 1, 20, 20)}, r"set infer\.object_size \(--object-size, object_size=\)"),
    ({"rescale": "exemplar", "object_size": 40.0}, "rescale=exemplar needs an exemplar box"),
    ({"rescale": "zoom"}, "rescale: expected one of auto, fit, exemplar, native, got 'zoom'"),
    ({"size": 16}, "size: expected an integer >= 32"),
    ({"size": 64.5}, "size: expected an integer"),
    ({"tile_overlap": 1.0}, r"tile_overlap: expected a number in \[0, 1\)"),
    ({"object_size": -1.0}, "object_size: expected a finite number >= 0"),
    ({"max_detections": 0}, "max_detections: expected an integer >= 1"),
    ({"rescale": "exemplar", "object_size": 4000.0, "support_box": (1, 1, 2, 2)}, "over the limit of 64 megapixels"),
])
def test_bad_real_photo_options_are_one_line_input_errors(detector, options, message):
    query = np.zeros((40, 50, 3), np.uint8)
    with pytest.raises(InputError, match=message) as e:
        detector.predict(query, query, **options)
    assert "\n" not in str(e.value)


def test_sizes_and_tilings_that_would_run_for_minutes_are_refused(detector):
    """A working size over the pixel limit and an overlap that cuts a photo into thousands of tiles:
    one-line InputErrors before any forward pass."""
    from detector.inference import MAX_TILES

    image = np.zeros((120, 200, 3), np.uint8)
    before = detector.max_pixels
    try:
        detector.max_pixels = 1_000_000
        with pytest.raises(InputError, match="size: 4000 px makes 4000x4000 images, over the limit of 1 megapixels"):
            detector.predict(image, image, support_box=(10, 10, 20, 20), size=4000)
        with pytest.raises(WorkLimitError, match=f"tiles of 32 px at tile_overlap=0.99, over the limit of {MAX_TILES} tiles"):
            detector.predict(image, image, support_box=(10, 10, 20, 20), rescale="native", size=32, tile_overlap=0.99)
    finally:
        detector.max_pixels = before


def test_max_tiles_refuses_a_query_before_any_tile_runs(detector, monkeypatch):
    """The caller's cap on tiles per image (what the server sets): a 200x120 query at scale 1 in 64 px
    tiles at overlap 0.25 is 4 x 3 = 12 tiles (starts 0, 48, 96, 136 and 0, 48, 56); a cap of 11 refuses
    it without a forward pass, 12 runs it."""
    image = np.random.default_rng(0).integers(0, 256, (120, 200, 3), dtype=np.uint8)
    calls = []
    real = detector._forward
    monkeypatch.setattr(detector, "_forward", lambda *a: calls.append(1) or real(*a))
    opts = dict(support_box=(10, 10, 40, 40), rescale="native", size=64, tile_overlap=0.25)
    with pytest.raises(WorkLimitError, match=r"200x120 px, 12 tiles of 64 px .* over the limit of 11 tiles per image"):
        detector.predict(image, image, max_tiles=11, **opts)
    assert calls == []
    assert detector.predict(image, image, max_tiles=12, **opts)["tiles"] == 12
    assert calls
    for bad in (0, -1, 2.5, True, "8"):
        with pytest.raises(InputError, match="max_tiles: expected an integer >= 1"):
            detector.predict(image, image, max_tiles=bad, **opts)


def test_queries_scaled_below_the_proposal_count_are_padded_not_refused():
    """A working size of 32 px, or a large exemplar box under exemplar rescale, leaves a 2 x 2
    feature map: 16 proposals (4 anchors a cell) for 20 object queries. The query is padded up instead (the padding
    scores no proposal), so inference answers with boxes inside the image."""
    from detector.config import load_config
    from detector.models import build_model
    from tests.conftest import TINY_MODEL

    cfg = load_config(None, TINY_MODEL + ["model.num_queries=20"])
    model, _, post = build_model(cfg)
    det = OneShotDetector(model.eval(), post, cfg)
    assert det.min_query_side() == 48  # ceil(20 / 4 anchors) = 5 cells -> 3 x 3 cells of 16 px
    query = np.random.default_rng(0).integers(0, 255, (40, 50, 3), dtype=np.uint8)
    for options in ({"size": 32, "rescale": "fit"}, {"rescale": "exemplar", "object_size": 10.0},
                    {"rescale": "native", "size": 32}):
        result = det.predict(query, query, support_box=(0, 0, 50, 40), score_threshold=0.0, **options)
        assert 0 < len(result["detections"]) <= 20 * result["tiles"], options
        for d in result["detections"]:
            x, y, w, h = d["bbox"]
            assert 0 <= x and 0 <= y and x + w <= 50 + 1e-3 and y + h <= 40 + 1e-3 and np.isfinite(d["score"])


def test_self_exemplars_run_a_second_pass_with_the_best_detections_as_exemplars(monkeypatch):
    from detector.config import load_config
    from detector.models import build_model
    from tests.conftest import TINY_MODEL

    cfg = load_config(None, TINY_MODEL + ["infer.self_exemplars=2"])
    model, _, post = build_model(cfg)
    det = OneShotDetector(model.eval(), post, cfg)
    calls = []
    forward = det._forward
    monkeypatch.setattr(det, "_forward", lambda queries, shots, sizes: calls.append(len(shots)) or forward(queries, shots, sizes))
    query = np.random.default_rng(0).integers(0, 255, (60, 80, 3), dtype=np.uint8)
    result = det.predict(query, query, support_box=(5, 5, 30, 20), score_threshold=0.0, rescale="fit")
    assert calls == [1, 3] and len(result["detections"]) == cfg.model.num_queries  # 6 object queries
    with pytest.raises(ConfigError, match="infer.self_exemplars"):
        load_config(None, TINY_MODEL + ["infer.self_exemplars=-1"])
