"""Write the synthetic one-shot benchmark (images + COCO JSON) to disk.

    python datasets/make_synthetic.py --size small            # -> datasets/synthetic_small
    python datasets/make_synthetic.py --size tiny --out /tmp/synthetic_tiny --seed 3
    python datasets/make_synthetic.py --train-colours image --out datasets/synthetic_small_imgcol

The layout is the one ``configs/synthetic.yaml`` reads: ``annotations/{train,val}.json``,
``images/{train,val}/*.jpg``, ``meta.json`` (size, seed, counts, version, training colours). An
existing folder is kept if it holds the same size, seed and training colours (``--force``
regenerates it). ``--train-colours image``: in a training image the instances of one category share
their colours (``data.synthetic_train_colours``); the evaluation splits are the default's.
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from detector.config import SYNTHETIC_TRAIN_COLOURS  # noqa: E402
from detector.data.synthetic import SIZES, build_synthetic  # noqa: E402


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", choices=sorted(SIZES), default="small")
    p.add_argument("--out", default=None, help="output folder (default: datasets/synthetic_<size>)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workers", type=int, default=2, help="rendering processes (the output does not depend on it)")
    p.add_argument("--train-colours", choices=SYNTHETIC_TRAIN_COLOURS, default="instance",
                   help="training images: each instance its own colours, or a category's instances in one image alike")
    p.add_argument("--force", action="store_true", help="delete and regenerate an existing folder")
    args = p.parse_args(argv)
    out = args.out or os.path.join(os.path.dirname(os.path.abspath(__file__)), f"synthetic_{args.size}")
    if args.force and os.path.isdir(out):
        shutil.rmtree(out)
    start = time.time()
    build_synthetic(out, args.size, args.seed, workers=args.workers, train_colours=args.train_colours)
    print(f"{out}: ready ({time.time() - start:.1f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
