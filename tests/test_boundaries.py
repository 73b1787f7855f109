"""Property-based tests of every boundary where a user's bytes or text enter the package: image
files and arrays, exemplar boxes, score thresholds and inference options, config overrides and
checkpoint files. The property everywhere: a clean refusal (an ``InputError`` / ``ConfigError`` /
``CheckpointError`` of one line) or a right answer; never another exception.

``hypothesis`` draws at least 200 cases per boundary (``PROFILE``); the cases it once found that
broke a rule stay below as ``@example``s.
"""
import io
import math
import os
import pickle
import tempfile
import zipfile

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from PIL import Image

from detector.config import Config, load_config, to_dict
from detector.data.image_io import PHOTO_FORMATS, load_image
from detector.data.support import crop_exemplar
from detector.errors import CheckpointError, ConfigError, InputError
from detector.inference import OneShotDetector, pair_supports
from detector.models import build_model
from detector.structures import ImageBatch
from detector.utils.checkpoint import checkpoint_state, load_checkpoint, save_checkpoint

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = os.path.join(ROOT, "configs", "tiny.yaml")
PROFILE = settings(max_examples=200, deadline=None, derandomize=True, database=None,
                   suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
SCRATCH = tempfile.mkdtemp(prefix="boundaries_")

pytestmark = pytest.mark.usefixtures("one_thread")


def one_line(error: BaseException) -> str:
    text = str(error)
    assert text and "\n" not in text and "Traceback" not in text, repr(text)
    return text


def _scratch(name: str, data: bytes) -> str:
    path = os.path.join(SCRATCH, name)
    with open(path, "wb") as f:
        f.write(data)
    return path


def _photo(fmt: str) -> bytes:
    """A small image with structure (gradient + noise) in ``fmt``."""
    rng = np.random.default_rng(0)
    arr = (np.linspace(0, 255, 24 * 32 * 3).reshape(24, 32, 3) * 0.7 + rng.integers(0, 70, (24, 32, 3))).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format=fmt)
    return buf.getvalue()


PHOTOS = {fmt: _photo(fmt) for fmt in PHOTO_FORMATS}


def _check_image(result, path: str, max_pixels: int) -> None:
    assert result.mode == "RGB" and result.width >= 1 and result.height >= 1
    assert result.width * result.height <= max_pixels


# --- image files and arrays ------------------------------------------------------------------------


@PROFILE
@given(st.binary(max_size=2048))
@example(b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\nshowpage\n")  # EPS: PIL would run Ghostscript
@example(b"P6\n4 4\n255\n" + bytes(48))  # PPM: a real image, but not a photo format
def test_any_bytes_are_a_photo_or_one_clean_refusal(data):
    path = _scratch("random.bin", data)
    try:
        _check_image(load_image(path, "query image", max_pixels=4_000_000), path, 4_000_000)
    except InputError as e:
        assert one_line(e).startswith(f"query image: {path}")


@PROFILE
@given(st.sampled_from(PHOTO_FORMATS), st.data())
def test_truncated_or_corrupted_photos_are_read_or_refused(fmt, data):
    raw = bytearray(PHOTOS[fmt])
    cut = data.draw(st.integers(0, len(raw)), label="cut")
    flips = data.draw(st.lists(st.tuples(st.integers(0, len(raw) - 1), st.integers(1, 255)), max_size=4), label="flips")
    for pos, xor in flips:
        raw[pos] ^= xor
    path = _scratch(f"photo.{fmt.lower()}", bytes(raw[:cut]))
    try:
        _check_image(load_image(path, "support image", max_pixels=1_000_000), path, 1_000_000)
    except InputError as e:
        assert one_line(e).startswith(f"support image: {path}")


ARRAYS = st.tuples(
    st.sampled_from([np.uint8, np.uint16, np.int32, np.int64, np.float32, np.float64, np.bool_, np.complex64]),
    st.lists(st.integers(0, 6), min_size=0, max_size=4),
    st.sampled_from(["zeros", "ones", "random", "negative", "huge", "nan"]),
)


@PROFILE
@given(ARRAYS)
@example((np.float64, [4, 4, 3], "nan"))
@example((np.uint8, [0, 5, 3], "random"))
def test_any_array_is_an_image_or_one_clean_refusal(spec):
    dtype, shape, fill = spec
    rng = np.random.default_rng(0)
    base = {"zeros": np.zeros(shape), "ones": np.ones(shape), "random": rng.random(shape) * 255,
            "negative": -np.ones(shape), "huge": np.full(shape, 1e30), "nan": np.full(shape, np.nan)}[fill]
    with np.errstate(invalid="ignore", over="ignore"):
        arr = base.astype(dtype)
    try:
        image = load_image(arr, "support image")
    except InputError as e:
        assert one_line(e).startswith("support image")
        return
    assert image.mode == "RGB" and (image.height, image.width) == tuple(arr.shape[:2])


# --- exemplar boxes, thresholds and options -------------------------------------------------------

NUMBER = st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.integers(-10**6, 10**6),
                   st.floats(-100, 100))
