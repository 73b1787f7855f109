"""The losses of the training steps since the last log line, kept where they were computed.

Reading a loss (``float(loss)``, ``loss.item()``) makes the host wait until the device has run
every kernel queued before it; doing that every step keeps a GPU idle while Python prepares the next
one. :class:`LossWindow` stacks each step's losses on the device (one small kernel) and copies the
pending steps to the host only when asked: :meth:`LossWindow.check` before a checkpoint or an
evaluation (is every loss finite?) and :meth:`LossWindow.take` at a log line (the means since the
previous log line, whatever was checked in between). A non-finite loss is found at the first of
these after it, named with the iteration it happened at; the training loop checks before every
checkpoint, so none is written after it.
"""
from __future__ import annotations

import math
from typing import Optional

import torch

from .utils import dist as du


class LossWindow:
    """Losses of the steps since the last :meth:`take`."""

    def __init__(self):
        self.names: Optional[list] = None
        self.rows: list = []  # on the device, not read yet
        self.iterations: list = []
        self.sums: Optional[list] = None  # read, since the last take
        self.count = 0

    def add(self, iteration: int, losses: dict) -> None:
        """Keep ``losses`` (``{name: scalar tensor}``, the same names every step) of ``iteration``."""
        if self.names is None:
            self.names = list(losses)
        self.rows.append(torch.stack([losses[k].detach().float() for k in self.names]))
        self.iterations.append(iteration)

    def __len__(self) -> int:
        return len(self.rows) + self.count

    def check(self) -> Optional[tuple[int, Optional[float]]]:
        """Read the pending steps (one copy to the host); ``(iteration, loss)`` of the first one
        whose total ``"loss"`` is not finite on some process (``loss`` is ``None`` when it is finite
        on this one), else ``None``. Every process must call it at the same points."""
        if not self.rows:  # (the processes step in lockstep: all have rows or none)
            return None
        n = len(self.names)
        values = torch.stack(self.rows)  # [steps, losses]
        total = values[:, self.names.index("loss")]
        finite = torch.isfinite(total).float()
        if du.is_distributed():  # every process must agree to stop
            finite = du.all_reduce_mean(finite)
        host = torch.cat([values.sum(0), finite]).cpu().tolist()
        sums, flags = host[:n], host[n:]
        bad = None
        if any(f != 1.0 for f in flags):
            step = next(i for i, f in enumerate(flags) if f != 1.0)
            local = float(total[step])  # a second copy, on the way out only
            bad = (self.iterations[step], None if math.isfinite(local) else local)
        self.sums = sums if self.sums is None else [a + b for a, b in zip(self.sums, sums)]
        self.count += len(self.rows)
        self.rows, self.iterations = [], []
        return bad

    def take(self) -> tuple[dict, Optional[tuple[int, Optional[float]]]]:
        """:meth:`check`, then ``({name: mean over the steps since the last take, averaged over
        processes}, first_bad)``; starts a new window."""
        bad = self.check()
        means = {k: s / self.count for k, s in zip(self.names, self.sums)} if self.count else {}
        self.sums, self.count = None, 0
        if du.is_distributed() and means:
            means = du.reduce_dict_mean(means)
        return means, bad
