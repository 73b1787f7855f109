"""Seen / unseen category splits, each defined once.

* COCO (docs/PAPER_NOTES.md section 4): number the 80 categories 1..80 in ascending category-id order;
  split ``k`` (1..4) holds out as unseen the 20 categories whose number ``i`` has
  ``i % 4 == k % 4``; the other 60 are seen.
* VOC: unseen = aeroplane, cat, cow, sheep; the other 16 classes are seen.
* Synthetic (this repository's benchmark): 64 categories = 8 shapes x 8 patterns, category id
  ``1 + 8 * shape_index + pattern_index``. Unseen = the 16 categories with
  ``(pattern_index - shape_index) % 4 == 0``: every shape and every pattern occurs in two unseen
  categories, so an unseen category is a new *combination* of a known shape and a known pattern,
  and only the exemplar says which combination is asked for. Seen = the other 48.
* Custom: a small file listing the unseen categories (names or ids), see :func:`custom_split`.

A :class:`Split` is turned into the ``split_info`` dict of :func:`detector.data.build_datasets`
by :meth:`Split.to_info`.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Mapping

import yaml

from ..errors import InputError
# (category id, name) of the 80 COCO 2017 detection categories.
COCO_CATEGORIES: tuple[tuple[int, str], ...] = (
    (1, "person"), (2, "bicycle"), (3, "car"), (4, "motorcycle"), (5, "airplane"), (6, "bus"),
    (7, "train"), (8, "truck"), (9, "boat"), (10, "traffic light"), (11, "fire hydrant"),
    (13, "stop sign"), (14, "parking meter"), (15, "bench"), (16, "bird"), (17, "cat"), (18, "dog"),
    (19, "horse"), (20, "sheep"), (21, "cow"), (22, "elephant"), (23, "bear"), (24, "zebra"),
    (25, "giraffe"), (27, "backpack"), (28, "umbrella"), (31, "handbag"), (32, "tie"),
    (33, "suitcase"), (34, "frisbee"), (35, "skis"), (36, "snowboard"), (37, "sports ball"),
    (38, "kite"), (39, "baseball bat"), (40, "baseball glove"), (41, "skateboard"),
    (42, "surfboard"), (43, "tennis racket"), (44, "bottle"), (46, "wine glass"), (47, "cup"),
    (48, "fork"), (49, "knife"), (50, "spoon"), (51, "bowl"), (52, "banana"), (53, "apple"),
    (54, "sandwich"), (55, "orange"), (56, "broccoli"), (57, "carrot"), (58, "hot dog"),
    (59, "pizza"), (60, "donut"), (61, "cake"), (62, "chair"), (63, "couch"), (64, "potted plant"),
    (65, "bed"), (67, "dining table"), (70, "toilet"), (72, "tv"), (73, "laptop"), (74, "mouse"),
    (75, "remote"), (76, "keyboard"), (77, "cell phone"), (78, "microwave"), (79, "oven"),
    (80, "toaster"), (81, "sink"), (82, "refrigerator"), (84, "book"), (85, "clock"), (86, "vase"),
    (87, "scissors"), (88, "teddy bear"), (89, "hair drier"), (90, "toothbrush"),
)

# The 20 Pascal VOC classes in their usual (alphabetical) order; prepare_voc.py numbers them 1..20.
VOC_CLASSES: tuple[str, ...] = (
    "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train",
    "tvmonitor",
)
VOC_UNSEEN: tuple[str, ...] = ("aeroplane", "cat", "cow", "sheep")

SYNTHETIC_SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "star", "cross", "ring", "halfdisc", "bowtie")
SYNTHETIC_PATTERNS: tuple[str, ...] = ("solid", "stripes", "checker", "dots", "bullseye", "grid", "twotone", "pinwheel")


def synthetic_categories() -> list[dict]:
    """The 64 synthetic categories as COCO category dicts ``{"id", "name", "supercategory"}``;
    ``id = 1 + 8 * shape_index + pattern_index``, ``name = "<shape>-<pattern>"``."""
    return [{"id": 1 + 8 * s + p, "name": f"{shape}-{pattern}", "supercategory": shape}
            for s, shape in enumerate(SYNTHETIC_SHAPES) for p, pattern in enumerate(SYNTHETIC_PATTERNS)]


@dataclass(frozen=True)
class Split:
    """A seen / unseen partition of (a subset of) a dataset's categories.

    Attributes:
        name: human-readable name, e.g. ``"coco split 2"``.
        seen_ids: category ids used for training (and evaluated as "seen"), ascending.
        unseen_ids: held-out category ids (evaluated as "unseen"), ascending.
        names: category id -> name, for every id in the dataset.
    """

    name: str
    seen_ids: tuple[int, ...]
    unseen_ids: tuple[int, ...]
    names: Mapping[int, str]

    def __post_init__(self):
        overlap = set(self.seen_ids) & set(self.unseen_ids)
        if overlap:
            raise InputError(f"{self.name}: categories {sorted(overlap)} are both seen and unseen")

    def to_info(self) -> dict:
        """The ``split_info`` dict: ``name``, ``seen_ids``, ``unseen_ids``, ``seen_names``,
        ``unseen_names``, ``category_names`` (id -> name for every evaluated category)."""
        return {
            "name": self.name,
            "seen_ids": list(self.seen_ids),
            "unseen_ids": list(self.unseen_ids),
            "seen_names": [self.names[i] for i in self.seen_ids],
            "unseen_names": [self.names[i] for i in self.unseen_ids],
            "category_names": {i: self.names[i] for i in sorted(self.seen_ids + self.unseen_ids)},
        }


def _as_names(categories: Mapping[int, str] | None, default: tuple[tuple[int, str], ...]) -> dict[int, str]:
    return dict(default) if categories is None else {int(k): str(v) for k, v in categories.items()}


def coco_split(k: int, categories: Mapping[int, str] | None = None) -> Split:
    """The COCO one-shot split ``k`` (1..4) of docs/PAPER_NOTES.md section 4.

    Args:
        k: split number, 1..4.
        categories: id -> name of the annotation file (checked to be the 80 COCO categories);
            ``None`` uses :data:`COCO_CATEGORIES`.
    """
    if k not in (1, 2, 3, 4):
        raise InputError(f"COCO split must be 1, 2, 3 or 4, got {k}")
    names = _as_names(categories, COCO_CATEGORIES)
    expected = dict(COCO_CATEGORIES)
    if names != expected:
        missing = sorted(set(expected.items()) - set(names.items()))[:5]
        extra = sorted(set(names.items()) - set(expected.items()))[:5]
        raise InputError(f"the COCO split needs the 80 COCO 2017 categories; missing {missing}, unexpected {extra} "
                         f"(use data.dataset=custom with data.split_file for another category set)")
    ordered = sorted(names)
    unseen = tuple(cid for i, cid in enumerate(ordered, start=1) if i % 4 == k % 4)
    seen = tuple(cid for cid in ordered if cid not in unseen)
    return Split(f"coco split {k}", seen, unseen, names)


def _split_by_names(title: str, names: dict[int, str], expected: tuple[str, ...], unseen_names: tuple[str, ...]) -> Split:
    by_name = {v: k for k, v in names.items()}
    if sorted(by_name) != sorted(expected) or len(by_name) != len(names):
        raise InputError(f"the {title} split needs exactly these categories {list(expected)}; got {sorted(names.values())}")
    unseen = tuple(sorted(by_name[n] for n in unseen_names))
    seen = tuple(sorted(cid for cid in names if cid not in unseen))
    return Split(f"{title} split", seen, unseen, names)


def voc_split(categories: Mapping[int, str] | None = None) -> Split:
    """The VOC one-shot split (unseen: aeroplane, cat, cow, sheep). ``categories``: id -> name of
    the annotation file (must be the 20 VOC classes by name); ``None`` numbers them 1..20."""
    names = {i + 1: n for i, n in enumerate(VOC_CLASSES)} if categories is None else dict(categories)
    return _split_by_names("voc", names, VOC_CLASSES, VOC_UNSEEN)


def synthetic_split(categories: Mapping[int, str] | None = None) -> Split:
    """The synthetic benchmark's fixed 48 / 16 split (module docstring). ``categories``: id -> name
    of the annotation file (checked against :func:`synthetic_categories`)."""
    expected = {c["id"]: c["name"] for c in synthetic_categories()}
    names = expected if categories is None else dict(categories)
    if names != expected:
        raise InputError("the synthetic split needs the 64 synthetic categories (ids 1..64, '<shape>-<pattern>' names); "
                         "regenerate the benchmark with datasets/make_synthetic.py")
    n_patterns = len(SYNTHETIC_PATTERNS)
    unseen = tuple(cid for cid in sorted(names) if (((cid - 1) % n_patterns) - (cid - 1) // n_patterns) % 4 == 0)
    seen = tuple(cid for cid in sorted(names) if cid not in unseen)
    return Split("synthetic split", seen, unseen, names)

def pasted_split(categories: dict[int, str]) -> Split:
    """Seen = the patches of the training images (named ``train-patch-*``), unseen = the others
    (``val-patch-*``, cut from photos training never saw)."""
    names = {int(k): str(v) for k, v in categories.items()}
    seen = tuple(sorted(c for c, n in names.items() if n.startswith("train-")))
    unseen = tuple(sorted(c for c in names if c not in set(seen)))
    return Split("pasted patches", seen, unseen, names)



def _read_split_file(path: str) -> tuple[list, list | None]:
    if not os.path.isfile(path):
        raise InputError(f"data.split_file: split file not found: {path}")
    try:
        with open(path, "r", encoding="utf-8") as f:
            text = f.read()
    except UnicodeDecodeError:
        raise InputError(f"{path}: the split file is not UTF-8 text") from None
    if path.endswith((".json", ".yaml", ".yml")):
        try:
            data = json.loads(text) if path.endswith(".json") else yaml.safe_load(text)
        except (json.JSONDecodeError, yaml.YAMLError) as e:
            raise InputError(f"{path}: cannot parse the split file: {e}") from None
        if not isinstance(data, dict) or not isinstance(data.get("unseen"), list):
            raise InputError(f"{path}: expected a mapping with an 'unseen' list (and optionally a 'seen' list)")
        seen = data.get("seen")
        if seen is not None and not isinstance(seen, list):
            raise InputError(f"{path}: 'seen' must be a list")
        return data["unseen"], seen
    lines = [line.split("#", 1)[0].strip() for line in text.splitlines()]
    return [line for line in lines if line], None


def custom_split(path: str, categories: Mapping[int, str]) -> Split:
    """A user's split of any COCO-format dataset, read from a small file.

    Formats: a text file with one unseen category per line (name or id; ``#`` starts a comment),
    or a JSON / YAML file ``{"unseen": [...], "seen": [...]}`` (``seen`` optional). Without
    ``seen`` every category not listed as unseen is seen; with it, categories in neither list are
    left out entirely. Names are matched exactly, then case-insensitively.

    Args:
        path: the split file.
        categories: id -> name of the annotation file.

    Raises:
        InputError (a ValueError): naming the file and the entry that matches no category, or a
            category listed as both seen and unseen.
    """
    names = {int(k): str(v) for k, v in categories.items()}
    exact = {v: k for k, v in names.items()}
    folded: dict[str, int] = {}
    for k, v in names.items():
        folded.setdefault(v.lower(), k)

    def resolve(entries: list) -> tuple[int, ...]:
        ids = []
        for e in entries:
            if isinstance(e, int) and not isinstance(e, bool):
                cid = e if e in names else None
            elif isinstance(e, str):
                s = e.strip()
                cid = exact.get(s, folded.get(s.lower()))
                if cid is None and s.lstrip("-").isdigit() and int(s) in names:
                    cid = int(s)
            else:
                cid = None
            if cid is None:
                raise InputError(f"{path}: '{e}' is not a category of the annotation file "
                                 f"(known: {', '.join(sorted(names.values())[:10])}...)")
            ids.append(cid)
        return tuple(sorted(set(ids)))

    unseen_entries, seen_entries = _read_split_file(path)
    unseen = resolve(unseen_entries)
    seen = resolve(seen_entries) if seen_entries is not None else tuple(c for c in sorted(names) if c not in unseen)
    both = set(seen) & set(unseen)
    if both:
        raise InputError(f"{path}: categories {[names[c] for c in sorted(both)]} are listed as both seen and unseen")
    if not seen:
        raise InputError(f"{path}: no seen categories left to train on")
    return Split(f"custom split ({os.path.basename(path)})", seen, unseen, names)


def resolve_split(dataset: str, categories: Mapping[int, str], split: int = 1, split_file: str = "") -> Split:
    """The split of ``dataset`` (``"coco"`` | ``"voc"`` | ``"synthetic"`` | ``"pasted"`` | ``"custom"``) over the
    annotation file's ``categories`` (id -> name)."""
    if dataset == "coco":
        return coco_split(split, categories)
    if dataset == "voc":
        return voc_split(categories)
    if dataset == "synthetic":
        return synthetic_split(categories)
    if dataset == "pasted":
        return pasted_split(categories)
    if dataset == "custom":
        if not split_file:
            raise InputError("data.dataset=custom needs data.split_file (a file listing the unseen categories)")
        return custom_split(split_file, categories)
    raise InputError(f"unknown data.dataset {dataset!r}; expected synthetic, pasted, coco, voc or custom")
