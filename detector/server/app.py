"""The web app: one page to try the detector and a JSON API (FastAPI).

* ``GET /``: the page (``static/index.html``, ``app.js``, ``style.css``).
* ``POST /api/predict``: the form of :mod:`detector.server.uploads` -> one entry of
  ``results.json``: ``{"image", "width", "height", "scale", "tiles", "detections": [{"bbox": [x, y, w, h],
  "score"}]}``.
* ``GET /api/health``: ``{"status": "ok", "workers", "capacity", "admitted", "uploading", "upload_slots",
  "completed"}``.
* ``GET /api/model``: config summary, checkpoint, device, the ``infer`` defaults, limits, accepted fields.

Every refusal is ``{"error": "<one line>"}`` with a 4xx status (413 for a body, an image or a
tiling over the limits, 431 for request headers over ``ServeLimits.max_header_bytes``); a full queue is
503 with ``Retry-After``. The detector is built once by the caller
(``OneShotDetector.from_checkpoint``, which loads with ``weights_only=True``) and shared by the model
workers.
"""
from __future__ import annotations

import asyncio
import logging
import os
from contextlib import asynccontextmanager
from dataclasses import asdict, dataclass

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException

from ..errors import InputError, WorkLimitError
from .pool import Busy, WorkerPool
from .uploads import ApiError, PredictRequest, accepted_fields, decode_upload, read_predict_form

STATIC_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "static")
LOG = logging.getLogger("detector.server")
# The page loads only its own script and style; images are shown from blob: URLs of the user's files.
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' blob: data:; object-src 'none'; "
                               "base-uri 'none'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}


@dataclass(frozen=True)
class ServeLimits:
    """What one server accepts and how much work it holds at once."""

    max_upload_bytes: int = 20 * 1024 * 1024  # whole request body of POST /api/predict
    max_pixels: int = 40_000_000  # per image, read from its header before decoding
    max_tiles: int = 256  # tiles per query image (rescale=exemplar / native), refused before any runs: 413
    workers: int = 1  # model threads
    queue_size: int = 8  # admitted requests waiting for a worker; one more gets 503
    upload_slots: int = 0  # request bodies arriving at once (0: twice workers + queue_size); one more gets 503
    read_timeout_s: float = 30.0  # a body still arriving after this holds no slot longer: 408
    header_timeout_s: float = 10.0  # a connection whose request headers are not all in by then is closed
    max_header_bytes: int = 16 * 1024  # request line's headers, names and values: 431 past it


def error(status: int, message: str, headers: dict | None = None) -> JSONResponse:
    """``{"error": message}`` with ``status``."""
    return JSONResponse({"error": message}, status_code=status, headers=headers)


def run_prediction(detector, job: PredictRequest, limits: ServeLimits) -> dict:
    """Decode the uploads and run ``detector.predict`` (on a model worker) under ``limits``. One
    ``results.json`` entry, ``image`` being the query's file name."""
    query = decode_upload(job.query, "query", limits.max_pixels)
    support = query if job.support is None else decode_upload(job.support, "support", limits.max_pixels)
    try:
        result = detector.predict(query, support, support_box=job.support_box, score_threshold=job.score_threshold,
                                  max_tiles=limits.max_tiles, **job.options)
    except WorkLimitError as e:  # more tiles than this server runs for one request
        raise ApiError(413, str(e)) from None
    except InputError as e:  # a box outside the support image, rescale=exemplar without a box
        raise ApiError(400, str(e)) from None
    return {**result, "image": job.query.filename}


