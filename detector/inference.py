"""The Python inference API: ``OneShotDetector.from_checkpoint(path).predict(query, support)``.

Images may be paths, PIL images or numpy arrays (rules in :func:`detector.data.image_io.load_image`).
The exemplar is the whole support image, or the box ``support_box = (x, y, w, h)`` (pixels) cut from
it with the training context margin (:func:`detector.data.support.crop_exemplar`). Several exemplars
of one class (k-shot): ``predict(query, [img1, img2], support_boxes=[box1, box2])``, or several boxes
of one support image (:func:`pair_supports`). Both go through the data pipeline's evaluation
transforms (query: longer side ``data.eval_size``; exemplar: longer side ``model.support_size``);
boxes come back in pixels of the original query image. Real photos (large images, small objects,
more objects than the model's object queries): ``predict(..., rescale="exemplar" | "native",
size=...)`` scales the query and cuts it into tiles of side ``size`` (:mod:`detector.tiling`);
:class:`detector.config.InferConfig` has the options and their defaults, and
:func:`detector.config.infer_option_ok` their ranges. Images of more than ``max_pixels`` pixels
(default :data:`detector.config.DEFAULT_MAX_PIXELS`) are refused before they are decoded. The model
comes from a checkpoint by :func:`detector.loading.load_model`.

Bad inputs raise :class:`InputError`, unusable checkpoints :class:`CheckpointError` (both
importable from ``detector``), each with a one-line message naming the input and the problem.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass, replace
from typing import Optional, Sequence, Union

import numpy as np
import torch
from PIL import Image

from .config import DEFAULT_MAX_PIXELS, MIN_INFER_SIZE, RESCALE_MODES, Config, infer_option_ok
from .data.image_io import ImageLike, load_image
from .data.support import as_box, crop_exemplar, is_number
from .data.transforms import QueryTransform, SupportTransform, resize, to_tensor
from .errors import CheckpointError, InputError, WorkLimitError
from .loading import load_model
from .models.postprocess import results_to_host
from .structures import ImageBatch
from .tiling import crop_tiles, merge_tiles, shift_to_image, tile_grid
from .utils.box_ops import box_xyxy_to_xywh
from .utils.device import resolve_device, upload

MAX_TILES = 4096  # default cap on tiles per query image (64 megapixels in 256 px tiles at 25% overlap: about 1,750)


class OneShotDetector:
    """A trained one-shot detector: finds every instance of an exemplar's class in query images.

    Args:
        model, postprocessor: from :func:`detector.models.build_model`, weights loaded.
        cfg: the config the model was trained with (gives the input sizes).
        device: where the model runs (:class:`InputError` for a device this machine lacks).
        max_pixels: larger images are refused before decoding (``None`` or 0: no limit).
    """

    def __init__(self, model: torch.nn.Module, postprocessor, cfg: Config, device: Union[str, torch.device] = "cpu",
                 max_pixels: Optional[int] = DEFAULT_MAX_PIXELS):
        self.device = resolve_device(device)
        self.max_pixels = max_pixels
        self.model = model.to(self.device).eval()
        self.postprocessor = postprocessor
        self.cfg = cfg
        # The evaluation transforms of the data pipeline, so that inference sees what evaluation saw.
        self.query_transform = QueryTransform(train=False, augment=False, eval_size=cfg.data.eval_size)
        self.support_transform = SupportTransform(cfg.model.support_size, augment=False)

    @classmethod
    def from_checkpoint(cls, path: str, device: Union[str, torch.device] = "cpu",
                        max_pixels: Optional[int] = DEFAULT_MAX_PIXELS) -> "OneShotDetector":
        """Rebuild the model from the config stored in a ``tools/train.py`` checkpoint and load its
        weights. :class:`CheckpointError` for a missing file or a checkpoint of another model,
        :class:`InputError` for a device this machine does not have."""
        device = resolve_device(device)  # before the checkpoint is read
        cfg, model, postprocessor = load_model(path)
        return cls(model, postprocessor, cfg, device, max_pixels)

    def prepare_query(self, image: ImageLike, transform: Optional[QueryTransform] = None) -> tuple[torch.Tensor, tuple[int, int]]:
        """Query image -> (resized ``[3, h, w]`` tensor, original ``(height, width)``), by
        ``transform`` (default: the evaluation transform, longer side ``data.eval_size``)."""
        array = np.asarray(load_image(image, "query image", self.max_pixels))
        tensor, _, _ = (transform or self.query_transform)(array, np.zeros((0, 4)), np.zeros(0, dtype=bool))
        return tensor, (array.shape[0], array.shape[1])

    def prepare_support(self, image: ImageLike, support_box: Optional[Sequence[float]] = None) -> tuple[torch.Tensor, Image.Image]:
        """Support image (+ box) -> (exemplar tensor ``[3, h, w]`` with longer side ``support_size``,
        exemplar crop as a PIL image)."""
        crop = crop_exemplar(load_image(image, "support image", self.max_pixels), support_box,
                             self.cfg.data.support_margin)
        return self.support_transform(np.asarray(crop)), crop

    def prepare_supports(self, support_images, support_boxes=None) -> list[tuple[torch.Tensor, Image.Image]]:
        """``k >= 1`` exemplars of one class -> ``[(tensor [3, h, w], crop)]``, one per exemplar
        (:meth:`prepare_support` each).

        ``support_images``: one image, or a list of them. ``support_boxes``: ``None`` (each whole
        image), one box ``(x, y, w, h)`` (one support image), or a list of boxes (``None`` entries:
        the whole image), one per support image, or several for a single support image (several
        exemplars cut from it). :class:`InputError` when the two do not pair up.
        """
        return [self.prepare_support(image, box) for image, box in zip(*pair_supports(support_images, support_boxes))]

    @property
    def pixel_limit(self) -> int:
        """The most pixels a working image (a ``size x size`` tile, a rescaled query) may have:
        ``max_pixels``, or :data:`detector.config.DEFAULT_MAX_PIXELS` when images are unlimited."""
        return self.max_pixels or DEFAULT_MAX_PIXELS

    def infer_options(self, size: Optional[int] = None, rescale: Optional[str] = None,
                      object_size: Optional[float] = None, tile_overlap: Optional[float] = None,
                      max_detections: Optional[int] = None, max_tiles: Optional[int] = None) -> InferOptions:
        """The options of one call: each argument, or the ``cfg.infer`` value where it is ``None``
        (``size`` 0: ``data.eval_size``; ``max_tiles``: :data:`MAX_TILES`). :class:`InputError` (one
        line naming it) for a bad one."""
        c = self.cfg.infer
        pick = lambda value, default: default if value is None else value  # noqa: E731
        opts = InferOptions(size=pick(size, c.size), rescale=pick(rescale, c.rescale),
                            object_size=pick(object_size, c.object_size), tile_overlap=pick(tile_overlap, c.tile_overlap),
                            max_detections=pick(max_detections, c.max_detections),
                            max_tiles=pick(max_tiles, MAX_TILES))
        opts.check()
        opts = replace(opts, size=opts.size or self.cfg.data.eval_size)
        limit = self.pixel_limit
        if opts.size * opts.size > limit:
            raise InputError(f"size: {opts.size} px makes {opts.size}x{opts.size} images, over the limit of "
                             f"{limit / 1e6:g} megapixels")
        return opts

    def query_scale(self, opts: InferOptions, support_boxes: Sequence) -> float:
        """The factor applied to the query image in mode ``exemplar`` (``object_size`` over the mean
        ``sqrt(w * h)`` of the exemplar boxes) or ``native`` (1); ``fit`` depends on each image."""
        if opts.rescale == "native":
            return 1.0
        if any(b is None for b in support_boxes):
            raise InputError("rescale=exemplar needs an exemplar box (--support-box, support_box=) cut from the query image or one "
                             "at its scale; a whole support image tells nothing of the query's scale")
        sides = [float(np.sqrt(float(b[2]) * float(b[3]))) for b in support_boxes]
        return opts.object_size / float(np.mean(sides))

    def scale_options(self, opts: InferOptions, support_boxes: Sequence) -> tuple["InferOptions", Optional[float]]:
        """``opts`` with ``auto`` resolved (:func:`resolve_rescale`) and the factor applied to the
        query (:meth:`query_scale`; ``None`` for ``fit``, which depends on each image).
        :class:`InputError` for a mode these exemplars cannot run (``exemplar`` without a box)."""
        opts = replace(opts, rescale=resolve_rescale(opts.rescale, opts.object_size, support_boxes))
        return opts, None if opts.rescale == "fit" else self.query_scale(opts, support_boxes)

    def min_query_side(self) -> int:
        """The padded query side below which the model's feature map would hold fewer proposals
        than it has object queries (a query scaled far down, e.g. by a large exemplar box): small
        queries are padded up to it (padding cells give no proposal a score)."""
        m = self.model
        if not m.two_stage:
            return 0
        cells = math.ceil(m.num_queries / len(m.proposal_sizes))
        return math.ceil(math.sqrt(cells)) * m.backbone.stride

    @torch.no_grad()
    def _forward(self, queries: list[torch.Tensor], shots: list[torch.Tensor], sizes_hw: list[tuple[int, int]]) -> list[dict]:
        """One forward pass: query tensors ``[3, h, w]``, exemplar tensors ``[3, h', w']`` -> per
        query ``{"scores" [K], "boxes" [K, 4]}`` (``xyxy`` pixels of an image of ``sizes_hw``)."""
        query = ImageBatch.from_tensors(queries, min_size=self.min_query_side()).to(self.device)
        # Padded to the square support_size, as collate_oneshot pads exemplar crops.
        batches = [ImageBatch.from_tensors([t] * len(queries), size_divisibility=self.cfg.model.support_size)
                   .to(self.device) for t in shots]
        sizes = upload(torch.tensor(sizes_hw, dtype=torch.long), self.device)
        outputs = self.model(query, batches[0] if len(batches) == 1 else batches)
        return results_to_host(self.postprocessor(outputs, sizes))

    def _predict_fit(self, query_images: Sequence[ImageLike], shots: list[torch.Tensor], opts: InferOptions) -> list[dict]:
        """Mode ``fit``: each query resized to longer side ``opts.size``, all in one forward pass."""
        transform = QueryTransform(train=False, augment=False, eval_size=opts.size)
        prepared = [self.prepare_query(q, transform) for q in query_images]
        found = self._forward([p[0] for p in prepared], shots, [p[1] for p in prepared])
        return [{"height": h, "width": w, "scale": opts.size / max(h, w), "tiles": 1,
                 "boxes": r["boxes"][:opts.max_detections], "scores": r["scores"][:opts.max_detections]}
                for (_, (h, w)), r in zip(prepared, found)]

    def _predict_tiled(self, query_image: ImageLike, shots: list[torch.Tensor], scale: float,
                       opts: InferOptions) -> dict:
        """Modes ``exemplar`` and ``native``: the query scaled by ``scale``, cut into tiles of side
        ``opts.size`` (:mod:`detector.tiling`), ``infer.tile_batch`` tiles per forward pass, merged."""
        array = np.asarray(load_image(query_image, "query image", self.max_pixels))
        h, w = array.shape[:2]
        if min(h, w) * scale < 1:
            raise InputError(f"rescale={opts.rescale}: the {w}x{h} px query scaled by {scale:.3g} would be under one "
                             f"pixel on a side (is object_size={opts.object_size:g} far smaller than the exemplar box?)")
        sh, sw = max(1, round(h * scale)), max(1, round(w * scale))
        self._check_scaled_pixels(opts, scale, sh, sw)
        grid = tile_grid(sh, sw, opts.size, opts.tile_overlap)
        if len(grid) > opts.max_tiles:
            raise WorkLimitError(f"rescale={opts.rescale}: the {w}x{h} px query scaled by {scale:.3g} is {sw}x{sh} px, "
                                 f"{len(grid)} tiles of {opts.size} px at tile_overlap={opts.tile_overlap:g}, over the "
                                 f"limit of {opts.max_tiles} tiles per image: use rescale=fit, a larger size, a smaller "
                                 f"overlap or a larger object_size ratio")
        image = to_tensor(resize(array, (sh, sw)))
        boxes, scores, index = [], [], []
        step = self.cfg.infer.tile_batch
        for start in range(0, len(grid), step):
            crops, sizes_hw = crop_tiles(image, grid.tiles[start:start + step])
            for i, r in enumerate(self._forward(crops, shots, sizes_hw)):
                boxes.append(r["boxes"])
                scores.append(r["scores"])
                index.append(torch.full((len(r["scores"]),), start + i, dtype=torch.long))
        boxes, scores, index = torch.cat(boxes), torch.cat(scores), torch.cat(index)
        boxes = shift_to_image(boxes, index, grid.tiles)
        iou = self.cfg.infer.merge_iou if len(grid) > 1 else 0.0
        boxes, scores = merge_tiles(boxes, scores, index, grid.owned, iou, opts.max_detections)
        boxes = boxes / scale
        boxes[:, 0::2] = boxes[:, 0::2].clamp(0, w)
        boxes[:, 1::2] = boxes[:, 1::2].clamp(0, h)
        return {"height": h, "width": w, "scale": scale, "tiles": len(grid), "boxes": boxes, "scores": scores}

    def _check_scaled_pixels(self, opts: InferOptions, scale: float, sh: int, sw: int) -> None:
        """:class:`InputError` when the scaled query would be over the pixel limit (a tiny exemplar
        box in mode ``exemplar`` can ask for an enormous image)."""
        limit = self.pixel_limit
        if sh * sw > limit:
            raise InputError(f"rescale={opts.rescale}: the query scaled by {scale:.3g} would be {sw}x{sh} pixels, "
                             f"over the limit of {limit / 1e6:g} megapixels (is the exemplar box far smaller than "
                             f"object_size={opts.object_size:g}?)")

    @torch.no_grad()
    def predict_batch(self, query_images: Sequence[ImageLike], support_images, support_boxes=None,
                      score_threshold: float = 0.3, *, support_box: Optional[Sequence[float]] = None,
                      size: Optional[int] = None, rescale: Optional[str] = None, object_size: Optional[float] = None,
                      tile_overlap: Optional[float] = None, max_detections: Optional[int] = None,
                      max_tiles: Optional[int] = None) -> list[dict]:
        """Several query images, ``k >= 1`` exemplars of one class (:meth:`prepare_supports` says how
        ``support_images`` and ``support_boxes`` pair up; ``support_box`` is the one-exemplar
        spelling of ``support_boxes``). Returns one dict per query image: ``{"width", "height",
        "scale", "tiles", "detections": [{"bbox": [x, y, w, h], "score"}]}`` (pixels of the original
        image, highest score first; ``scale``: the factor applied to the query; ``tiles``: how many
        tiles it was cut into). One exemplar is the one-shot model, unchanged.

        ``size``, ``rescale``, ``object_size``, ``tile_overlap``, ``max_detections``: as in
        :class:`detector.config.InferConfig` (``None``: the ``cfg.infer`` value). ``fit`` (the
        default) runs all query images in one forward pass; ``exemplar`` and ``native`` scale each
        query and cut it into tiles of side ``size`` when it is larger. ``max_tiles`` (default
        :data:`MAX_TILES`): a query needing more tiles is refused with :class:`WorkLimitError` before
        any runs (what a server uses to keep one request from holding its workers).
        """
        if support_box is not None:
            if support_boxes is not None:
                raise InputError("give support_box (one exemplar) or support_boxes, not both")
            support_boxes = as_box(support_box, "support_box")
        check_score_threshold(score_threshold)
        opts = self.infer_options(size, rescale, object_size, tile_overlap, max_detections, max_tiles)
        if len(query_images) == 0:
            return []
        images, boxes = pair_supports(support_images, support_boxes)
        shots = [self.prepare_support(image, box)[0] for image, box in zip(images, boxes)]  # checks the boxes
        opts, scale = self.scale_options(opts, boxes)
        k = self.cfg.infer.self_exemplars
        if k > 0:  # decoded once for both passes and the crops
            query_images = [load_image(q, "query image", self.max_pixels) for q in query_images]
        found = self._predict_all(query_images, shots, scale, opts)
        if k > 0:  # one query at a time: each gets its own further exemplars
            found = [self._predict_all([q], shots + self._self_exemplars(q, r, k), scale, opts)[0]
                     for q, r in zip(query_images, found)]
        return [_result(r, score_threshold) for r in found]

    def _predict_all(self, query_images: Sequence[ImageLike], shots: list[torch.Tensor], scale: Optional[float],
                     opts: InferOptions) -> list[dict]:
        """Every query in mode ``fit`` (``scale`` None: one pass) or scaled by ``scale`` and tiled."""
        if scale is None:
            return self._predict_fit(query_images, shots, opts)
        return [self._predict_tiled(q, shots, scale, opts) for q in query_images]

    def _self_exemplars(self, query_image: ImageLike, found: dict, k: int) -> list[torch.Tensor]:
        """The ``k`` best detections of ``found`` (one query's first pass, ``xyxy`` pixels), cut from
        the query image as exemplar tensors (``infer.self_exemplars``)."""
        return [self.prepare_support(query_image, (x0, y0, x1 - x0, y1 - y0))[0]
                for x0, y0, x1, y1 in found["boxes"][:k].tolist() if x1 - x0 >= 1 and y1 - y0 >= 1]

    def predict(self, query_image: ImageLike, support_images, support_boxes=None, score_threshold: float = 0.3, *,
                support_box: Optional[Sequence[float]] = None, **options) -> dict:
        """One query image, ``k >= 1`` exemplars (as :meth:`predict_batch`, whose keyword ``options``
        ``size``, ``rescale``, ``object_size``, ``tile_overlap``, ``max_detections`` it takes):
        ``{"image", "width", "height", "scale", "tiles", "detections": [{"bbox": [x, y, w, h],
        "score"}]}`` as one entry of ``results.json`` (``image`` is the path, or ``None``)."""
        result = self.predict_batch([query_image], support_images, support_boxes, score_threshold,
                                    support_box=support_box, **options)[0]
        name = os.fspath(query_image) if isinstance(query_image, (str, os.PathLike)) else None
        return {"image": name, **result}


@dataclass(frozen=True)
class InferOptions:
    """The real-photo options of one :meth:`OneShotDetector.predict_batch` call
    (:class:`detector.config.InferConfig` has their meaning)."""

    size: int
    rescale: str
    object_size: float
    tile_overlap: float
    max_detections: int
    max_tiles: int = MAX_TILES

    def check(self) -> None:
        """:class:`InputError` (one line naming the option) for a value outside its range."""
        integer = lambda v: isinstance(v, (int, np.integer)) and not isinstance(v, bool)  # noqa: E731
        finite = lambda v: is_number(v) and v < math.inf  # noqa: E731 - NaN compares false too
        checks = [  # (option, its type, what it takes); the range is the config's rule (infer_option_ok)
            ("size", integer, f"an integer >= {MIN_INFER_SIZE} (pixels), or 0 for data.eval_size"),
            ("rescale", lambda v: isinstance(v, str), f"one of {', '.join(RESCALE_MODES)}"),
            ("object_size", finite, "a finite number >= 0 (pixels; 0: not known)"),
            ("tile_overlap", is_number, "a number in [0, 1)"),
            ("max_detections", integer, "an integer >= 1"),
        ]
        for name, of_type, expected in checks:
            value = getattr(self, name)
            if not (of_type(value) and infer_option_ok(name, value)):
                raise InputError(f"{name}: expected {expected}, got {value!r}")
        if not (integer(self.max_tiles) and self.max_tiles >= 1):  # the caller's limit, not a config option
            raise InputError(f"max_tiles: expected an integer >= 1, got {self.max_tiles!r}")
        if self.rescale == "exemplar" and self.object_size <= 0:
            raise InputError("rescale=exemplar needs the object size the model was trained on: set "
                             "infer.object_size (--object-size, object_size=) to it, in model-input pixels")


def resolve_rescale(rescale: str, object_size: float, support_boxes: Sequence) -> str:
    """The mode ``auto`` stands for: ``exemplar`` when the model's trained ``object_size`` is known
    and every exemplar has a box (its size then tells the query's scale, as on the real-photo
    benchmark), else ``fit``. Other modes are returned as they are."""
    if rescale != "auto":
        return rescale
    return "exemplar" if object_size > 0 and all(b is not None for b in support_boxes) else "fit"


PAIRING_ERROR = ("{images} support images but {boxes} support boxes: give one box per support image, or several "
                 "boxes for one support image")  # pair_supports' message; tools/infer.py words it for its options


def pair_supports(support_images, support_boxes=None, mismatch: str = PAIRING_ERROR) -> tuple[list, list]:
    """``(images, boxes)``, one entry per exemplar, by the rules of
    :meth:`OneShotDetector.prepare_supports`: ``support_images`` one image or a list of them,
    ``support_boxes`` ``None`` (every image whole), one ``(x, y, w, h)`` box, or a list of boxes
    (``None`` entries: the whole image), one per image or several for a single image.
    :class:`InputError` when they do not pair up: ``mismatch`` with ``{images}`` and ``{boxes}``
    (the counts) filled in."""
    images = list(support_images) if isinstance(support_images, (list, tuple)) else [support_images]
    if not images:
        raise InputError("no support image: give one, or a list of k >= 1")
    if support_boxes is None:
        boxes = [None] * len(images)
    elif _is_box(support_boxes):
        boxes = [as_box(support_boxes)]
    elif not isinstance(support_boxes, (list, tuple, np.ndarray)) or _numbers_only(support_boxes):
        raise InputError(f"support boxes: expected one box x, y, w, h (four numbers) or a list of boxes; "
                         f"got {support_boxes!r:.80}")
    else:
        boxes = [None if b is None else as_box(b, f"support box {i + 1}") for i, b in enumerate(support_boxes)]
    if len(images) == 1 and len(boxes) > 1 and None in boxes:
        raise InputError("several exemplars cut from one support image each need a box x, y, w, h; "
                         f"got {boxes!r:.80}")
    if len(images) == 1 and len(boxes) > 1:
        images = images * len(boxes)
    if not boxes or len(boxes) != len(images):
        raise InputError(mismatch.format(images=len(images), boxes=len(boxes)))
    return images, boxes


def check_score_threshold(value) -> None:
    """:class:`InputError` unless ``value`` is a number in [0, 1] (NaN would keep nothing, silently)."""
    if not (is_number(value) and 0 <= value <= 1):
        raise InputError(f"score_threshold: expected a number in [0, 1], got {value!r:.40}")


def _result(found: dict, score_threshold: float) -> dict:
    """``{"height", "width", "scale", "tiles", "boxes" [K, 4] xyxy, "scores" [K]}`` -> a result entry
    (detections scoring at least ``score_threshold``, ``bbox`` as ``[x, y, w, h]``)."""
    keep = found["scores"] >= score_threshold
    boxes = box_xyxy_to_xywh(found["boxes"][keep])
    dets = [{"bbox": [round(float(v), 2) for v in b], "score": round(float(s), 4)}
            for b, s in zip(boxes, found["scores"][keep])]
    return {"width": int(found["width"]), "height": int(found["height"]), "scale": round(float(found["scale"]), 6),
            "tiles": int(found["tiles"]), "detections": dets}


def _numbers_only(value) -> bool:
    """A flat sequence of scalars (numbers, text), not a list of boxes: a box of the wrong arity."""
    return all(not isinstance(v, (list, tuple, np.ndarray)) and v is not None for v in value) and len(value) > 0


def _is_box(value) -> bool:
    """One ``(x, y, w, h)`` box (four numbers), as opposed to a list of boxes."""
    return isinstance(value, (list, tuple, np.ndarray)) and len(value) == 4 and all(is_number(v) for v in value)


# Re-exported where they used to live: image decoding (detector.data.image_io), exemplar cropping
# (detector.data.support), checkpoint loading (detector.loading), the option constants (detector.config).
__all__ = ["OneShotDetector", "InferOptions", "RESCALE_MODES", "pair_supports", "resolve_rescale", "InputError",
           "CheckpointError", "DEFAULT_MAX_PIXELS", "ImageLike", "load_image", "load_model", "crop_exemplar"]
