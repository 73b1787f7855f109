"""One-shot object detection with indirect attention (a DETR whose keys come from the exemplar and
whose values come from the image searched).

``from detector import OneShotDetector`` is the inference API; ``InputError``, ``CheckpointError``
and ``ConfigError`` are what it (and every tool) raises for a bad input, checkpoint or config
(:mod:`detector.errors`).
"""

from .errors import CheckpointError, ConfigError, InputError

__version__ = "0.1.0"

__all__ = ["OneShotDetector", "InputError", "CheckpointError", "ConfigError"]


def __getattr__(name: str):
    # Lazy: ``import detector`` stays light; ``from detector import OneShotDetector`` loads torch.
    if name == "OneShotDetector":
        from .inference import OneShotDetector

        return OneShotDetector
    raise AttributeError(f"module 'detector' has no attribute {name!r}")