BOX_LIKE = st.one_of(
    st.none(), st.text(max_size=12), st.booleans(), NUMBER,
    st.lists(NUMBER, min_size=0, max_size=6), st.tuples(NUMBER, NUMBER, NUMBER, NUMBER),
    st.lists(st.one_of(st.none(), NUMBER, st.text(max_size=3)), min_size=4, max_size=4),
    st.lists(st.lists(NUMBER, min_size=3, max_size=5), min_size=1, max_size=3),
)


@PROFILE
@given(BOX_LIKE)
@example([1, 2, 3])  # three numbers: once a TypeError from inside
@example([1, 2, 3, 4, 5])
@example((True, 1, 5, 5))
@example(["1", "2", "3", "4"])
def test_any_exemplar_box_is_cut_inside_the_image_or_refused(box):
    image = Image.new("RGB", (40, 30), (90, 120, 30))
    try:
        crop = crop_exemplar(image, box, margin=0.1)
    except InputError as e:
        one_line(e)
        return
    assert 1 <= crop.width <= 40 and 1 <= crop.height <= 30
    if box is not None:  # a box was accepted: four finite numbers with positive area
        assert len(box) == 4 and all(math.isfinite(float(v)) for v in box) and box[2] > 0 and box[3] > 0


@PROFILE
@given(st.integers(1, 3), BOX_LIKE)
@example(1, (None, None, None, None))  # once four whole-image exemplars of one image, silently
def test_support_images_and_boxes_pair_up_or_are_refused(k, boxes):
    images = [f"support{i}.png" for i in range(k)]
    try:
        paired, paired_boxes = pair_supports(images, boxes)
    except InputError as e:
        one_line(e)
        return
    assert len(paired) == len(paired_boxes) >= 1 and set(paired) <= set(images)
    for b in paired_boxes:
        assert b is None or (len(b) == 4 and all(isinstance(v, float) for v in b))
    if len(paired_boxes) > len(images):  # several exemplars cut from one image: each has its box
        assert None not in paired_boxes


@pytest.fixture(scope="module")
def detector():
    torch.manual_seed(0)
    cfg = load_config(TINY)
    model, _, postprocessor = build_model(cfg)
    return OneShotDetector(model, postprocessor, cfg)


QUERY = np.random.default_rng(1).integers(0, 256, (48, 64, 3), dtype=np.uint8)
OPTIONS = st.fixed_dictionaries({}, optional={
    "size": st.one_of(st.integers(-64, 700), st.floats(allow_nan=True), st.text(max_size=3)),
    "rescale": st.one_of(st.sampled_from(["auto", "fit", "exemplar", "native", "bogus", ""]), st.integers()),
    "object_size": st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.integers(-5, 10**9), st.text(max_size=3)),
    "tile_overlap": st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.integers(-2, 3)),
    "max_detections": st.one_of(st.integers(-3, 10**4), st.floats(allow_nan=True), st.none()),
})
THRESHOLD = st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.integers(-2, 2), st.text(max_size=4),
                      st.none(), st.booleans())


@PROFILE
@given(OPTIONS, THRESHOLD, st.one_of(st.none(), st.tuples(st.floats(-20, 70), st.floats(-20, 50),
                                                           st.floats(0, 1e6), st.floats(0, 1e6)), BOX_LIKE))
@example({"size": 32}, 0.3, None)  # the documented smallest working size
@example({"rescale": "native", "size": 32}, 0.3, (5.0, 5.0, 20.0, 20.0))
@example({"rescale": "exemplar", "object_size": 1e-300}, 0.3, (5.0, 5.0, 20.0, 20.0))
@example({"rescale": "exemplar", "object_size": 24.5}, 0.3, (0.0, 0.0, 1e200, 1e200))
@example({}, float("nan"), None)  # once: nothing kept, silently
@example({}, "0.5", None)
@example({}, 0.3, (None, None, None, None))
def test_predict_answers_or_refuses_any_box_threshold_and_options(detector, options, threshold, box):
    try:
        result = detector.predict(QUERY, QUERY, score_threshold=threshold, support_box=box, **options)
    except InputError as e:
        one_line(e)
        return
    assert (result["width"], result["height"]) == (64, 48) and result["scale"] > 0 and result["tiles"] >= 1
    for d in result["detections"]:
        x, y, w, h = d["bbox"]
        assert threshold <= d["score"] <= 1 and w >= 0 and h >= 0 and all(math.isfinite(v) for v in (x, y, w, h))
        assert -1 <= x and x + w <= 65 and -1 <= y and y + h <= 49


