"""Tiling geometry of large query images: the tile grid, each tile's owned region, the merge.

A query image of ``H x W`` pixels (after its rescale) that is larger than the working size ``S`` in
either dimension is cut into ``S x S`` tiles (as long as the image along a dimension shorter than
``S``) overlapping by ``round(overlap * S)`` pixels; the last row and column are shifted to end at
the border, so they may overlap their neighbour more. Each tile *owns* a core: the strip two
neighbours share is split at its middle, so that the owned regions partition the image. A detection
is kept only by the tile owning its centre (an object near a tile's edge is seen whole by the
neighbour that owns it), then a class-agnostic NMS across tiles removes what is left of an object
cut by a tile's edge. Pure geometry on absolute ``xyxy`` pixel boxes: torch only, no model. The
overlap's range is the ``infer.tile_overlap`` rule (:func:`detector.config.infer_option_ok`).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor
from torchvision.ops import nms

from .config import infer_option_ok


@dataclass
class TileGrid:
    """The tiles of one image, row-major (left to right, then top to bottom).

    Attributes:
        tiles: ``[T, 4]`` long, each tile as ``xyxy`` pixels of the image (``x1``, ``y1`` exclusive).
        owned: ``[T, 4]`` float, each tile's owned region as ``xyxy`` pixels, ``-inf`` / ``inf`` on
            the image's borders; a point ``(x, y)`` is owned when ``x0 <= x < x1`` and ``y0 <= y < y1``.
    """

    tiles: Tensor
    owned: Tensor

    def __len__(self) -> int:
        return int(self.tiles.shape[0])


def tile_starts(length: int, tile: int, overlap: float) -> list[int]:
    """Start offsets of tiles of side ``tile`` along an axis of ``length`` pixels: every
    ``tile - round(overlap * tile)`` pixels (at least 1), the last one ``length - tile`` so that the
    last tile ends at the border; ``[0]`` when ``length <= tile``."""
    if tile < 1 or not infer_option_ok("tile_overlap", overlap):
        raise ValueError(f"tile_starts: tile must be >= 1 and overlap in [0, 1), got {tile}, {overlap}")
    if length <= tile:
        return [0]
    stride = max(1, tile - round(overlap * tile))
    return list(range(0, length - tile, stride)) + [length - tile]


def owned_intervals(starts: list[int], tile: int, length: int) -> list[tuple[float, float]]:
    """``[lo, hi)`` owned by each tile along one axis: neighbours split their shared strip at its
    middle; the first tile's ``lo`` is ``-inf`` and the last one's ``hi`` is ``inf``."""
    ends = [min(s + tile, length) for s in starts]
    cuts = [(starts[i + 1] + ends[i]) / 2 for i in range(len(starts) - 1)]
    return list(zip([-math.inf] + cuts, cuts + [math.inf]))


def tile_grid(height: int, width: int, tile: int, overlap: float) -> TileGrid:
    """The :class:`TileGrid` of an ``height x width`` image cut into ``tile x tile`` tiles that
    overlap by ``overlap`` of ``tile`` (one tile, the whole image, when it fits)."""
    ys, xs = tile_starts(height, tile, overlap), tile_starts(width, tile, overlap)
    th, tw = min(tile, height), min(tile, width)
    own_y, own_x = owned_intervals(ys, tile, height), owned_intervals(xs, tile, width)
    tiles = torch.tensor([[x, y, x + tw, y + th] for y in ys for x in xs], dtype=torch.long)
    owned = torch.tensor([[x0, y0, x1, y1] for (y0, y1) in own_y for (x0, x1) in own_x], dtype=torch.float64)
    return TileGrid(tiles=tiles, owned=owned)


def crop_tiles(image: Tensor, tiles: Tensor) -> tuple[list[Tensor], list[tuple[int, int]]]:
    """``image [C, H, W]`` cut at ``tiles [T, 4]`` (``xyxy`` pixels, ``x1``, ``y1`` exclusive, as in
    :class:`TileGrid`) -> ``(crops, sizes_hw)``: the ``T`` views ``[C, h, w]`` and their ``(h, w)``."""
    boxes = tiles.tolist()
    return [image[:, y0:y1, x0:x1] for x0, y0, x1, y1 in boxes], [(y1 - y0, x1 - x0) for x0, y0, x1, y1 in boxes]


def shift_to_image(boxes_xyxy: Tensor, tile_index: Tensor, tiles: Tensor) -> Tensor:
    """Boxes ``[N, 4]`` (``xyxy`` pixels of their tile ``tile_index [N]``) -> ``xyxy`` pixels of
    the image, given the grid's ``tiles [T, 4]``."""
    offset = tiles[tile_index][:, :2].to(boxes_xyxy.dtype)
    return boxes_xyxy + offset.repeat(1, 2)


def keep_owned(boxes_xyxy: Tensor, tile_index: Tensor, owned: Tensor) -> Tensor:
    """``[N]`` bool: whether each box's centre lies in the owned region of the tile that found it.
    ``boxes_xyxy [N, 4]`` in image pixels, ``tile_index [N]``, ``owned [T, 4]``."""
    centre = (boxes_xyxy[:, :2] + boxes_xyxy[:, 2:]).double() / 2
    region = owned[tile_index]
    return ((centre >= region[:, :2]) & (centre < region[:, 2:])).all(dim=1)


def merge_tiles(boxes_xyxy: Tensor, scores: Tensor, tile_index: Tensor, owned: Tensor, iou: float,
                max_detections: int) -> tuple[Tensor, Tensor]:
    """The detections of all tiles of one image as one list: the owned ones (:func:`keep_owned`),
    then a class-agnostic NMS at ``iou`` (0: none), then the ``max_detections`` best.

    Args:
        boxes_xyxy: ``[N, 4]`` image pixels; scores: ``[N]``; tile_index: ``[N]`` long.
        owned: ``[T, 4]`` of the :class:`TileGrid`.

    Returns:
        ``(boxes [K, 4], scores [K])``, highest score first, ``K <= max_detections``.
    """
    keep = keep_owned(boxes_xyxy, tile_index, owned)
    boxes, scores = boxes_xyxy[keep], scores[keep]
    order = nms(boxes.float(), scores.float(), iou) if iou > 0 else scores.argsort(descending=True)
    order = order[:max_detections]
    return boxes[order], scores[order]


__all__ = ["TileGrid", "tile_starts", "owned_intervals", "tile_grid", "crop_tiles", "shift_to_image", "keep_owned",
           "merge_tiles"]
