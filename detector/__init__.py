"""One-shot object detection with indirect attention (a DETR whose keys come from the exemplar and
whose values come from the image searched)."""

__version__ = "0.1.0"
