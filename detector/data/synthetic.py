"""The synthetic one-shot benchmark: procedural images written to disk as JPEG + COCO JSON.

It goes through exactly the code path of COCO (:class:`detector.data.CocoIndex` and the one-shot
datasets). Design:

* 64 categories = 8 shapes x 8 fill patterns (:func:`detector.data.splits.synthetic_categories`);
  a category's identity is its shape *and* its pattern, never a colour: both pattern colours are
  drawn anew for every instance. Split 48 seen / 16 unseen (:func:`~detector.data.splits.synthetic_split`).
* Each image: a cluttered background (smooth colour field, lines, blobs, and distractor polygons
  filled with the same patterns), then instances of 2 to 4 categories (1 to 3 each). Instances
  vary in size (``24..120`` px at 256 px, a 5x range, scaled with the image size), rotation
  (pattern rotates with the shape), colours, shading and occlusion (later instances may hide up
  to half of earlier ones). Boxes are the visible pixels' extent; ``area`` the visible pixels.
* Training images hold seen categories only (unseen categories are never shown in training);
  validation and test images draw from all 64. ``val`` is for choosing settings, ``test`` (as many
  images as ``val``, from its own random stream) for the numbers we report.
* Deterministic: image ``i`` of split ``s`` (train 0, val 1, test 2) uses
  ``default_rng([seed, s, i])``, whatever the number of worker processes; adding the test split
  left the train and val images as they were.
* Option ``train_colours="image"`` (a benchmark of its own, recorded in ``meta.json``): in a
  *training* image, all instances of one category share their two colours (drawn per image and
  category from ``default_rng([seed, 0, i, COLOUR_STREAM])``, each instance within +-12 of them),
  as the instances of one kind in one photo do; across images the colours still differ. The
  images are otherwise those of the default (the main stream draws the same numbers), and ``val``
  and ``test`` are the default's, byte for byte.
"""
from __future__ import annotations

import json
import multiprocessing as mp
import os
import shutil
import time
from dataclasses import dataclass
from typing import Optional

import cv2
import numpy as np
from PIL import Image

from ..config import SYNTHETIC_TRAIN_COLOURS
from ..errors import InputError
from .folders import partial_folder, publish_folder
from .splits import SYNTHETIC_PATTERNS, SYNTHETIC_SHAPES, synthetic_categories, synthetic_split

VERSION = 2


@dataclass(frozen=True)
class SyntheticSize:
    """Number of training / validation images and their side in pixels."""

    num_train: int
    num_val: int
    image_size: int


SIZES = {
    "tiny": SyntheticSize(64, 48, 128),  # tests: about a second
    "small": SyntheticSize(3000, 450, 256),  # the CPU demo
    "full": SyntheticSize(20000, 2000, 256),
}
OBJECT_SIZE_RANGE = (24.0, 120.0)  # object diameter in pixels at an image side of 256
SPLIT_CODES = {"train": 0, "val": 1, "test": 2}  # each split's own random stream
COLOUR_STREAM = 11  # the random stream of the per-image category colours, apart from the image's
COLOUR_JITTER = 12.0  # an instance's colours within +- this of its image's category colours
EVAL_SPLITS = ("val", "test")  # both hold all categories and as many images


def _polygon(points) -> np.ndarray:
    return np.asarray(points, dtype=np.float64)


def _regular(n: int, radius: float, start: float = np.pi / 2, centre=(0.0, 0.0)) -> np.ndarray:
    a = start + 2 * np.pi * np.arange(n) / n
    return np.stack([centre[0] + radius * np.cos(a), centre[1] - radius * np.sin(a)], axis=1)


def _star() -> np.ndarray:
    a = np.pi / 2 + np.pi * np.arange(10) / 5
    r = np.where(np.arange(10) % 2 == 0, 0.95, 0.4)
    return np.stack([r * np.cos(a), -r * np.sin(a)], axis=1)


def _halfdisc() -> np.ndarray:
    a = np.linspace(0, np.pi, 33)
    return np.stack([0.95 * np.cos(a), 0.35 - 0.95 * np.sin(a)], axis=1)


