"""The Python inference API: ``OneShotDetector.from_checkpoint(path).predict(query, support)``.

Images may be paths, PIL images or numpy arrays (rules in :func:`load_image`). The exemplar is the
whole support image, or the box ``support_box = (x, y, w, h)`` (pixels) cut from it with the
training context margin. Several exemplars of one class (k-shot): ``predict(query, [img1, img2],
support_boxes=[box1, box2])``, or several boxes of one support image. Both go through the data pipeline's evaluation transforms (query: longer
side ``data.eval_size``; exemplar: longer side ``model.support_size``); boxes come back in pixels of
the original query image. Real photos (large images, small objects, more objects than the model's
object queries): ``predict(..., rescale="exemplar" | "native", size=...)`` scales the query and cuts it
into tiles of side ``size`` (:mod:`detector.tiling`); :class:`detector.config.InferConfig` has the
options and their defaults. Images of more than ``max_pixels`` pixels (default
:data:`DEFAULT_MAX_PIXELS`) are refused before they are decoded.

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

from .config import MIN_INFER_SIZE, RESCALE_MODES, Config, ConfigError, from_dict
from .data.image_io import ImageReadError, check_pixels, read_image, to_rgb_uint8
from .data.support import crop_box_with_margin
from .data.transforms import QueryTransform, SupportTransform, resize, to_tensor
from .errors import CheckpointError, InputError
from .models.postprocess import results_to_host
from .structures import ImageBatch
from .tiling import merge_tiles, shift_to_image, tile_grid
from .utils.box_ops import box_xyxy_to_xywh
from .utils.checkpoint import load_checkpoint, load_weights
from .utils.device import resolve_device, upload

ImageLike = Union[str, os.PathLike, Image.Image, np.ndarray]

MAX_TILES = 4096  # tiles per query image (64 megapixels in 256 px tiles at 25% overlap: about 1,750)
DEFAULT_MAX_PIXELS = 64_000_000  # 64 megapixels: the largest camera photos (61 MP), not a 144 MP scan


def load_image(image: ImageLike, what: str = "image", max_pixels: Optional[int] = DEFAULT_MAX_PIXELS) -> Image.Image:
    """An image as an RGB PIL image; :class:`InputError` (one line) for anything else.

    Accepted:

    * a path: any format PIL reads, by the data pipeline's rules (EXIF orientation, grayscale,
      palette, 16-bit, alpha onto white; :mod:`detector.data.image_io`);
    * a PIL image of any mode, converted by the same rules;
    * a numpy array ``[H, W]``, ``[H, W, 1]``, ``[H, W, 3]`` (RGB) or ``[H, W, 4]`` (RGBA, alpha
      onto white) of dtype ``uint8`` (0-255), another integer dtype with values in 0-255, or a
      float dtype with values in [0, 1]. Anything else (float values above 1, negative or
      non-finite values, channels first, ``bool``) is refused, never rescaled by a guess.

    ``max_pixels`` (``None`` or 0: no limit) refuses larger images, files before decoding them.
    """
    if isinstance(image, Image.Image):
        check_pixels(image.width, image.height, max_pixels, what)
        return Image.fromarray(to_rgb_uint8(image))
    if isinstance(image, np.ndarray):
        return Image.fromarray(_array_to_rgb(image, what, max_pixels))
    if isinstance(image, (str, os.PathLike)):
        try:
            return Image.fromarray(read_image(os.fspath(image), max_pixels=max_pixels))
        except ImageReadError as e:
            raise InputError(f"{what}: {e}") from None
    raise InputError(f"{what}: expected a path, a PIL image or a numpy array, got {type(image).__name__}")


def _array_to_rgb(arr: np.ndarray, what: str, max_pixels: Optional[int]) -> np.ndarray:
    """The array rules of :func:`load_image`: ``[H, W, 3]`` ``uint8`` or :class:`InputError`."""
    if arr.ndim == 2:
        arr = arr[..., None]
    if arr.ndim != 3 or arr.shape[2] not in (1, 3, 4) or arr.shape[0] == 0 or arr.shape[1] == 0:
        hint = " (channels first? use array.transpose(1, 2, 0))" if arr.ndim == 3 and arr.shape[0] in (1, 3, 4) else ""
        raise InputError(f"{what}: expected an array [H, W], [H, W, 1], [H, W, 3] or [H, W, 4], "
                         f"got shape {tuple(arr.shape)}{hint}")
    check_pixels(arr.shape[1], arr.shape[0], max_pixels, what)
    if np.issubdtype(arr.dtype, np.floating):
        if not np.isfinite(arr).all():
            raise InputError(f"{what}: a float array must hold finite values in [0, 1]; it holds NaN or inf")
        lo, hi = float(arr.min()), float(arr.max())
        if lo < 0.0 or hi > 1.0:
            raise InputError(f"{what}: a float array must hold values in [0, 1], got {lo:g} to {hi:g} "
                             f"(for 0-255 values pass arr.astype(np.uint8), or divide by 255)")
        arr = (arr.astype(np.float64) * 255.0).round().astype(np.uint8)
    elif np.issubdtype(arr.dtype, np.integer) and arr.dtype != np.uint8:
        lo, hi = int(arr.min()), int(arr.max())
        if lo < 0 or hi > 255:
            raise InputError(f"{what}: an integer array must hold values in 0-255, got {lo} to {hi} "
                             f"(scale {arr.dtype} data to uint8 first)")
        arr = arr.astype(np.uint8)
    elif arr.dtype != np.uint8:
        raise InputError(f"{what}: unsupported array dtype {arr.dtype} (expected uint8, an integer or a float dtype)")
    if arr.shape[2] == 1:
        return np.repeat(arr, 3, axis=2)
    if arr.shape[2] == 4:
        return to_rgb_uint8(Image.fromarray(np.ascontiguousarray(arr), "RGBA"))
    return np.ascontiguousarray(arr)


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
    load_weights(model, state["model"], path)
    return cfg, model.eval(), postprocessor


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

    def infer_options(self, size: Optional[int] = None, rescale: Optional[str] = None,
                      object_size: Optional[float] = None, tile_overlap: Optional[float] = None,
                      max_detections: Optional[int] = None) -> InferOptions:
        """The options of one call: each argument, or the ``cfg.infer`` value where it is ``None``
        (``size`` 0: ``data.eval_size``). :class:`InputError` (one line naming it) for a bad one."""
        c = self.cfg.infer
        pick = lambda value, default: default if value is None else value  # noqa: E731
        opts = InferOptions(size=pick(size, c.size), rescale=pick(rescale, c.rescale),
                            object_size=pick(object_size, c.object_size), tile_overlap=pick(tile_overlap, c.tile_overlap),
                            max_detections=pick(max_detections, c.max_detections))
        opts.check()
        opts = replace(opts, size=opts.size or self.cfg.data.eval_size)
        limit = self.max_pixels or DEFAULT_MAX_PIXELS
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
        sh, sw = max(1, round(h * scale)), max(1, round(w * scale))
        self._check_scaled_pixels(opts, scale, sh, sw)
        grid = tile_grid(sh, sw, opts.size, opts.tile_overlap)
        if len(grid) > MAX_TILES:
            raise InputError(f"tile_overlap={opts.tile_overlap:g} with size={opts.size} cuts the {sw}x{sh} px scaled query "
                             f"into {len(grid)} tiles, over {MAX_TILES}: use a smaller overlap or a larger size")
        image = to_tensor(resize(array, (sh, sw)))
        boxes, scores, index = [], [], []
        step = self.cfg.infer.tile_batch
        for start in range(0, len(grid), step):
            tiles = grid.tiles[start:start + step].tolist()
            crops = [image[:, y0:y1, x0:x1] for x0, y0, x1, y1 in tiles]
            for i, r in enumerate(self._forward(crops, shots, [(y1 - y0, x1 - x0) for x0, y0, x1, y1 in tiles])):
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
        limit = self.max_pixels or DEFAULT_MAX_PIXELS
        if sh * sw > limit:
            raise InputError(f"rescale={opts.rescale}: the query scaled by {scale:.3g} would be {sw}x{sh} pixels, "
                             f"over the limit of {limit / 1e6:g} megapixels (is the exemplar box far smaller than "
                             f"object_size={opts.object_size:g}?)")

    @torch.no_grad()
    def predict_batch(self, query_images: Sequence[ImageLike], support_images, support_boxes=None,
                      score_threshold: float = 0.3, *, support_box: Optional[Sequence[float]] = None,
                      size: Optional[int] = None, rescale: Optional[str] = None, object_size: Optional[float] = None,
                      tile_overlap: Optional[float] = None, max_detections: Optional[int] = None) -> list[dict]:
        """Several query images, ``k >= 1`` exemplars of one class (:meth:`prepare_supports` says how
        ``support_images`` and ``support_boxes`` pair up; ``support_box`` is the one-exemplar
        spelling of ``support_boxes``). Returns one dict per query image: ``{"width", "height",
        "scale", "tiles", "detections": [{"bbox": [x, y, w, h], "score"}]}`` (pixels of the original
        image, highest score first; ``scale``: the factor applied to the query; ``tiles``: how many
        tiles it was cut into). One exemplar is the one-shot model, unchanged.

        ``size``, ``rescale``, ``object_size``, ``tile_overlap``, ``max_detections``: as in
        :class:`detector.config.InferConfig` (``None``: the ``cfg.infer`` value). ``fit`` (the
        default) runs all query images in one forward pass; ``exemplar`` and ``native`` scale each
        query and cut it into tiles of side ``size`` when it is larger.
        """
        if support_box is not None:
            if support_boxes is not None:
                raise InputError("give support_box (one exemplar) or support_boxes, not both")
            support_boxes = support_box
        opts = self.infer_options(size, rescale, object_size, tile_overlap, max_detections)
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

    def check(self) -> None:
        """:class:`InputError` (one line naming the option) for a value outside its range."""
        number = lambda v: isinstance(v, (int, float, np.number)) and not isinstance(v, bool)  # noqa: E731
        integer = lambda v: isinstance(v, (int, np.integer)) and not isinstance(v, bool)  # noqa: E731
        checks = [
            ("size", integer(self.size) and (self.size == 0 or self.size >= MIN_INFER_SIZE),
             f"an integer >= {MIN_INFER_SIZE} (pixels), or 0 for data.eval_size"),
            ("rescale", self.rescale in RESCALE_MODES, f"one of {', '.join(RESCALE_MODES)}"),
            ("object_size", number(self.object_size) and 0 <= self.object_size < math.inf,
             "a finite number >= 0 (pixels; 0: not known)"),
            ("tile_overlap", number(self.tile_overlap) and 0 <= self.tile_overlap < 1, "a number in [0, 1)"),
            ("max_detections", integer(self.max_detections) and self.max_detections >= 1, "an integer >= 1"),
        ]
        for name, ok, expected in checks:
            if not ok:
                raise InputError(f"{name}: expected {expected}, got {getattr(self, name)!r}")
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


def pair_supports(support_images, support_boxes=None) -> tuple[list, list]:
    """``(images, boxes)``, one entry per exemplar, by the rules of
    :meth:`OneShotDetector.prepare_supports`; :class:`InputError` when they do not pair up."""
    images = list(support_images) if isinstance(support_images, (list, tuple)) else [support_images]
    if not images:
        raise InputError("no support image: give one, or a list of k >= 1")
    if support_boxes is None:
        boxes = [None] * len(images)
    elif _is_box(support_boxes):
        boxes = [support_boxes]
    else:
        boxes = list(support_boxes)
    if len(images) == 1 and len(boxes) > 1:
        images = images * len(boxes)
    if not boxes or len(boxes) != len(images):
        raise InputError(f"{len(images)} support images but {len(boxes)} support boxes: give one box per "
                         f"support image, or several boxes for one support image")
    return images, boxes


def _result(found: dict, score_threshold: float) -> dict:
    """``{"height", "width", "scale", "tiles", "boxes" [K, 4] xyxy, "scores" [K]}`` -> a result entry
    (detections scoring at least ``score_threshold``, ``bbox`` as ``[x, y, w, h]``)."""
    keep = found["scores"] >= score_threshold
    boxes = box_xyxy_to_xywh(found["boxes"][keep])
    dets = [{"bbox": [round(float(v), 2) for v in b], "score": round(float(s), 4)}
            for b, s in zip(boxes, found["scores"][keep])]
    return {"width": int(found["width"]), "height": int(found["height"]), "scale": round(float(found["scale"]), 6),
            "tiles": int(found["tiles"]), "detections": dets}


def _is_box(value) -> bool:
    """One ``(x, y, w, h)`` box (four numbers), as opposed to a list of boxes."""
    return (isinstance(value, (list, tuple, np.ndarray)) and len(value) == 4
            and all(isinstance(v, (int, float, np.number)) for v in value))


__all__ = ["OneShotDetector", "InferOptions", "RESCALE_MODES", "pair_supports", "InputError", "CheckpointError", "DEFAULT_MAX_PIXELS", "load_image", "load_model",
           "crop_exemplar"]
