"""``POST /api/predict``'s form: read under a size cap, every field checked, images decoded safely.

Fields (``multipart/form-data``):

* ``query``: the image searched (file, required).
* ``support``: the image holding the exemplar (file, optional: without it the exemplar is cut from
  the query image, the page's "same image").
* ``support_box``: the exemplar ``x,y,w,h`` in support-image pixels (optional: the whole image).
* ``score_threshold``: keep detections scoring at least this, in [0, 1] (default 0.3).
* :data:`PREDICT_OPTIONS`: the real-photo keyword options of :meth:`OneShotDetector.predict`
  (optional; default: the checkpoint's ``infer`` config section), passed through as parsed:
  ``size`` (0 or an integer >= 32: longer side in ``fit``, tile side otherwise), ``rescale``
  (``fit`` | ``exemplar`` | ``native``), ``object_size`` (a number >= 0, model-input pixels),
  ``tile_overlap`` (in [0, 1)), ``max_detections`` (an integer >= 1).

Anything else (an unknown or repeated field, text where a file belongs, a body over the cap, a file
that is not an image, a truncated image, too many pixels) is an :class:`ApiError` with a 4xx status
and a one-line message.
"""
from __future__ import annotations

import io
import math
from dataclasses import dataclass, field
from typing import Callable, Optional

import numpy as np
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException
from starlette.requests import Request

from ..config import MIN_INFER_SIZE, RESCALE_MODES, infer_option_ok
from ..data.image_io import PHOTO_FORMATS, ImageReadError, ImageTooLargeError, read_image

ACCEPTED_FORMATS = PHOTO_FORMATS  # PIL names; none decoded by an outside program
DEFAULT_SCORE_THRESHOLD = 0.3
MAX_TEXT_FIELD_BYTES = 1024


class ApiError(Exception):
    """A request the server refuses: HTTP ``status`` and a one-line ``message``."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status
        self.message = " ".join(message.split())[:400]  # one line, whatever PIL or the model said


def parse_box(text: str) -> tuple[float, float, float, float]:
    """``"x,y,w,h"`` -> four finite floats with ``w, h > 0``; :class:`ApiError` (400) otherwise."""
    parts = text.replace(" ", "").split(",")
    try:
        values = tuple(float(p) for p in parts)
    except ValueError:
        values = ()
    if len(values) != 4 or not all(math.isfinite(v) for v in values):
        raise ApiError(400, f"support_box: expected x,y,w,h (four numbers), got {text[:60]!r}")
    if values[2] <= 0 or values[3] <= 0:
        raise ApiError(400, f"support_box: width and height must be > 0, got {text[:60]!r}")
    return values  # type: ignore[return-value]


def parse_threshold(text: str) -> float:
    """A score threshold in [0, 1]; :class:`ApiError` (400) otherwise."""
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not 0.0 <= value <= 1.0:
        raise ApiError(400, f"score_threshold: expected a number in [0, 1], got {text[:60]!r}")
    return value


def _number(name: str, text: str, integer: bool, ok: Callable[[float], bool], expected: str):
    """``text`` as an int (``integer``) or a finite float for which ``ok`` holds; :class:`ApiError`
    (400) ``"<name>: expected <expected>, got '<text>'"`` otherwise."""
    try:
        value = int(text) if integer else float(text)
    except ValueError:
        value = None
    if value is None or not math.isfinite(value) or not ok(value):
        raise ApiError(400, f"{name}: expected {expected}, got {text[:60]!r}")
    return value


def parse_rescale(text: str) -> str:
    """One of :data:`detector.config.RESCALE_MODES`; :class:`ApiError` (400) otherwise."""
    if not infer_option_ok("rescale", text):
        raise ApiError(400, f"rescale: expected one of {', '.join(RESCALE_MODES)}, got {text[:60]!r}")
    return text


def _option(name: str, integer: bool, expected: str) -> Callable[[str], object]:
    """The parser of the numeric option ``name``: its range is the config's rule (:func:`infer_option_ok`)."""
    return lambda text: _number(name, text, integer, lambda v: infer_option_ok(name, v), expected)


# Options of OneShotDetector.predict the form passes through: field name -> parser of its text. A
# field the model cannot honour is refused as unknown rather than silently ignored.
PREDICT_OPTIONS: dict[str, Callable[[str], object]] = {
    "size": _option("size", True, f"0 (the training size) or an integer >= {MIN_INFER_SIZE}"),
    "rescale": parse_rescale,
    "object_size": _option("object_size", False, "a number >= 0 (pixels)"),
    "tile_overlap": _option("tile_overlap", False, "a number in [0, 1)"),
    "max_detections": _option("max_detections", True, "an integer >= 1"),
}
FILE_FIELDS = ("query", "support")
TEXT_FIELDS: dict[str, Callable[[str], object]] = {"support_box": parse_box, "score_threshold": parse_threshold,
                                                   **PREDICT_OPTIONS}


