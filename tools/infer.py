"""Find every instance of an exemplar's class in query images.

``python tools/infer.py --checkpoint CKPT --query IMG_OR_FOLDER --support IMG [--support-box x,y,w,h]
--output results.json [--visualize OUT_DIR] [--score-threshold T] [--rescale auto|fit|exemplar|native]
[--size N] [--object-size PX] [--tile-overlap F] [--max-detections N]``

Real photos (large images, small objects, hundreds of them): the model was trained at one input
size and finds at most its number of object queries per pass, so a big photo shrunk to that size
loses its objects. Options (defaults: the checkpoint's ``infer`` config section):

* ``--rescale auto`` (default): ``exemplar`` when the exemplar has a box (``--support-box``) and
  the checkpoint knows its trained object size, else ``fit``: what the real-photo benchmark does;
* ``--rescale fit``: the query's longer side resized to ``--size``, one pass;
* ``--rescale exemplar``: the query scaled so that the exemplar box (``--support-box``, cut from
  the query image or one at its scale) gets the object side the model was trained on,
  ``--object-size`` pixels; then cut into tiles;
* ``--rescale native``: the query at its own pixels (scale 1), cut into tiles;
* ``--size N``: the working resolution: the longer side in ``fit``, the tile side otherwise
  (0: the training ``data.eval_size``);
* ``--tile-overlap F``: neighbouring tiles overlap by this fraction of the tile side, in [0, 1);
* ``--max-detections N``: detections kept per query image after the tiles are merged.

Each tile gives up to the model's number of detections, so the budget grows with the image; the
tiles' detections are merged (each kept by the tile owning its centre, then a class-agnostic NMS
at ``infer.merge_iou``). Every entry of ``results.json`` also gives ``scale`` (the factor applied to
the query) and ``tiles``.

Several exemplars of one class (k-shot): repeat ``--support`` (and ``--support-box``, one per
``--support``), or give one ``--support`` with several ``--support-box`` (exemplars cut from one image).

``results.json`` is a list, one entry per query image: ``{"image", "width", "height", "scale",
"tiles", "detections": [{"bbox": [x, y, w, h], "score"}]}`` in pixels of the original image. Several query
images are run in batches of ``--batch-size``. In a folder, an image that cannot be used (corrupt,
not an image, over ``--max-megapixels``) is skipped with a warning and listed as
``{"image", "error"}`` (no ``detections``); the exit code is then 3. Exit codes: 0 done,
2 a bad option or input (one line; nothing written), 3 done with skipped images.
"""
from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from detector.cli import (EXIT_OK, EXIT_PARTIAL, ArgumentParser, fraction, guarded, non_negative_float,  # noqa: E402
                          positive_int, warn)
from detector.config import DEFAULT_MAX_PIXELS, MIN_INFER_SIZE, RESCALE_MODES, infer_option_ok  # noqa: E402
from detector.errors import InputError  # noqa: E402

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")
# detector.inference.pair_supports' message, in the words of this tool's options.
SUPPORT_PAIRING_ERROR = ("{images} --support but {boxes} --support-box: give one box per support image, none, or "
                         "several boxes for a single --support")


def parse_box(text: str) -> list[float]:
    """``"x,y,w,h"`` -> four floats (argparse type)."""
    parts = text.replace(" ", "").split(",")
    try:
        values = [float(p) for p in parts]
    except ValueError:
        values = []
    if len(values) != 4:
        raise argparse.ArgumentTypeError(f"expected x,y,w,h (four numbers), got {text!r}")
    return values


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


def parse_args(argv=None) -> argparse.Namespace:
    p = ArgumentParser(description=__doc__)
    p.add_argument("--checkpoint", required=True, help="checkpoint written by tools/train.py")
    p.add_argument("--query", required=True, help="query image or folder of images")
    p.add_argument("--support", required=True, action="append",
                   help="support image (holds the exemplar); repeat it for several exemplars of one class")
    p.add_argument("--support-box", type=parse_box, action="append", default=None,
                   help="exemplar box x,y,w,h in support-image pixels (default: the whole support image); "
                        "one per --support, or several for one --support")
    p.add_argument("--output", default="results.json", help="where to write the results JSON")
    p.add_argument("--visualize", default="", help="folder for one PNG per query image (boxes + exemplar)")
    p.add_argument("--score-threshold", type=fraction, default=0.3, help="keep detections scoring at least this (0-1)")
    p.add_argument("--batch-size", type=positive_int, default=8, help="query images per forward pass (>= 1)")
    p.add_argument("--max-megapixels", type=non_negative_float, default=DEFAULT_MAX_PIXELS / 1e6,
                   help=f"refuse larger images before decoding them (0: no limit; default {DEFAULT_MAX_PIXELS / 1e6:g})")
    add_infer_options(p)
    p.add_argument("--device", default="cpu", help="cpu | cuda | cuda:N")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default; 1 is faster on a busy machine)")
    return p.parse(argv)