_ARM = 0.3
# Shape outlines in unit coordinates (x right, y down, inside the unit circle): (filled polygons, holes).
SHAPE_POLYGONS: dict[str, tuple[list[np.ndarray], list[np.ndarray]]] = {
    "circle": ([_regular(64, 0.95)], []),
    "square": ([_polygon([(-0.7, -0.7), (0.7, -0.7), (0.7, 0.7), (-0.7, 0.7)])], []),
    "triangle": ([_regular(3, 0.95)], []),
    "star": ([_star()], []),
    "cross": ([_polygon([(-_ARM, -0.95), (_ARM, -0.95), (_ARM, -_ARM), (0.95, -_ARM), (0.95, _ARM), (_ARM, _ARM),
                         (_ARM, 0.95), (-_ARM, 0.95), (-_ARM, _ARM), (-0.95, _ARM), (-0.95, -_ARM), (-_ARM, -_ARM)])], []),
    "ring": ([_regular(64, 0.95)], [_regular(48, 0.5)]),
    "halfdisc": ([_halfdisc()], []),
    "bowtie": ([_polygon([(-0.95, -0.8), (-0.95, 0.8), (0.12, 0.0)]), _polygon([(0.95, -0.8), (0.95, 0.8), (-0.12, 0.0)])], []),
}
assert tuple(SHAPE_POLYGONS) == SYNTHETIC_SHAPES


