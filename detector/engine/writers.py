"""Where the training records go: ``metrics.jsonl`` always, TensorBoard scalars when asked.

A record is a flat dict with a ``type`` (``train``, ``eval`` or ``warning``) and an ``iter``; every
writer gets every record, on rank 0 only.
"""
from __future__ import annotations

import json
import os

from ..errors import ConfigError
from ..utils import dist as du
from ..utils.atomic import write_text


class MetricsLog:
    """``metrics.jsonl``: one JSON object per line, appended (rank 0 only)."""

    def __init__(self, path: str):
        self.path = path

    def truncate_after(self, iteration: int) -> None:
        """Drop the records past ``iteration`` (written by a run killed after its last checkpoint)
        and a line cut short (a kill or a full disk during its write). The file is replaced
        atomically: a kill during the cut loses no record."""
        if not os.path.isfile(self.path):
            return
        kept = []
        with open(self.path, "r", encoding="utf-8") as f:
            for line in f:
                try:
                    record = json.loads(line)
                except ValueError:  # empty, or cut short: no whole record to keep
                    continue
                if record.get("iter", 0) <= iteration:
                    kept.append(line if line.endswith("\n") else line + "\n")
        write_text(self.path, "".join(kept))

    def write(self, record: dict) -> None:
        if du.is_main_process():
            with open(self.path, "a", encoding="utf-8") as f:
                f.write(json.dumps(record) + "\n")

    def close(self) -> None:
        pass


def numeric_items(record: dict) -> dict:
    """The record's int and float values (not bools), by key."""
    return {k: v for k, v in record.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}


class TensorBoardWriter:
    """TensorBoard scalars in ``folder`` (rank 0 only; ``tensorboard --logdir folder``).

    ``train`` records become ``train/<key>`` (losses, ``lr``, ``images_per_s``), ``eval`` records
    ``<split>/<key>`` (``val/unseen_ap50``, ...), warnings text; the step is the record's ``iter``.
    ``purge_after``: a run resumed at that iteration drops the events written after it.
    :class:`~detector.errors.ConfigError` when the optional ``tensorboard`` package is missing.
    """

    SKIP = ("iter", "epoch", "time_s")

    def __init__(self, folder: str, purge_after: int = 0):
        self.folder = folder
        self._writer = None
        if du.is_main_process():
            check_tensorboard()
            from torch.utils.tensorboard import SummaryWriter

            # A resumed run drops the events past its checkpoint, as metrics.jsonl drops its lines.
            self._writer = SummaryWriter(folder, purge_step=purge_after + 1 if purge_after else None)

    def write(self, record: dict) -> None:
        if self._writer is None:
            return
        step = int(record.get("iter", 0))
        if record.get("type") == "warning":
            self._writer.add_text("warning", str(record.get("message", "")), step)
            return
        prefix = "train" if record.get("type") == "train" else str(record.get("split", "eval"))
        for key, value in numeric_items(record).items():
            if key not in self.SKIP:
                self._writer.add_scalar(f"{prefix}/{key}", value, step)
        self._writer.flush()

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None


def check_tensorboard() -> None:
    """:class:`~detector.errors.ConfigError` unless the optional ``tensorboard`` package imports
    (called before a run writes anything)."""
    try:
        import tensorboard  # noqa: F401
        from torch.utils.tensorboard import SummaryWriter  # noqa: F401
    except ImportError as e:
        raise ConfigError("train.tensorboard=true needs the tensorboard package "
                          "(pip install tensorboard, or the package's [tensorboard] extra)") from e