# --- config overrides -----------------------------------------------------------------------------


def _keys(d: dict, prefix: str = "") -> list:
    out = []
    for k, v in d.items():
        out += _keys(v, f"{prefix}{k}.") if isinstance(v, dict) else [f"{prefix}{k}"]
    return out


KEYS = _keys(to_dict(Config()))
# Keys that only name files, folders or run behaviour; their effects are the data and run tests' business.
NOT_MODEL = ("data.", "train.", "eval.", "infer.")
VALUE = st.one_of(st.integers(-10**6, 10**6), st.floats(allow_nan=True, allow_infinity=True), st.booleans(),
                  st.text(alphabet="abcxyz01-_.[]{}:, '\"!&*", max_size=8), st.sampled_from(["[]", "{}", "null", "~", ""]),
                  st.lists(st.floats(-2, 2), max_size=3).map(str))


@PROFILE
@given(st.one_of(st.sampled_from(KEYS), st.text(alphabet="abmodel._", min_size=1, max_size=12)), VALUE)
@example("train.lr", ".nan")
@example("model.d_model", -32)
@example("model.num_queries", 100000)
@example("model.proposal_sizes", "[]")
@example("model.dropout", 2.0)
@example("model.support_size", 0)
@example("model.bias_hidden_dim", 0)
@example("data.eval_size", -64)
@example("data.eval_size", 0)
@example("model.backbone.name", "nonexistent_model")
@example("model.backbone.pretrained", "/nonexistent.pth")
def test_any_override_is_refused_or_gives_a_model_that_runs(key, value):
    text = f"{key}={value}"
    try:
        cfg = load_config(TINY, [text])
        if not key.startswith(NOT_MODEL):
            model, _, _ = build_model(cfg)
            s = cfg.model.support_size
            query = ImageBatch.from_tensors([torch.rand(3, cfg.data.eval_size, cfg.data.eval_size)])
            support = ImageBatch.from_tensors([torch.rand(3, s, s)], size_divisibility=s)
            with torch.no_grad():
                out = model.eval()(query, support)
            assert torch.isfinite(out["pred_boxes"]).all()
    except ConfigError as e:
        one_line(e)


# --- checkpoint files -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def checkpoint_bytes():
    torch.manual_seed(0)
    cfg = load_config(TINY)
    path = save_checkpoint(os.path.join(SCRATCH, "good.pth"), checkpoint_state(build_model(cfg)[0], to_dict(cfg)))
    with open(path, "rb") as f:
        return f.read()


@PROFILE
@given(st.data())
@example(None)
def test_truncated_flipped_or_random_checkpoints_are_refused_or_load_unchanged(checkpoint_bytes, data):
    raw = bytearray(checkpoint_bytes)
    if data is None:  # the whole file, one byte short
        raw = raw[:-1]
    elif data.draw(st.booleans(), label="random bytes"):
        raw = bytearray(data.draw(st.binary(max_size=4096), label="bytes"))
    else:
        for pos, xor in data.draw(st.lists(st.tuples(st.integers(0, len(raw) - 1), st.integers(1, 255)), max_size=3)):
            raw[pos] ^= xor
        raw = raw[:data.draw(st.integers(0, len(raw)), label="cut")]
    path = _scratch("damaged.pth", bytes(raw))
    try:
        state = load_checkpoint(path)
    except CheckpointError as e:
        assert one_line(e).startswith(path) or path in str(e)
        return
    reference = torch.load(io.BytesIO(checkpoint_bytes), weights_only=True)
    assert state["model"].keys() == reference["model"].keys()
    assert all(torch.equal(state["model"][k], reference["model"][k]) for k in reference["model"])


class _RunsCode:
    def __reduce__(self):
        return (os.system, (f"touch {os.path.join(SCRATCH, 'code_ran')}",))


def test_a_checkpoint_that_would_run_code_is_refused_without_running_it():
    path = os.path.join(SCRATCH, "payload.pth")
    torch.save({"model": {}, "config": {}, "model_class": "OneShotDETR", "payload": _RunsCode()}, path)
    plain = os.path.join(SCRATCH, "payload.pkl")
    with open(plain, "wb") as f:
        pickle.dump(_RunsCode(), f)
    for p in (path, plain):
        with pytest.raises(CheckpointError):
            load_checkpoint(p)
    assert not os.path.exists(os.path.join(SCRATCH, "code_ran"))
    assert zipfile.is_zipfile(path)
