"""File digests: the sha256 that weight files and the real-photo benchmark's sources are checked by."""
from __future__ import annotations

import hashlib


def sha256_of(path: str) -> str:
    """Hex sha256 of a file, read in 1 MiB chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()
