"""Atomic file writes: a reader finds the previous file or the complete new one, never a part.

Every write goes to a hidden temporary file in the target's own folder (``.<name>.tmp<pid>``: the
same file system, so that the rename is atomic), is flushed and fsynced, then renamed over the
target with ``os.replace``. When anything fails, an exception raised by the caller's own writing
included, the temporary file is removed, the target is left as it was and the exception
propagates unchanged. A process killed half-way leaves at most the temporary file
(:func:`temporary_path` names it, for whoever cleans such files up).
"""
from __future__ import annotations

import contextlib
import json
import os
from typing import IO, Any, Iterator, Optional


def temporary_path(path: str) -> str:
    """The temporary file a write of ``path`` goes through: ``.<name>.tmp<pid>`` in its folder."""
    folder = os.path.dirname(os.path.abspath(path))
    return os.path.join(folder, f".{os.path.basename(path)}.tmp{os.getpid()}")


def temporary_pattern(name: str) -> str:
    """The glob of the temporary files that writes of files named ``name`` (itself a glob, e.g.
    ``checkpoint_*.pth``) by any process leave when they are killed: ``.<name>.tmp*``."""
    return f".{name}.tmp*"


@contextlib.contextmanager
def _replacing(path: str) -> Iterator[str]:
    """The temporary path of ``path`` (its folder created); renamed over ``path`` when the block
    ends without an exception, removed when it raises. The block syncs what it writes."""
    tmp = temporary_path(path)
    try:
        os.makedirs(os.path.dirname(tmp), exist_ok=True)
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.remove(tmp)
        raise


@contextlib.contextmanager
def atomic_path(path: str) -> Iterator[str]:
    """A temporary path for writers that take a path (``torch.onnx.export``): the block writes it
    (and may read it back to check it, or raise to drop it); on leaving the block it is fsynced and
    renamed over ``path``."""
    with _replacing(path) as tmp:
        yield tmp
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


@contextlib.contextmanager
def atomic_open(path: str, mode: str = "wb", encoding: Optional[str] = None) -> Iterator[IO]:
    """An open file (``mode`` ``"wb"`` or ``"w"``) whose content replaces ``path`` when the block
    ends: flushed, fsynced, closed, renamed."""
    if mode not in ("wb", "w"):
        raise ValueError(f"atomic_open: mode must be 'wb' or 'w', got {mode!r}")
    with _replacing(path) as tmp, open(tmp, mode, encoding=encoding) as f:
        yield f
        f.flush()
        os.fsync(f.fileno())


def write_bytes(path: str, data: bytes) -> str:
    """Write ``data`` to ``path`` atomically; returns ``path``."""
    with atomic_open(path, "wb") as f:
        f.write(data)
    return path


def write_text(path: str, text: str, encoding: str = "utf-8") -> str:
    """Write ``text`` to ``path`` atomically; returns ``path``."""
    with atomic_open(path, "w", encoding=encoding) as f:
        f.write(text)
    return path


def write_json(path: str, data: Any, indent: Optional[int] = 1) -> str:
    """Write ``data`` as JSON to ``path`` atomically (a value JSON cannot hold raises ``TypeError``
    and leaves ``path`` as it was); returns ``path``."""
    with atomic_open(path, "w", encoding="utf-8") as f:
        json.dump(data, f, indent=indent)
    return path


__all__ = ["atomic_open", "atomic_path", "temporary_path", "temporary_pattern", "write_bytes", "write_json", "write_text"]