def pattern_selector(pattern: str, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Bool map choosing the second colour, from the object-frame coordinates ``u, v`` (the unit
    circle is the object; the pattern scales and rotates with it)."""
    if pattern == "solid":
        return np.zeros(u.shape, dtype=bool)
    if pattern == "stripes":
        return np.floor((u + 8.0) * 3.0) % 2 == 1
    if pattern == "checker":
        return (np.floor((u + 8.0) * 2.5) + np.floor((v + 8.0) * 2.5)) % 2 == 1
    if pattern == "dots":
        fu, fv = (u * 2.5 + 50.0) % 1.0 - 0.5, (v * 2.5 + 50.0) % 1.0 - 0.5
        return fu * fu + fv * fv < 0.09
    if pattern == "bullseye":
        return np.floor(np.sqrt(u * u + v * v) * 5.0) % 2 == 1
    if pattern == "grid":
        return (np.abs((u * 2.5 + 50.0) % 1.0 - 0.5) > 0.36) | (np.abs((v * 2.5 + 50.0) % 1.0 - 0.5) > 0.36)
    if pattern == "twotone":
        return u > 0
    if pattern == "pinwheel":
        return np.floor((np.arctan2(v, u) + np.pi) / (np.pi / 4)) % 2 == 1
    raise ValueError(f"unknown pattern {pattern!r}")


assert all(pattern_selector(p, np.zeros(1), np.zeros(1)).shape == (1,) for p in SYNTHETIC_PATTERNS)


def _colours(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Two random, clearly different colours (float RGB)."""
    c1 = rng.uniform(0, 255, 3)
    for _ in range(20):
        c2 = rng.uniform(0, 255, 3)
        if np.abs(c1 - c2).sum() >= 180:
            return c1, c2
    return c1, 255.0 - c1


def render_object(shape_polys: tuple[list, list], pattern: str, diameter: float, angle: float,
                  rng: np.random.Generator, fixed_colours: Optional[tuple[np.ndarray, np.ndarray]] = None
                  ) -> tuple[np.ndarray, np.ndarray]:
    """One object on a ``D x D`` canvas (``D = ceil(diameter) + 2``): ``(mask [D, D] bool,
    colours [D, D, 3] float32)``, rotated by ``angle`` (radians), random shading, and random
    colours unless ``fixed_colours`` (two float RGB) are given (``rng`` draws the same numbers either way)."""
    side = int(np.ceil(diameter)) + 2
    half, radius = side / 2.0, diameter / 2.0
    rot = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    mask = np.zeros((side, side), np.uint8)
    polys, holes = shape_polys
    to_px = lambda p: np.round(((p @ rot.T) * radius + half) * 16).astype(np.int32)  # noqa: E731 (4-bit subpixel)
    cv2.fillPoly(mask, [to_px(p) for p in polys], 1, lineType=cv2.LINE_8, shift=4)
    if holes:
        cv2.fillPoly(mask, [to_px(p) for p in holes], 0, lineType=cv2.LINE_8, shift=4)
    coords = (np.arange(side, dtype=np.float32) + 0.5 - half) / radius
    x, y = coords[None, :], coords[:, None]
    u = np.cos(angle) * x + np.sin(angle) * y  # inverse rotation: the pattern turns with the shape
    v = -np.sin(angle) * x + np.cos(angle) * y
    c1, c2 = _colours(rng)
    if fixed_colours is not None:
        c1, c2 = fixed_colours
    select = pattern_selector(pattern, u, v)
    colours = np.where(select[..., None], c2.astype(np.float32), c1.astype(np.float32))
    light = rng.normal(size=2) * 0.12
    colours = colours * (1.0 + light[0] * x + light[1] * y)[..., None]
    return mask.astype(bool), colours


_NOISE: dict[int, np.ndarray] = {}


def _noise_table(size: int) -> np.ndarray:
    """A fixed Gaussian noise texture (sigma 3) at least twice ``size``; images take random windows
    of it (drawing fresh noise per image would dominate the generation time)."""
    side = max(512, 2 * size)
    if side not in _NOISE:
        _NOISE[side] = np.random.default_rng(20250).normal(0.0, 3.0, (side, side, 3)).astype(np.float32)
    return _NOISE[side]


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    field = cv2.resize(rng.uniform(0, 255, (4, 4, 3)).astype(np.float32), (size, size), interpolation=cv2.INTER_LINEAR)
    canvas = np.ascontiguousarray(np.clip(field, 0, 255).astype(np.uint8))
    for _ in range(int(rng.integers(4, 10))):
        centre = tuple(int(v) for v in rng.integers(0, size, 2))
        axes = tuple(int(v) for v in rng.integers(size // 40 + 1, size // 7 + 2, 2))
        cv2.ellipse(canvas, centre, axes, float(rng.uniform(0, 180)), 0, 360, rng.uniform(0, 255, 3).tolist(), -1)
    for _ in range(int(rng.integers(8, 20))):
        p0, p1 = rng.integers(0, size, 2), rng.integers(0, size, 2)
        cv2.line(canvas, tuple(int(v) for v in p0), tuple(int(v) for v in p1), rng.uniform(0, 255, 3).tolist(),
                 int(rng.integers(1, 4)))
    return canvas.astype(np.float32)


def render_image(rng: np.random.Generator, size: int, category_ids: list[int],
                 colour_rng: Optional[np.random.Generator] = None) -> tuple[np.ndarray, list[dict]]:
    """One image: ``(uint8 [size, size, 3], annotations)`` with annotation dicts
    ``{"category_id", "bbox": [x, y, w, h], "area"}`` (visible pixels). With ``colour_rng`` the
    instances of a category share its colours, drawn from ``colour_rng`` (module docstring)."""
    canvas = _background(rng, size)
    lo, hi = (s * size / 256.0 for s in OBJECT_SIZE_RANGE)
    for _ in range(int(rng.integers(2, 6))):  # distractors: random polygons with the categories' patterns
        n = int(rng.integers(5, 9))
        radii = rng.uniform(0.45, 0.95, n)
        ang = np.sort(rng.uniform(0, 2 * np.pi, n))
        poly = np.stack([radii * np.cos(ang), radii * np.sin(ang)], axis=1)
        d = float(np.exp(rng.uniform(np.log(lo), np.log(hi))))
        mask, colours = render_object(([poly], []), str(rng.choice(SYNTHETIC_PATTERNS)), d, 0.0, rng)
        y0, x0 = (int(v) for v in rng.integers(0, size - mask.shape[0] + 1, 2))
        region = canvas[y0:y0 + mask.shape[0], x0:x0 + mask.shape[1]]
        region[mask] = colours[mask]
    chosen = rng.choice(category_ids, size=min(int(rng.integers(2, 5)), len(category_ids)), replace=False)
    todo = [int(c) for c in chosen for _ in range(int(rng.integers(1, 4)))]
    rng.shuffle(todo)
    owner = np.full((size, size), -1, np.int32)
    placed: list[tuple[int, int, int, int, int]] = []  # (category, y0, x0, side, full area)
    visible = np.zeros(len(todo), np.int64)
    n_pat = len(SYNTHETIC_PATTERNS)
    shared = {} if colour_rng is None else {c: _colours(colour_rng) for c in sorted(set(todo))}
    for cat in todo:
        shape, pattern = SYNTHETIC_SHAPES[(cat - 1) // n_pat], SYNTHETIC_PATTERNS[(cat - 1) % n_pat]
        for _ in range(12):  # bounded placement retries; an instance that never fits is skipped
            d = float(np.exp(rng.uniform(np.log(lo), np.log(hi))))
            own = None
            if cat in shared:
                own = tuple(np.clip(c + colour_rng.uniform(-COLOUR_JITTER, COLOUR_JITTER, 3), 0, 255) for c in shared[cat])
            mask, colours = render_object(SHAPE_POLYGONS[shape], pattern, d, float(rng.uniform(0, 2 * np.pi)), rng, own)
            side = mask.shape[0]
            y0, x0 = (int(v) for v in rng.integers(0, size - side + 1, 2))
            covered = owner[y0:y0 + side, x0:x0 + side][mask]
            lost = np.bincount(covered[covered >= 0], minlength=len(placed))[:len(placed)]
            fulls = np.array([p[4] for p in placed], np.int64)
            if len(placed) and np.any(visible[:len(placed)] - lost < 0.5 * fulls):
                continue
            visible[:len(placed)] -= lost
            k = len(placed)
            owner[y0:y0 + side, x0:x0 + side][mask] = k
            canvas[y0:y0 + side, x0:x0 + side][mask] = colours[mask]
            visible[k] = int(mask.sum())
            placed.append((cat, y0, x0, side, int(mask.sum())))
            break
    for _ in range(int(rng.integers(0, 3))):  # thin lines over everything: mild occlusion
        p0, p1 = rng.integers(0, size, 2), rng.integers(0, size, 2)
        cv2.line(canvas, tuple(int(v) for v in p0), tuple(int(v) for v in p1), rng.uniform(0, 255, 3).tolist(), 1)
    noise = _noise_table(size)
    oy, ox = (int(v) for v in rng.integers(0, noise.shape[0] - size + 1, 2))
    canvas += noise[oy:oy + size, ox:ox + size]
    annotations = []
    for k, (cat, y0, x0, side, _) in enumerate(placed):
        ys, xs = np.nonzero(owner[y0:y0 + side, x0:x0 + side] == k)
        bx, by = x0 + int(xs.min()), y0 + int(ys.min())
        annotations.append({"category_id": cat, "bbox": [bx, by, x0 + int(xs.max()) + 1 - bx, y0 + int(ys.max()) + 1 - by],
                            "area": int(len(ys))})
    return np.clip(canvas, 0, 255).astype(np.uint8), annotations


def _render_and_write(job: tuple) -> list[dict]:
    seed, split_code, index, size, category_ids, path, colours = job
    colour_rng = np.random.default_rng([seed, split_code, index, COLOUR_STREAM]) if colours == "image" else None
    image, annotations = render_image(np.random.default_rng([seed, split_code, index]), size, category_ids, colour_rng)
    Image.fromarray(image).save(path, quality=95)
    return annotations


def _write_split(root: str, split: str, split_code: int, count: int, size: int, category_ids: list[int],
                 seed: int, workers: int, colours: str = "instance") -> None:
    image_dir = os.path.join(root, "images", split)
    os.makedirs(image_dir, exist_ok=True)
    jobs = [(seed, split_code, i, size, category_ids, os.path.join(image_dir, f"{i + 1:06d}.jpg"), colours)
            for i in range(count)]
    if workers > 1 and count > 64:
        # forkserver, not fork: a forked child inherits the parent's OpenCV thread pool mid-state
        # and can hang in its first cv2 call once the parent has used cv2 (the pasted-patch set does).
        with mp.get_context("forkserver").Pool(workers, initializer=cv2.setNumThreads, initargs=(1,)) as pool:
            results = pool.map(_render_and_write, jobs, chunksize=32)
    else:
        results = [_render_and_write(job) for job in jobs]
    images, annotations = [], []
    for i, anns in enumerate(results):
        images.append({"id": i + 1, "file_name": f"{i + 1:06d}.jpg", "width": size, "height": size})
        for a in anns:
            annotations.append({"id": len(annotations) + 1, "image_id": i + 1, "iscrowd": 0, **a})
    data = {"info": {"description": f"synthetic one-shot benchmark ({split})", "version": VERSION, "seed": seed},
            "images": images, "annotations": annotations, "categories": synthetic_categories()}
    os.makedirs(os.path.join(root, "annotations"), exist_ok=True)
    with open(os.path.join(root, "annotations", f"{split}.json"), "w", encoding="utf-8") as f:
        json.dump(data, f)


def generate_synthetic(root: str, size: str = "small", seed: int = 0, workers: int = 2,
                       num_train: Optional[int] = None, num_val: Optional[int] = None,
                       image_size: Optional[int] = None, train_colours: str = "instance") -> dict:
    """Write the benchmark to ``root`` (``images/{train,val,test}/*.jpg``,
    ``annotations/{train,val,test}.json``, ``meta.json``), overwriting what is there.

    Args:
        root: output folder.
        size: ``"tiny"`` | ``"small"`` | ``"full"`` (:data:`SIZES`); ``num_train``, ``num_val``,
            ``image_size`` override its numbers.
        seed: generation seed.
        workers: processes used to render (the output does not depend on it).
        train_colours: ``"instance"`` (each instance its own colours) or ``"image"`` (a training
            image's instances of one category share theirs; module docstring).

    Returns:
        The ``meta.json`` content (size, seed, counts, version, training colours, seconds taken).
    """
    if size not in SIZES:
        raise InputError(f"unknown synthetic size {size!r}; expected one of {list(SIZES)}")
    if train_colours not in SYNTHETIC_TRAIN_COLOURS:
        raise InputError(f"unknown synthetic training colours {train_colours!r}; expected one of {list(SYNTHETIC_TRAIN_COLOURS)}")
    spec = SIZES[size]
    n_train = spec.num_train if num_train is None else num_train
    n_val = spec.num_val if num_val is None else num_val
    side = spec.image_size if image_size is None else image_size
    start = time.time()
    split = synthetic_split()
    _write_split(root, "train", SPLIT_CODES["train"], n_train, side, list(split.seen_ids), seed, workers, train_colours)
    for name in EVAL_SPLITS:
        _write_split(root, name, SPLIT_CODES[name], n_val, side, list(split.seen_ids + split.unseen_ids), seed, workers)
    meta = {"size": size, "seed": seed, "version": VERSION, "num_train": n_train, "num_val": n_val,
            "num_test": n_val, "image_size": side, "train_colours": train_colours, "seconds": round(time.time() - start, 2)}
    with open(os.path.join(root, "meta.json"), "w", encoding="utf-8") as f:
        json.dump(meta, f, indent=1)
    return meta


def _add_test_split(root: str, meta: dict, workers: int, verbose: bool) -> None:
    """Write the ``test`` split into a benchmark made before it existed (its train and val images
    are those the current generator makes); written aside, then moved into place."""
    if verbose:
        print(f"adding the test split to {root} ...", flush=True)
    split = synthetic_split()
    tmp = f"{root.rstrip(os.sep)}.test-partial-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    _write_split(tmp, "test", SPLIT_CODES["test"], int(meta["num_val"]), int(meta["image_size"]),
                 list(split.seen_ids + split.unseen_ids), int(meta["seed"]), workers)
    try:
        os.rename(os.path.join(tmp, "images", "test"), os.path.join(root, "images", "test"))
        os.replace(os.path.join(tmp, "annotations", "test.json"), os.path.join(root, "annotations", "test.json"))
    except OSError:
        if not os.path.isfile(os.path.join(root, "annotations", "test.json")):  # not another process's doing
            raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    meta["num_test"] = meta["num_val"]
    with open(os.path.join(root, "meta.json"), "w", encoding="utf-8") as f:
        json.dump(meta, f, indent=1)


def build_synthetic(root: str, size: str = "small", seed: int = 0, workers: int = 2, verbose: bool = True,
                    train_colours: str = "instance") -> str:
    """Make sure ``root`` holds the synthetic benchmark of this ``size``, ``seed`` and
    ``train_colours``; generate it if missing (into a temporary folder renamed into place, so
    concurrent callers are safe).

    Raises:
        InputError (a ValueError): ``root`` exists but holds something else (another size / seed /
        training colours, or other data).
    """
    meta_path = os.path.join(root, "meta.json")
    if os.path.isfile(meta_path):
        with open(meta_path, "r", encoding="utf-8") as f:
            meta = json.load(f)
        found = (meta.get("size"), meta.get("seed"), meta.get("version"), meta.get("train_colours", "instance"))
        if found != (size, seed, VERSION, train_colours):
            raise InputError(f"{root} holds the synthetic benchmark size={found[0]} seed={found[1]} version={found[2]} "
                             f"train_colours={found[3]}, not size={size} seed={seed} version={VERSION} "
                             f"train_colours={train_colours}; delete the folder or choose another data.root")
        if "num_test" not in meta:
            _add_test_split(root, meta, workers, verbose)
        return root
    if os.path.isdir(root) and os.listdir(root):
        raise InputError(f"{root} exists and is not a synthetic benchmark (no meta.json); choose another data.root")
    tmp = partial_folder(root)
    if verbose:
        print(f"generating the synthetic benchmark ({size}, seed {seed}, training colours per {train_colours}) "
              f"into {root} ...", flush=True)
    meta = generate_synthetic(tmp, size, seed, workers, train_colours=train_colours)
    publish_folder(tmp, root)
    if verbose:
        print(f"done in {meta['seconds']} s", flush=True)
    return root