def add_infer_options(p: argparse.ArgumentParser) -> None:
    """The real-photo options; each defaults to the checkpoint's ``infer`` config value."""
    p.add_argument("--rescale", choices=RESCALE_MODES, default=None,
                   help="auto (default): exemplar when --support-box is given and the object size is known, else "
                        "fit; fit: longer side -> --size, one pass; exemplar: scale the query so the exemplar box gets "
                        "--object-size pixels, then tile; native: the query's own pixels, then tile")
    p.add_argument("--size", type=working_size, default=None,
                   help="working resolution in pixels: longer side (fit) or tile side (exemplar, native); "
                        f"0: the training data.eval_size; else >= {MIN_INFER_SIZE}")
    p.add_argument("--object-size", type=non_negative_float, default=None,
                   help="object side sqrt(w*h) in model-input pixels the model was trained on (for --rescale "
                        "exemplar; configs/synthetic.yaml: 45.7)")
    p.add_argument("--tile-overlap", type=overlap_fraction, default=None,
                   help="overlap of neighbouring tiles, a fraction of the tile side in [0, 1) (default 0.25)")
    p.add_argument("--max-detections", type=positive_int, default=None,
                   help="detections kept per query image after merging the tiles (default 1000)")


def working_size(text: str) -> int:
    """argparse type of ``--size``: 0 or an integer >= :data:`MIN_INFER_SIZE` (``infer.size``'s rule)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer (pixels), got {text!r}") from None
    if not infer_option_ok("size", value):
        raise argparse.ArgumentTypeError(f"must be 0 (data.eval_size) or >= {MIN_INFER_SIZE}, got {value}")
    return value


def overlap_fraction(text: str) -> float:
    """argparse type of ``--tile-overlap``: a number in [0, 1) (``infer.tile_overlap``'s rule)."""
    value = fraction(text)
    if not infer_option_ok("tile_overlap", value):
        raise argparse.ArgumentTypeError(f"must be below 1 (tiles that overlap entirely never advance), got {text}")
    return value


def infer_options(args: argparse.Namespace) -> dict:
    """The keyword options of ``OneShotDetector.predict_batch`` given on the command line."""
    names = ("size", "rescale", "object_size", "tile_overlap", "max_detections")
    return {name: getattr(args, name) for name in names if getattr(args, name) is not None}


def check_output_paths(args: argparse.Namespace) -> None:
    """``--output`` must name a file and ``--visualize`` a folder, before any work is done."""
    from detector.run_folder import check_output_path

    if os.path.isdir(args.output) or args.output.endswith(os.sep):
        raise InputError(f"--output {args.output}: is a folder; give a file name such as "
                         f"{os.path.join(args.output, 'results.json')}")
    check_output_path(os.path.dirname(os.path.abspath(args.output)), "--output: the folder")
    if args.visualize:
        check_output_path(args.visualize, "--visualize")


def check_not_inputs(args: argparse.Namespace, queries: list[str]) -> None:
    """No output lands on an input: ``--output`` is not a query or support image, and
    ``--visualize`` is not a folder that holds one (pictures there would replace, or later be read
    as, the user's images)."""
    inputs = [os.path.realpath(p) for p in list(queries) + list(args.support)]
    if os.path.realpath(args.output) in inputs:
        raise InputError(f"--output {args.output}: is one of the input images; give another file name")
    if args.visualize:
        folder = os.path.realpath(args.visualize)
        if any(os.path.dirname(p) == folder for p in inputs):
            raise InputError(f"--visualize {args.visualize}: holds input images; give another folder")


def picture_names(paths: list[str]) -> dict[str, str]:
    """``{query path: picture file name}``: ``<stem>.png``, or ``<file name>.png`` where several
    queries share a stem (``a.png`` and ``a.jpg``), so that no picture replaces another."""
    stems = [os.path.splitext(os.path.basename(p))[0] for p in paths]
    return {p: (stem if stems.count(stem) == 1 else os.path.basename(p)) + ".png" for p, stem in zip(paths, stems)}


def load_queries(paths: list[str], max_pixels: int, single: bool) -> tuple[list, list[dict]]:
    """``([(index, path, image)], errors)``: the usable query images and ``{"index", "image",
    "error"}`` of the others. A single query image that cannot be used is an error."""
    from detector.data.image_io import load_image

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
    """Write ``data`` to ``--output`` atomically (:func:`detector.utils.atomic.write_json`: no
    half-written file is left); :class:`InputError` naming it when the disk refuses."""
    from detector.utils.atomic import write_json

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


def run(args: argparse.Namespace) -> tuple[list[dict], int]:
    """``(results, number of skipped images)``; writes ``--output`` (and pictures)."""
    from detector.data.image_io import load_image
    from detector.data.support import crop_exemplar
    from detector.inference import OneShotDetector, pair_supports
    from detector.utils.device import resolve_device
    from detector.visualize import save_detections, tile_exemplars

    check_output_paths(args)
    if args.threads > 0:
        import torch

        torch.set_num_threads(args.threads)
    max_pixels = int(args.max_megapixels * 1e6)
    queries = list_queries(args.query)
    check_not_inputs(args, queries)
    names = picture_names(queries)
    device = resolve_device(args.device, "--device")
    detector = OneShotDetector.from_checkpoint(args.checkpoint, device=device, max_pixels=max_pixels)
    # one --support-box per --support, none, or several for a single --support
    supports, boxes = pair_supports(args.support, args.support_box, SUPPORT_PAIRING_ERROR)
    images = {path: load_image(path, "support image", max_pixels) for path in dict.fromkeys(supports)}
    supports = [images[path] for path in supports]
    # Also validates the boxes before any work.
    exemplar = tile_exemplars([crop_exemplar(s, b, 0.0) for s, b in zip(supports, boxes)])
    options = infer_options(args)
    # refuses exemplar mode without a box or object size before any work
    detector.scale_options(detector.infer_options(**options), boxes)
    images, errors = load_queries(queries, max_pixels, single=not os.path.isdir(args.query))
    if not images:
        raise InputError(f"--query {args.query}: none of its {len(queries)} images can be used "
                         f"(first: {errors[0]['error']})")
    for e in errors:
        warn(f"skipped {e['error']}")
    entries = [dict(e) for e in errors]
    single = not os.path.isdir(args.query)
    for start in range(0, len(images), args.batch_size):
        chunk = images[start:start + args.batch_size]
        for (i, path, image), r in predict_chunk(detector, chunk, supports, boxes, args.score_threshold, options, single):
            if "error" in r:  # folder mode: this image alone could not be run (e.g. too large once rescaled)
                warn(f"skipped {r['error']}")
                entries.append({"index": i, **r})
                errors.append(r)
                continue
            entries.append({"index": i, "image": path, **r})
            if args.visualize:
                name = names[path]
                try:
                    save_detections(os.path.join(args.visualize, name), image, exemplar, r["detections"],
                                    title=f"{os.path.basename(path)}: {len(r['detections'])} detections")
                except OSError as e:
                    raise InputError(f"--visualize {args.visualize}: cannot write {name} ({e.strerror or e})") from None
    results = [{k: v for k, v in e.items() if k != "index"} for e in sorted(entries, key=lambda e: e["index"])]
    write_results(args.output, results)
    return results, len(errors)


def report_done(args: argparse.Namespace, results: list[dict], skipped: int) -> int:
    n = sum(len(r.get("detections", [])) for r in results)
    note = f", {skipped} skipped (see their 'error' in the results)" if skipped else ""
    print(f"{len(results) - skipped} query image(s), {n} detection(s){note} -> {args.output}")
    if args.visualize:
        print(f"pictures -> {args.visualize}")
    return EXIT_PARTIAL if skipped else EXIT_OK


def main(argv=None) -> int:
    def body() -> int:
        args = parse_args(argv)
        return report_done(args, *run(args))

    return guarded(body)


if __name__ == "__main__":
    sys.exit(main())
