"""What every command-line tool does the same way: parsing, exit codes and one-line errors.

Exit codes:

* 0: done;
* 1: the run started and could not go on (:class:`~detector.errors.RunError`: a non-finite loss,
  a failing disk; one line), or a bug (any other exception, with its traceback);
* 2: a mistake in what the user gave (:class:`~detector.errors.UserError`, or a command line
  argparse cannot parse): one line on stderr naming the file, option or key and the problem;
* 3: done, but some inputs were skipped (folder inference; each is listed in the output).

Options and ``key=value`` overrides may come in any order (``parse_intermixed_args``).
"""
from __future__ import annotations

import argparse
import errno
import re
import sys
from typing import Callable, Optional, Sequence

from .config import MIN_INFER_SIZE, infer_option_ok
from .errors import RunError, UserError

EXIT_OK, EXIT_FAILED, EXIT_INPUT, EXIT_PARTIAL = 0, 1, 2, 3
# A disk that stops taking writes mid-run (remounted read-only, full, over a quota or a size limit).
DISK_ERRNOS = (errno.EROFS, errno.ENOSPC, errno.EDQUOT, errno.EFBIG)


class ArgumentParser(argparse.ArgumentParser):
    """``argparse.ArgumentParser`` whose errors are one line (``prog: error: ... (see --help)``,
    exit code 2) instead of the usage block, and whose default ``parse`` lets options and
    positional overrides mix."""

    def __init__(self, **kwargs):
        kwargs.setdefault("formatter_class", argparse.RawDescriptionHelpFormatter)
        super().__init__(**kwargs)

    def error(self, message: str):
        self.exit(EXIT_INPUT, f"{self.prog}: error: {message} (see --help)\n")

    def parse(self, argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
        """``parse_intermixed_args``: ``--no-progress train.lr=1e-3 --resume`` parses."""
        return self.parse_intermixed_args(argv)


def _number(text: str, cast: Callable, ok: Callable, expected: str, rule: str):
    """``cast(text)`` when it parses and ``ok(value)``; else an ``ArgumentTypeError`` saying
    ``expected ..., got 'text'`` or ``must be <rule>, got text``."""
    try:
        value = cast(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}") from None
    if not ok(value):
        raise argparse.ArgumentTypeError(f"must be {rule}, got {text}")
    return value


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1."""
    return _number(text, int, lambda v: v >= 1, "an integer >= 1", ">= 1")


def non_negative_int(text: str) -> int:
    """argparse type: an integer >= 0."""
    return _number(text, int, lambda v: v >= 0, "an integer >= 0", ">= 0")


MAX_THREADS = 256


def thread_count(text: str) -> int:
    """argparse type of ``--threads``: 0 (torch's default) to :data:`MAX_THREADS`."""
    return _number(text, int, lambda v: 0 <= v <= MAX_THREADS, "an integer (0: torch's default)",
                   f"0 (torch's default) to {MAX_THREADS}")


def port_number(text: str) -> int:
    """argparse type: a TCP port, 1 to 65535."""
    return _number(text, int, lambda v: 1 <= v <= 65535, "a port number", "a port from 1 to 65535")


def positive_float(text: str) -> float:
    """argparse type: a finite number > 0."""
    return _number(text, float, lambda v: 0 < v < float("inf"), "a number > 0", "a finite number > 0")


def non_negative_float(text: str) -> float:
    """argparse type: a finite number >= 0."""
    return _number(text, float, lambda v: 0 <= v < float("inf"), "a number >= 0", "a finite number >= 0")


def fraction(text: str) -> float:
    """argparse type: a number in [0, 1]."""
    return _number(text, float, lambda v: 0.0 <= v <= 1.0, "a number in [0, 1]", "in [0, 1]")


def box_xywh(text: str) -> list[float]:
    """argparse type: ``"x,y,w,h"`` -> four floats."""
    parts = text.replace(" ", "").split(",")
    try:
        values = [float(p) for p in parts]
    except ValueError:
        values = []
    if len(values) != 4:
        raise argparse.ArgumentTypeError(f"expected x,y,w,h (four numbers), got {text!r}")
    return values


def working_size(text: str) -> int:
    """argparse type of ``--size`` (inference): 0 or an integer >= :data:`~detector.config.MIN_INFER_SIZE`
    (``infer.size``'s rule)."""
    return _number(text, int, lambda v: infer_option_ok("size", v), "an integer (pixels)",
                   f"0 (data.eval_size) or >= {MIN_INFER_SIZE}")


def overlap_fraction(text: str) -> float:
    """argparse type of ``--tile-overlap``: a number in [0, 1) (``infer.tile_overlap``'s rule)."""
    value = fraction(text)
    if not infer_option_ok("tile_overlap", value):
        raise argparse.ArgumentTypeError(f"must be below 1 (tiles that overlap entirely never advance), got {text}")
    return value


def one_line(error: BaseException) -> str:
    """The message of ``error`` on one line. An error re-raised from a DataLoader worker carries
    the worker's traceback in its message; its last line is the original message."""
    text = str(error).strip()
    if "Original Traceback" in text:
        text = re.sub(r"^[A-Za-z_][\w.]*(Error|Exception): ", "", text.splitlines()[-1].strip())
    return " ".join(line.strip() for line in text.splitlines() if line.strip()) or type(error).__name__


def report(error: BaseException) -> int:
    """Print ``error: <message>`` (one line) on stderr; the exit code of its kind."""
    print(f"error: {one_line(error)}", file=sys.stderr, flush=True)
    return EXIT_INPUT if isinstance(error, UserError) else EXIT_FAILED


def guarded(body: Callable[..., int], *args, **kwargs) -> int:
    """``body(*args, **kwargs)``, with user and run errors turned into one line and an exit code,
    and so is a disk that refuses a write mid-run (:data:`DISK_ERRNOS`; exit 1, naming the file);
    every other exception (a bug) propagates with its traceback."""
    try:
        return body(*args, **kwargs)
    except (UserError, RunError) as e:
        return report(e)
    except OSError as e:
        if e.errno not in DISK_ERRNOS:
            raise
        where = f" {e.filename}" if e.filename else ""
        print(f"error: cannot write{where}: {e.strerror} (errno {e.errno}); the run stopped there",
              file=sys.stderr, flush=True)
        return EXIT_FAILED


def warn(message: str) -> None:
    """``warning: <message>`` on stderr."""
    print(f"warning: {message}", file=sys.stderr, flush=True)