def accepted_fields() -> list[str]:
    """Every field name ``POST /api/predict`` accepts."""
    return [*FILE_FIELDS, *TEXT_FIELDS]


@dataclass
class Upload:
    """One uploaded file: its client-side name and its bytes."""

    filename: str
    data: bytes


@dataclass
class PredictRequest:
    """A checked ``POST /api/predict`` form."""

    query: Upload
    support: Optional[Upload]  # None: the exemplar comes from the query image
    support_box: Optional[tuple[float, float, float, float]]
    score_threshold: float = DEFAULT_SCORE_THRESHOLD
    options: dict = field(default_factory=dict)  # keyword options of OneShotDetector.predict


def _capped(request: Request, max_bytes: int) -> Request:
    """The same request, whose body raises :class:`ApiError` (413) past ``max_bytes``: a declared
    length is checked before anything is read, a chunked body as it arrives."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > max_bytes:
        raise ApiError(413, f"request body of {int(declared)} bytes is over the limit of {max_bytes} bytes")
    received = 0

    async def receive():
        nonlocal received
        message = await request.receive()
        received += len(message.get("body", b""))
        if received > max_bytes:
            raise ApiError(413, f"request body is over the limit of {max_bytes} bytes")
        return message

    return Request(request.scope, receive)


async def read_predict_form(request: Request, max_bytes: int) -> PredictRequest:
    """Read and check the form of ``request`` (body capped at ``max_bytes``)."""
    if not request.headers.get("content-type", "").lower().startswith("multipart/form-data"):
        raise ApiError(415, "expected a multipart/form-data body (fields: " + ", ".join(accepted_fields()) + ")")
    try:
        form = await _capped(request, max_bytes).form(max_files=len(FILE_FIELDS) + 2, max_fields=len(TEXT_FIELDS) + 4,
                                                      max_part_size=MAX_TEXT_FIELD_BYTES)
    except HTTPException as e:  # the multipart parser's complaints (too many files, malformed body)
        raise ApiError(400, f"malformed form: {e.detail}") from None
    except ApiError:
        raise
    except Exception as e:  # noqa: BLE001 - whatever else the parser raises, the body is at fault
        raise ApiError(400, f"malformed form ({type(e).__name__}: {e})") from None
    try:
        values = {}
        for name, value in form.multi_items():
            if name not in FILE_FIELDS and name not in TEXT_FIELDS:
                raise ApiError(400, f"unknown field {name!r}; accepted: {', '.join(accepted_fields())}")
            if name in values:
                raise ApiError(400, f"field {name!r} given more than once")
            values[name] = value
        uploads = {name: await _read_upload(name, values[name]) for name in FILE_FIELDS if name in values}
    finally:
        await form.close()
    if "query" not in uploads:
        raise ApiError(400, "query: missing (an image file is required)")
    parsed = {}
    for name, parse in TEXT_FIELDS.items():
        if name in values:
            if not isinstance(values[name], str):
                raise ApiError(400, f"{name}: expected text, got a file")
            parsed[name] = parse(values[name])
    return PredictRequest(query=uploads["query"], support=uploads.get("support"),
                          support_box=parsed.pop("support_box", None),
                          score_threshold=parsed.pop("score_threshold", DEFAULT_SCORE_THRESHOLD), options=parsed)


async def _read_upload(name: str, value) -> Upload:
    if not isinstance(value, UploadFile):
        raise ApiError(400, f"{name}: expected an image file, got text")
    data = await value.read()
    if not data:
        raise ApiError(400, f"{name}: empty file")
    return Upload(filename=value.filename or name, data=data)


def decode_upload(upload: Upload, what: str, max_pixels: int) -> np.ndarray:
    """An upload -> ``[H, W, 3]`` ``uint8`` (the data pipeline's reading rules: EXIF orientation,
    alpha on white, 16-bit scaled). Pixels are counted from the header before decoding."""
    try:
        return read_image(io.BytesIO(upload.data), max_pixels=max_pixels, formats=ACCEPTED_FORMATS,
                          name=f"{what} ({upload.filename})")
    except ImageTooLargeError as e:
        raise ApiError(413, str(e)) from None
    except ImageReadError as e:
        raise ApiError(400, str(e)) from None
