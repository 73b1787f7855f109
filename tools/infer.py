"""Find every instance of an exemplar's class in query images.

``python tools/infer.py --checkpoint CKPT --query IMG_OR_FOLDER --support IMG [--support-box x,y,w,h]
--output results.json [--visualize OUT_DIR] [--score-threshold T] [--rescale auto|fit|exemplar|native]
[--size N] [--object-size PX] [--tile-overlap F] [--max-detections N]``

Real photos (large images, small objects, hundreds of them): ``--rescale auto`` (the default) scales
the query so that the exemplar box gets the object size the model was trained on and cuts it into
tiles when there is a box, else fits the longer side to ``--size``; each option defaults to the
checkpoint's ``infer`` config section (``docs/GETTING_STARTED.md``, "Your own photos", says what
each does). Several exemplars of one class: repeat ``--support`` (and ``--support-box``, one per
``--support``), or give one ``--support`` with several ``--support-box``.

``results.json`` is a list, one entry per query image: ``{"image", "width", "height", "scale",
"tiles", "detections": [{"bbox": [x, y, w, h], "score"}]}`` in pixels of the original image
(:mod:`detector.file_inference`). In a folder, an image that cannot be used is skipped with a
warning and listed as ``{"image", "error"}``. Exit codes: 0 done, 2 a bad option or input (one
line; nothing written), 3 done with skipped images.
"""
from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from detector.cli import (EXIT_OK, EXIT_PARTIAL, ArgumentParser, box_xywh, fraction, guarded,  # noqa: E402
                          non_negative_float, overlap_fraction, positive_int, thread_count, warn, working_size)
from detector.config import DEFAULT_MAX_PIXELS, MIN_INFER_SIZE, RESCALE_MODES  # noqa: E402

# detector.inference.pair_supports' message, in the words of this tool's options.
SUPPORT_PAIRING_ERROR = ("{images} --support but {boxes} --support-box: give one box per support image, none, or "
                         "several boxes for a single --support")


def parse_args(argv=None) -> argparse.Namespace:
    p = ArgumentParser(description=__doc__)
    p.add_argument("--checkpoint", required=True, help="checkpoint written by tools/train.py")
    p.add_argument("--query", required=True, help="query image or folder of images")
    p.add_argument("--support", required=True, action="append",
                   help="support image (holds the exemplar); repeat it for several exemplars of one class")
    p.add_argument("--support-box", type=box_xywh, action="append", default=None,
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
    p.add_argument("--threads", type=thread_count, default=0, help="torch CPU threads (0: torch's default; 1 is faster on a busy machine)")
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


def infer_options(args: argparse.Namespace) -> dict:
    """The keyword options of ``OneShotDetector.predict_batch`` given on the command line."""
    names = ("size", "rescale", "object_size", "tile_overlap", "max_detections")
    return {name: getattr(args, name) for name in names if getattr(args, name) is not None}


def run(args: argparse.Namespace) -> tuple[list[dict], int]:
    """``(results, number of skipped images)``; writes ``--output`` (and pictures)."""
    from detector.data.image_io import load_image
    from detector.file_inference import FileJob, check_not_inputs, check_output_paths, list_queries, run_files
    from detector.inference import OneShotDetector, pair_supports
    from detector.utils.device import resolve_device

    check_output_paths(args.output, args.visualize)
    if args.threads > 0:
        import torch

        torch.set_num_threads(args.threads)
    max_pixels = int(args.max_megapixels * 1e6)
    queries = list_queries(args.query)
    check_not_inputs(args.output, args.visualize, queries + list(args.support))
    detector = OneShotDetector.from_checkpoint(args.checkpoint, device=resolve_device(args.device, "--device"),
                                               max_pixels=max_pixels)
    supports, boxes = pair_supports(args.support, args.support_box, SUPPORT_PAIRING_ERROR)
    images = {path: load_image(path, "support image", max_pixels) for path in dict.fromkeys(supports)}
    options = infer_options(args)
    # refuses exemplar mode without a box or object size before any work
    detector.scale_options(detector.infer_options(**options), boxes)
    job = FileJob(args.query, [images[path] for path in supports], boxes, args.output, args.visualize,
                  args.score_threshold, args.batch_size, max_pixels, options, warn=warn)
    return run_files(detector, job, queries)


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
