"""Pascal VOC annotation files (one XML per image) read into COCO conventions.

Boxes: VOC's 1-based inclusive corners ``(xmin, ymin, xmax, ymax)`` become COCO
``[xmin - 1, ymin - 1, xmax - xmin + 1, ymax - ymin + 1]`` (absolute pixels, ``xywh``).
Used by ``datasets/prepare_voc.py`` and the real-photo benchmark (:mod:`detector.data.realphoto`).
"""
from __future__ import annotations

import xml.etree.ElementTree as ET
from typing import Collection, Optional


def _text(node, path: str, tag: str) -> str:
    child = node.find(tag)
    if child is None or child.text is None or not child.text.strip():
        raise ValueError(f"{path}: missing <{tag}>")
    return child.text.strip()


def _number(node, path: str, tag: str) -> float:
    text = _text(node, path, tag)
    try:
        return float(text)
    except ValueError:
        raise ValueError(f"{path}: <{tag}> is not a number: {text!r}") from None


def voc_box_to_xywh(xmin: float, ymin: float, xmax: float, ymax: float) -> list[float]:
    """VOC corners (1-based, inclusive, pixels) -> COCO ``[x, y, w, h]`` (0-based, pixels)."""
    return [xmin - 1.0, ymin - 1.0, xmax - xmin + 1.0, ymax - ymin + 1.0]


def parse_voc_xml(path: str, classes: Optional[Collection[str]] = None) -> dict:
    """One VOC annotation file -> ``{"file_name", "width", "height", "objects": [{"name", "bbox"
    (COCO xywh pixels, :func:`voc_box_to_xywh`), "difficult" (0/1)}]}``.

    ``classes``: the object names allowed (``None``: any). ``ValueError`` naming the file for
    malformed XML, a missing field, a name outside ``classes`` or an inverted box."""
    try:
        root = ET.parse(path).getroot()
    except ET.ParseError as e:
        raise ValueError(f"{path}: not valid XML ({e})") from None
    size = root.find("size")
    if size is None:
        raise ValueError(f"{path}: missing <size>")
    out = {"file_name": _text(root, path, "filename"), "width": int(_number(size, path, "width")),
           "height": int(_number(size, path, "height")), "objects": []}
    for obj in root.findall("object"):
        name = _text(obj, path, "name")
        if classes is not None and name not in classes:
            raise ValueError(f"{path}: unknown VOC class {name!r}")
        box = obj.find("bndbox")
        if box is None:
            raise ValueError(f"{path}: object {name!r} has no <bndbox>")
        x0, y0, x1, y1 = (_number(box, path, t) for t in ("xmin", "ymin", "xmax", "ymax"))
        if x1 < x0 or y1 < y0:
            raise ValueError(f"{path}: object {name!r} has an inverted box {[x0, y0, x1, y1]}")
        difficult = obj.find("difficult")
        flag = int(difficult.text.strip()) if difficult is not None and difficult.text and difficult.text.strip() else 0
        out["objects"].append({"name": name, "bbox": voc_box_to_xywh(x0, y0, x1, y1), "difficult": 1 if flag else 0})
    return out
