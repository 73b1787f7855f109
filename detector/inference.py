"""The Python inference API: ``OneShotDetector.from_checkpoint(path).predict(query, support)``.

Images may be paths, PIL images or ``uint8``/float arrays ``[H, W, 3]``. The exemplar is the whole
support image, or the box ``support_box = (x, y, w, h)`` (pixels) cut from it with the training
context margin. Both go through the data pipeline's evaluation transforms (query: longer side
``data.eval_size``; exemplar: longer side ``model.support_size``); boxes come back in pixels of the
original query image.
"""
from __future__ import annotations

import os
from typing import Optional, Sequence, Union

import numpy as np
import torch
from PIL import Image

from .config import Config, ConfigError, from_dict
from .data.image_io import ImageReadError, read_image
from .data.support import crop_box_with_margin
from .data.transforms import QueryTransform, SupportTransform
from .structures import ImageBatch
from .utils.box_ops import box_xyxy_to_xywh
from .utils.checkpoint import CheckpointError, load_checkpoint

ImageLike = Union[str, os.PathLike, Image.Image, np.ndarray]


class InputError(ValueError):
    """An input the detector cannot use (unreadable image, bad support box)."""


def load_image(image: ImageLike, what: str = "image") -> Image.Image:
    """A path, PIL image or ``[H, W, 3]`` / ``[H, W]`` array -> RGB PIL image; :class:`InputError`
    otherwise."""
    if isinstance(image, Image.Image):
        return image.convert("RGB")
    if isinstance(image, np.ndarray):
        arr = image
        if arr.ndim == 2:
            arr = np.repeat(arr[..., None], 3, axis=2)
        if arr.ndim != 3 or arr.shape[2] not in (3, 4) or arr.shape[0] == 0 or arr.shape[1] == 0:
            raise InputError(f"{what}: expected an array [H, W, 3], got shape {arr.shape}")
        if arr.dtype != np.uint8:
            arr = (np.clip(arr.astype(np.float64), 0.0, 1.0) * 255).round().astype(np.uint8)
        return Image.fromarray(arr[..., :3])
    if isinstance(image, (str, os.PathLike)):
        # The data pipeline's reader: EXIF orientation, grayscale / RGBA / 16-bit / palette handled.
        try:
            return Image.fromarray(read_image(os.fspath(image)))
        except ImageReadError as e:
            raise InputError(f"{what}: cannot read it as an image: {e}") from None
    raise InputError(f"{what}: expected a path, a PIL image or a numpy array, got {type(image).__name__}")


def crop_exemplar(support: Image.Image, support_box: Optional[Sequence[float]], margin: float) -> Image.Image:
    """The exemplar: the whole image, or ``support_box`` (x, y, w, h pixels) enlarged by ``margin``
    of its size on each side and clipped to the image (as in training). :class:`InputError` for a
    box of zero area or outside the image."""
    if support_box is None:
        return support
    if len(support_box) != 4:
        raise InputError(f"support box must be x,y,w,h; got {list(support_box)}")
    x, y, w, h = (float(v) for v in support_box)
    W, H = support.size
    if not all(np.isfinite([x, y, w, h])) or w <= 0 or h <= 0:
        raise InputError(f"support box {[x, y, w, h]} has zero area (width and height must be > 0)")
    if min(x + w, W) - max(x, 0.0) < 1 or min(y + h, H) - max(y, 0.0) < 1:
        raise InputError(f"support box {[x, y, w, h]} lies outside the support image ({W}x{H} pixels)")
    x0, y0, x1, y1 = crop_box_with_margin((x, y, x + w, y + h), margin, (H, W))
    return support.crop((x0, y0, x1, y1))


def load_model(path: str, overrides: Sequence[str] = (), config_path: str = "") -> tuple[Config, torch.nn.Module, object]:
    """``(cfg, model, postprocessor)`` of a ``tools/train.py`` checkpoint, on the CPU, in eval mode.

    The config is the one stored in the checkpoint (or ``config_path``), then ``overrides``
    (dotted ``key=value``). :class:`CheckpointError` for a missing or unreadable file, a stored
    config this code cannot read, or weights that do not fit the model; ``ConfigError`` for a bad
    override or config file.
    """
    from .config import apply_overrides, load_config
    from .models import build_model

    state = load_checkpoint(path)
    if config_path:
        cfg = load_config(config_path, overrides)
    else:
        try:
            cfg = from_dict(state["config"], source=f"{path} (stored config)")
        except ConfigError as e:
            raise CheckpointError(f"{path}: its stored config does not fit this code: {e}") from None
        cfg = apply_overrides(cfg, overrides)
    cfg.model.backbone.pretrained = "none"  # the weights come from the checkpoint
    model, _, postprocessor = build_model(cfg)
    try:
        missing, unexpected = model.load_state_dict(state["model"], strict=False)
    except RuntimeError as e:  # a tensor of another shape
        raise CheckpointError(f"{path}: weights do not fit the model of this config "
                              f"({str(e).splitlines()[-1].strip()[:200]})") from None
    if missing or unexpected:
        raise CheckpointError(f"{path}: weights do not fit the model (missing {list(missing)[:5]}, "
                              f"unexpected {list(unexpected)[:5]})")
    return cfg, model.eval(), postprocessor


