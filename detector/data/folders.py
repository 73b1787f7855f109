"""Data sets written whole: into a partial folder of this process, then renamed into place.

A crash leaves a ``<root>.partial-<pid>`` folder, never a half-written ``root`` that a later run
would take for a finished one; processes that write the same set at once (DDP ranks) do not meet,
and the first to finish wins.
"""
from __future__ import annotations

import os
import shutil


def partial_folder(root: str) -> str:
    """A fresh, empty ``<root>.partial-<pid>`` (an old one of this process id is removed first)."""
    tmp = f"{root.rstrip(os.sep)}.partial-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(tmp)
    return tmp


def publish_folder(tmp: str, root: str, marker: str = "meta.json") -> None:
    """Rename ``tmp`` to ``root`` (missing or empty). When another process got there first (its
    ``root/marker`` exists), ``tmp`` is dropped and theirs kept; any other failure is raised."""
    try:
        if os.path.isdir(root) and not os.listdir(root):
            os.rmdir(root)
        os.rename(tmp, root)
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)
        if not os.path.isfile(os.path.join(root, marker)):
            raise
