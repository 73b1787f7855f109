"""The errors a user can cause, and the errors that stop a run, as distinct from bugs.

Every tool turns them into one line on stderr (:mod:`detector.cli`): a :class:`UserError` exits
with code 2 (fix the input and run again), a :class:`RunError` with code 1 (the run started and
could not go on; its last good checkpoint is kept). Any other exception is a bug and keeps its
traceback. Each message names the file or config key and the problem.

The classes also derive from the built-in exception they replace (``ValueError`` /
``RuntimeError`` / ``OSError``), so code that caught those still does.
"""
from __future__ import annotations


class UserError(Exception):
    """A mistake in what the user gave (a file, an option, a config key): exit code 2."""


class ConfigError(UserError, ValueError):
    """A configuration file or override that does not fit the schema."""


class InputError(UserError, ValueError):
    """An input the project cannot use: an unreadable or oversized image, a bad box, an array of
    an unsupported dtype, a data file that does not fit, a run folder that holds another run."""


class WorkLimitError(InputError):
    """A request that asks for more work than the limit it runs under (tiles of one query image):
    the web API answers it with 413, the command-line tools with exit code 2."""


class CheckpointError(UserError, RuntimeError):
    """A checkpoint that cannot be read or does not belong to this model or config."""


class RunError(Exception):
    """A run that started and cannot go on (a non-finite loss, a failing disk): exit code 1."""


class CheckpointWriteError(RunError, OSError):
    """Writing a checkpoint failed (disk full, file-size limit, ...); the previous one is intact."""


__all__ = ["UserError", "ConfigError", "InputError", "WorkLimitError", "CheckpointError", "RunError", "CheckpointWriteError"]
