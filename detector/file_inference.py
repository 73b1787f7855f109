"""Run a :class:`~detector.inference.OneShotDetector` over image files: what ``tools/infer.py``
does once its options are parsed.

A query is a file or a folder of images. In a folder, an image that cannot be used (corrupt, not
an image, over the pixel limit, too large once rescaled) is skipped and listed with its ``error``;
a single query image that cannot be used is an :class:`InputError`. Results are written atomically
(:func:`detector.utils.atomic.write_json`), one entry per query image in the order of the files:
``{"image", "width", "height", "scale", "tiles", "detections": [{"bbox": [x, y, w, h], "score"}]}``
or ``{"image", "error"}``. Messages name the options of ``tools/infer.py`` (``--query``,
``--output``, ``--visualize``).
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Callable, Optional, Sequence

from .errors import InputError

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")


def list_queries(path: str) -> list[str]:
    """A file, or the image files of a folder (sorted)."""
    if os.path.isdir(path):
        files = sorted(os.path.join(path, f) for f in os.listdir(path) if f.lower().endswith(IMAGE_EXTENSIONS))
        if not files:
            raise InputError(f"--query {path}: no images ({', '.join(IMAGE_EXTENSIONS)}) in the folder")
        return files
    if not os.path.exists(path):
        raise InputError(f"--query {path}: query image not found")
    return [path]


def check_output_paths(output: str, visualize: str = "") -> None:
    """``output`` must name a file and ``visualize`` (if given) a folder, before any work is done."""
    from .utils.output_paths import check_output_file, check_output_path

    check_output_file(output, "--output", "results.json")
    if visualize:
        check_output_path(visualize, "--visualize")


def check_not_inputs(output: str, visualize: str, inputs: Sequence[str]) -> None:
    """No output lands on an input: ``output`` is not one of the ``inputs`` (query and support
    images), and ``visualize`` is not a folder that holds one (pictures there would replace, or
    later be read as, the user's images)."""
    inputs = [os.path.realpath(p) for p in inputs]
    if os.path.realpath(output) in inputs:
        raise InputError(f"--output {output}: is one of the input images; give another file name")
    if visualize:
        folder = os.path.realpath(visualize)
        if any(os.path.dirname(p) == folder for p in inputs):
            raise InputError(f"--visualize {visualize}: holds input images; give another folder")


def picture_names(paths: Sequence[str]) -> dict[str, str]:
    """``{query path: picture file name}``: ``<stem>.png``, or ``<file name>.png`` where several
    queries share a stem (``a.png`` and ``a.jpg``), so that no picture replaces another."""
    stems = [os.path.splitext(os.path.basename(p))[0] for p in paths]
    return {p: (stem if stems.count(stem) == 1 else os.path.basename(p)) + ".png" for p, stem in zip(paths, stems)}


def load_queries(paths: Sequence[str], max_pixels: int, single: bool) -> tuple[list, list[dict]]:
    """``([(index, path, image)], errors)``: the usable query images and ``{"index", "image",
    "error"}`` of the others. A single query image that cannot be used is an error."""
    from .data.image_io import load_image

    images, errors = [], []
    for i, path in enumerate(paths):
        try:
            images.append((i, path, load_image(path, "query image", max_pixels)))
        except InputError as e:
            if single:
                raise
            errors.append({"index": i, "image": path, "error": str(e)})
    return images, errors


def write_results(path: str, data) -> None:
    """Write ``data`` to ``path`` atomically (no half-written file is left); an
    :class:`InputError` naming it when the disk refuses."""
    from .utils.atomic import write_json

    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    try:
        write_json(path, data, indent=1)
    except OSError as e:
        raise InputError(f"--output {path}: cannot write it ({e.strerror or e})") from None


def predict_chunk(detector, chunk: list, supports, boxes, threshold: float, options: dict, single: bool) -> list:
    """``[((index, path, image), result)]`` for a chunk of query images. In folder mode an image
    that cannot be run on its own (an :class:`InputError`, e.g. over the pixel limit once rescaled)
    gets ``{"image", "error"}`` instead of failing the others; a single query image fails the run."""
    try:
        return list(zip(chunk, detector.predict_batch([im for _, _, im in chunk], supports, boxes, threshold, **options)))
    except InputError as e:
        if single:
            raise
        if len(chunk) == 1:
            return [(chunk[0], {"image": chunk[0][1], "error": f"{chunk[0][1]}: {e}"})]
    return [pair for item in chunk
            for pair in predict_chunk(detector, [item], supports, boxes, threshold, options, single)]


@dataclass
class FileJob:
    """One run over files: query images (a file or a folder), exemplars, and where results go.

    ``supports`` are loaded images, ``boxes`` their exemplar boxes (``None``: the whole image), as
    :func:`detector.inference.pair_supports` pairs them; ``options`` are keyword options of
    :meth:`OneShotDetector.predict_batch` (``size``, ``rescale``, ...)."""

    query: str
    supports: list
    boxes: list
    output: str
    visualize: str = ""
    score_threshold: float = 0.3
    batch_size: int = 8
    max_pixels: int = 0
    options: dict = field(default_factory=dict)
    warn: Callable[[str], None] = print


def _save_picture(job: FileJob, name: str, path: str, image, exemplar, detections: list) -> None:
    from .visualize import save_detections

    try:
        save_detections(os.path.join(job.visualize, name), image, exemplar, detections,
                        title=f"{os.path.basename(path)}: {len(detections)} detections")
    except OSError as e:
        raise InputError(f"--visualize {job.visualize}: cannot write {name} ({e.strerror or e})") from None


def run_files(detector, job: FileJob, queries: Optional[list[str]] = None) -> tuple[list[dict], int]:
    """Run ``detector`` on every query image of ``job`` in batches -> ``(results, number of skipped
    images)``; writes ``job.output`` and, with ``job.visualize``, one picture per query image."""
    from .data.support import crop_exemplar
    from .visualize import tile_exemplars

    queries = queries or list_queries(job.query)
    single = not os.path.isdir(job.query)
    exemplar = tile_exemplars([crop_exemplar(s, b, 0.0) for s, b in zip(job.supports, job.boxes)])  # checks the boxes
    images, errors = load_queries(queries, job.max_pixels, single)
    if not images:
        raise InputError(f"--query {job.query}: none of its {len(queries)} images can be used "
                         f"(first: {errors[0]['error']})")
    for e in errors:
        job.warn(f"skipped {e['error']}")
    entries = [dict(e) for e in errors]
    names = picture_names(queries)
    for start in range(0, len(images), job.batch_size):
        chunk = images[start:start + job.batch_size]
        for (i, path, image), r in predict_chunk(detector, chunk, job.supports, job.boxes, job.score_threshold,
                                                 job.options, single):
            if "error" in r:  # folder mode: this image alone could not be run (e.g. too large once rescaled)
                job.warn(f"skipped {r['error']}")
                entries.append({"index": i, **r})
                errors.append(r)
                continue
            entries.append({"index": i, "image": path, **r})
            if job.visualize:
                _save_picture(job, names[path], path, image, exemplar, r["detections"])
    results = [{k: v for k, v in e.items() if k != "index"} for e in sorted(entries, key=lambda e: e["index"])]
    write_results(job.output, results)
    return results, len(errors)
