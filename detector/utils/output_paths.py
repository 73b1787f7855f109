"""Where a tool will write, checked before it writes anything: a folder to write into (made if
missing) or a file to write. A path that cannot be written, because it or the nearest folder above
it is a file, is on a read-only file system or may not be written by this user, is an
:class:`~detector.errors.InputError` naming the option and the path."""
from __future__ import annotations

import os

from ..errors import InputError


def check_output_path(path: str, what: str) -> None:
    """:class:`InputError` when ``path`` (a folder to write into, made if missing) cannot be one:
    it, or the nearest folder above it that exists, is a file, is on a read-only file system, or
    may not be written by this user. Checked before a tool writes anything."""
    if os.path.exists(path) and not os.path.isdir(path):
        raise InputError(f"{what} {path}: is a file, not a folder")
    existing = os.path.abspath(path)
    while not os.path.exists(existing) and os.path.dirname(existing) != existing:
        existing = os.path.dirname(existing)
    if not os.path.isdir(existing):
        raise InputError(f"{what} {path}: {existing} is a file, not a folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        where = "" if existing == os.path.abspath(path) else f" (in {existing})"
        raise InputError(f"{what} {path}: cannot write there{where}: {_why_not_writable(existing)}")


def check_output_file(path: str, what: str, example: str) -> None:
    """:class:`InputError` when ``path`` (a file to write) is a folder, or its folder cannot be
    written (:func:`check_output_path`); ``example`` is a file name the message suggests."""
    if os.path.isdir(path) or path.endswith(os.sep):
        raise InputError(f"{what} {path}: is a folder; give a file name such as {os.path.join(path, example)}")
    check_output_path(os.path.dirname(os.path.abspath(path)), f"{what}: the folder")


def _why_not_writable(folder: str) -> str:
    try:
        read_only = bool(os.statvfs(folder).f_flag & os.ST_RDONLY)
    except OSError:
        read_only = False
    return "read-only file system" if read_only else "no permission to write"


__all__ = ["check_output_file", "check_output_path"]