class OneShotDetector:
    """A trained one-shot detector: finds every instance of an exemplar's class in query images.

    Args:
        model, postprocessor: from :func:`detector.models.build_model`, weights loaded.
        cfg: the config the model was trained with (gives the input sizes).
        device: where the model runs.
    """

    def __init__(self, model: torch.nn.Module, postprocessor, cfg: Config, device: Union[str, torch.device] = "cpu"):
        self.device = torch.device(device)
        self.model = model.to(self.device).eval()
        self.postprocessor = postprocessor
        self.cfg = cfg
        # The evaluation transforms of the data pipeline, so that inference sees what evaluation saw.
        self.query_transform = QueryTransform(train=False, augment=False, eval_size=cfg.data.eval_size)
        self.support_transform = SupportTransform(cfg.model.support_size, augment=False)

    @classmethod
    def from_checkpoint(cls, path: str, device: Union[str, torch.device] = "cpu") -> "OneShotDetector":
        """Rebuild the model from the config stored in a ``tools/train.py`` checkpoint and load its
        weights. :class:`CheckpointError` for a missing file or a checkpoint of another model."""
        cfg, model, postprocessor = load_model(path)
        return cls(model, postprocessor, cfg, device)

    def prepare_query(self, image: ImageLike) -> tuple[torch.Tensor, tuple[int, int]]:
        """Query image -> (resized ``[3, h, w]`` tensor, original ``(height, width)``)."""
        array = np.asarray(load_image(image, "query image"))
        tensor, _, _ = self.query_transform(array, np.zeros((0, 4)), np.zeros(0, dtype=bool))
        return tensor, (array.shape[0], array.shape[1])

    def prepare_support(self, image: ImageLike, support_box: Optional[Sequence[float]] = None) -> tuple[torch.Tensor, Image.Image]:
        """Support image (+ box) -> (exemplar tensor ``[3, h, w]`` with longer side ``support_size``,
        exemplar crop as a PIL image)."""
        crop = crop_exemplar(load_image(image, "support image"), support_box, self.cfg.data.support_margin)
        return self.support_transform(np.asarray(crop)), crop

    @torch.no_grad()
    def predict_batch(self, query_images: Sequence[ImageLike], support_image: ImageLike,
                      support_box: Optional[Sequence[float]] = None, score_threshold: float = 0.3) -> list[dict]:
        """Several query images, one exemplar, one batched forward pass. Returns one dict per query
        image: ``{"width", "height", "detections": [{"bbox": [x, y, w, h], "score"}]}`` (pixels of
        the original image, highest score first)."""
        if len(query_images) == 0:
            return []
        support, _ = self.prepare_support(support_image, support_box)
        prepared = [self.prepare_query(q) for q in query_images]
        query = ImageBatch.from_tensors([p[0] for p in prepared]).to(self.device)
        # Padded to the square support_size, as collate_oneshot pads exemplar crops.
        support_batch = ImageBatch.from_tensors([support] * len(prepared),
                                                size_divisibility=self.cfg.model.support_size).to(self.device)
        sizes = torch.tensor([p[1] for p in prepared], dtype=torch.long, device=self.device)
        outputs = self.model(query, support_batch)
        results = []
        for (_, (h, w)), r in zip(prepared, self.postprocessor(outputs, sizes)):
            keep = r["scores"] >= score_threshold
            boxes = box_xyxy_to_xywh(r["boxes"][keep].float().cpu())
            dets = [{"bbox": [round(float(v), 2) for v in b], "score": round(float(s), 4)}
                    for b, s in zip(boxes, r["scores"][keep].float().cpu())]
            results.append({"width": int(w), "height": int(h), "detections": dets})
        return results

    def predict(self, query_image: ImageLike, support_image: ImageLike, support_box: Optional[Sequence[float]] = None,
                score_threshold: float = 0.3) -> dict:
        """One query image: ``{"image", "width", "height", "detections": [{"bbox": [x, y, w, h],
        "score"}]}`` as one entry of ``results.json`` (``image`` is the path, or ``None``)."""
        result = self.predict_batch([query_image], support_image, support_box, score_threshold)[0]
        name = os.fspath(query_image) if isinstance(query_image, (str, os.PathLike)) else None
        return {"image": name, **result}


__all__ = ["OneShotDetector", "InputError", "CheckpointError", "load_image", "load_model", "crop_exemplar"]