def model_summary(detector, checkpoint: str, limits: ServeLimits) -> dict:
    """What ``GET /api/model`` answers: the checkpoint, the device, the parts of the config that
    shape the answers, the limits and the accepted form fields."""
    cfg = detector.cfg
    m = cfg.model
    return {
        "checkpoint": os.path.abspath(checkpoint) if checkpoint else None,
        "checkpoint_bytes": os.path.getsize(checkpoint) if checkpoint and os.path.isfile(checkpoint) else None,
        "device": str(detector.device),
        "model": {"backbone": m.backbone.name, "attention": m.attention, "support_layout": m.support_layout,
                  "d_model": m.d_model, "num_heads": m.num_heads, "num_decoder_layers": m.num_decoder_layers,
                  "num_queries": m.num_queries, "correlation_channels": m.correlation_channels},
        "inference": {"eval_size": cfg.data.eval_size, "support_size": m.support_size,
                      "support_margin": cfg.data.support_margin, "max_detections": cfg.eval.max_detections,
                      "nms_iou": cfg.eval.nms_iou},
        "infer": asdict(cfg.infer),  # the defaults of the real-photo form fields
        "limits": asdict(limits),
        "predict_fields": accepted_fields(),
    }


def add_error_handlers(app: FastAPI) -> None:
    """Every refusal as ``{"error": one line}``; an unexpected failure as a 500 that is logged."""

    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError):
        return error(exc.status, exc.message)

    @app.exception_handler(Busy)
    async def _busy(request: Request, exc: Busy):
        return error(503, str(exc), {"Retry-After": str(exc.retry_after)})

    @app.exception_handler(HTTPException)
    async def _http(request: Request, exc: HTTPException):
        return error(exc.status_code, " ".join(str(exc.detail).split()), getattr(exc, "headers", None))

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError):
        first = exc.errors()[0] if exc.errors() else {}
        where = ".".join(str(p) for p in first.get("loc", ()))
        return error(422, f"{where}: {first.get('msg', 'invalid request')}")

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception):
        LOG.exception("unexpected error on %s %s", request.method, request.url.path)
        return error(500, f"internal error ({type(exc).__name__})")


def build_app(detector, limits: ServeLimits = ServeLimits(), checkpoint: str = "") -> FastAPI:
    """The app around a loaded ``detector`` (anything with ``predict``, ``cfg`` and ``device``, as
    :class:`detector.inference.OneShotDetector`)."""
    pool = WorkerPool(limits.workers, limits.queue_size, limits.upload_slots)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        yield
        pool.shutdown()

    app = FastAPI(title="One-shot detector", version="1", lifespan=lifespan, docs_url=None, redoc_url=None)
    app.state.pool = pool
    add_error_handlers(app)

    @app.middleware("http")
    async def _header_size_cap(request: Request, call_next):  # (h11 caps headers that arrive in pieces at 16 KiB)
        size = sum(len(k) + len(v) for k, v in request.scope.get("headers", ()))
        if size > limits.max_header_bytes:
            return error(431, f"request headers of {size} bytes are over the limit of {limits.max_header_bytes} bytes")
        return await call_next(request)

    @app.middleware("http")  # added last, so outermost: on every answer, the 431 above included
    async def _security_headers(request: Request, call_next):
        response = await call_next(request)
        response.headers.update(SECURITY_HEADERS)
        return response

    @app.get("/", include_in_schema=False)
    async def page():
        return FileResponse(os.path.join(STATIC_DIR, "index.html"), headers={"Cache-Control": "no-cache"})

    @app.get("/api/health")
    async def health():
        return {"status": "ok", **pool.stats()}

    summary = model_summary(detector, checkpoint, limits)

    @app.get("/api/model")
    async def model():
        return summary

    @app.post("/api/predict")
    async def predict(request: Request):
        pool.check_room()  # Busy (503) before a byte of the body is read when the queue is full
        with pool.admit_upload():  # a slow body holds an upload slot, never the model's queue
            try:
                job = await asyncio.wait_for(read_predict_form(request, limits.max_upload_bytes),
                                             limits.read_timeout_s)
            except asyncio.TimeoutError:  # a slow (or stalled) upload must not hold its slot for ever
                raise ApiError(408, f"the request body did not arrive within {limits.read_timeout_s:g} s") from None
        with pool.admit():
            return await pool.run(run_prediction, detector, job, limits)

    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
    return app
