"""Find every instance of an exemplar's class in query images.

``python tools/infer.py --checkpoint CKPT --query IMG_OR_FOLDER --support IMG [--support-box x,y,w,h]
--output results.json [--visualize OUT_DIR] [--score-threshold T]``

``results.json`` is a list, one entry per query image: ``{"image", "width", "height",
"detections": [{"bbox": [x, y, w, h], "score"}]}`` in pixels of the original image. Several query
images are run in batches of ``--batch-size``.
"""
from __future__ import annotations

import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")


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
            raise FileNotFoundError(f"no images ({', '.join(IMAGE_EXTENSIONS)}) in folder {path}")
        return files
    if not os.path.exists(path):
        raise FileNotFoundError(f"query image not found: {path}")
    return [path]


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", required=True, help="checkpoint written by tools/train.py")
    p.add_argument("--query", required=True, help="query image or folder of images")
    p.add_argument("--support", required=True, help="support image (holds the exemplar)")
    p.add_argument("--support-box", type=parse_box, default=None,
                   help="exemplar box x,y,w,h in support-image pixels (default: the whole support image)")
    p.add_argument("--output", default="results.json", help="where to write the results JSON")
    p.add_argument("--visualize", default="", help="folder for one PNG per query image (boxes + exemplar)")
    p.add_argument("--score-threshold", type=float, default=0.3, help="keep detections scoring at least this")
    p.add_argument("--batch-size", type=int, default=8, help="query images per forward pass")
    p.add_argument("--device", default="cpu", help="cpu | cuda | cuda:N")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default; 1 is faster on a busy machine)")
    return p.parse_args(argv)


def run(args: argparse.Namespace) -> list[dict]:
    from detector.inference import OneShotDetector, crop_exemplar, load_image
    from detector.visualize import save_detections

    if args.threads > 0:
        import torch

        torch.set_num_threads(args.threads)
    queries = list_queries(args.query)
    detector = OneShotDetector.from_checkpoint(args.checkpoint, device=args.device)
    support = load_image(args.support, "support image")
    exemplar = crop_exemplar(support, args.support_box, 0.0)  # also validates the box before any work
    results = []
    for i in range(0, len(queries), max(args.batch_size, 1)):
        chunk = queries[i:i + args.batch_size]
        images = [load_image(q, f"query image {q}") for q in chunk]
        for path, image, r in zip(chunk, images, detector.predict_batch(images, support, args.support_box,
                                                                        args.score_threshold)):
            results.append({"image": path, **r})
            if args.visualize:
                name = os.path.splitext(os.path.basename(path))[0] + ".png"
                save_detections(os.path.join(args.visualize, name), image, exemplar, r["detections"],
                                title=f"{os.path.basename(path)}: {len(r['detections'])} detections")
    folder = os.path.dirname(os.path.abspath(args.output))
    os.makedirs(folder, exist_ok=True)
    with open(args.output, "w", encoding="utf-8") as f:
        json.dump(results, f, indent=1)
    return results


def main(argv=None) -> int:
    args = parse_args(argv)
    from detector.inference import CheckpointError, InputError

    try:
        results = run(args)
    except (InputError, CheckpointError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    n = sum(len(r["detections"]) for r in results)
    print(f"{len(results)} query image(s), {n} detection(s) -> {args.output}")
    if args.visualize:
        print(f"pictures -> {args.visualize}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
