"""torch.hub entry points: ``torch.hub.load(repo, "oneshot_detector", checkpoint=PATH)``.

With a clone of this repository (no network)::

    det = torch.hub.load("path/to/clone", "oneshot_detector", checkpoint="outputs/demo/checkpoint_00003000.pth",
                         source="local")
    det.predict("query.jpg", "exemplar.jpg", support_box=(10, 20, 80, 60))

From GitHub, ``torch.hub.load("OWNER/REPO", "oneshot_detector", checkpoint=PATH)`` does the same
after torch.hub downloads the code. Weights are never downloaded: ``checkpoint`` is a file written
by ``tools/train.py``.
"""
from detector.config import DEFAULT_MAX_PIXELS

dependencies = ["torch", "torchvision", "timm", "albumentations", "cv2", "numpy", "PIL", "yaml"]


def oneshot_detector(checkpoint: str, device: str = "cpu", max_pixels: int = DEFAULT_MAX_PIXELS):
    """The trained detector of ``checkpoint`` as a :class:`detector.inference.OneShotDetector`
    (``predict``, ``predict_batch``; one or several exemplars), on ``device``.

    Args:
        checkpoint: a checkpoint written by ``tools/train.py``.
        device: ``"cpu"``, ``"cuda"`` or ``"cuda:N"``.
        max_pixels: larger images are refused before decoding (0: no limit).
    """
    from detector.inference import OneShotDetector

    return OneShotDetector.from_checkpoint(checkpoint, device=device, max_pixels=max_pixels)
