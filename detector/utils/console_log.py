"""``train.log``: a plain-text copy of what the console showed, without the progress bars.

``with ConsoleLog() as console:`` copies everything written to ``sys.stdout`` and ``sys.stderr``
(still shown as before) into memory; ``console.attach(path)`` writes what was kept to ``path`` and
appends from then on. A tool attaches only once its run folder exists, so that a run refused at
validation leaves no file behind. Progress-bar redraws (tqdm writes each one after a carriage
return, and a newline when the bar closes) are not copied.
"""
from __future__ import annotations

import sys
from typing import Optional, TextIO


class _Tee:
    """A text stream that writes to ``stream`` and hands a copy to ``console``."""

    def __init__(self, stream: TextIO, console: "ConsoleLog"):
        self._stream, self._console = stream, console

    def write(self, text: str) -> int:
        self._console.copy(text)
        return self._stream.write(text)

    def flush(self) -> None:
        self._stream.flush()
        self._console.flush()

    def __getattr__(self, name: str):  # fileno, isatty, encoding, ... of the real stream
        return getattr(self._stream, name)


class ConsoleLog:
    """Copies the console into a file (module docstring); a context manager."""

    def __init__(self):
        self._kept: list[str] = []
        self._file: Optional[TextIO] = None
        self._after_bar = False
        self._saved: Optional[tuple[TextIO, TextIO]] = None
        self.path: Optional[str] = None

    def __enter__(self) -> "ConsoleLog":
        self._saved = (sys.stdout, sys.stderr)
        sys.stdout, sys.stderr = _Tee(sys.stdout, self), _Tee(sys.stderr, self)
        return self

    def __exit__(self, *exc) -> None:
        if self._saved is not None:
            sys.stdout, sys.stderr = self._saved
            self._saved = None
        if self._file is not None:
            self._file.close()
            self._file = None

    def attach(self, path: str) -> None:
        """Write what was kept to ``path`` (appending, so a resumed run continues its log) and copy
        everything written from now on."""
        if self._file is not None:
            return
        self.path = path
        self._file = open(path, "a", encoding="utf-8")
        self._file.write("".join(self._kept))
        self._kept = []
        self._file.flush()

    def copy(self, text: str) -> None:
        """Keep ``text`` unless it belongs to a progress bar."""
        if "\r" in text:
            self._after_bar = True
            return
        if self._after_bar and text == "\n":
            self._after_bar = False
            return
        self._after_bar = False
        if self._file is not None:
            self._file.write(text)
        else:
            self._kept.append(text)

    def flush(self) -> None:
        if self._file is not None:
            self._file.flush()
