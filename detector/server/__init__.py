"""The web page and JSON API around :class:`detector.inference.OneShotDetector` (``tools/serve.py``).

Needs the ``serve`` extra (FastAPI, uvicorn, python-multipart); ``import detector`` does not load it.
"""
from .app import ServeLimits, build_app, model_summary, run_prediction
from .pool import Busy, WorkerPool
from .uploads import ApiError, PredictRequest, accepted_fields, read_predict_form

__all__ = ["ApiError", "Busy", "PredictRequest", "ServeLimits", "WorkerPool", "accepted_fields", "build_app",
           "model_summary", "read_predict_form", "run_prediction"]
