"""The losses of the training steps since the last read, kept where they were computed.

Reading a loss (``float(loss)``, ``loss.item()``) makes the host wait until the device has run
every kernel queued before it; doing that every step keeps a GPU idle while Python prepares the next
one. :class:`LossWindow` stacks each step's losses on the device (one small kernel) and copies the
whole window to the host when it is read: at each log line, before a checkpoint is written and at
the end. A non-finite loss is found at that read, named with the iteration it happened at, and
nothing after it is saved (the training loop reads the window before every checkpoint).
"""
from __future__ import annotations

from typing import Optional

import torch

from .utils import dist as du


class LossWindow:
    """Losses of the steps since the last :meth:`read`."""

    def __init__(self):
        self.names: Optional[list] = None
        self.rows: list = []
        self.iterations: list = []

    def add(self, iteration: int, losses: dict) -> None:
        """Keep ``losses`` (``{name: scalar tensor}``, the same names every step) of ``iteration``."""
        if self.names is None:
            self.names = list(losses)
        self.rows.append(torch.stack([losses[k].detach().float() for k in self.names]))
        self.iterations.append(iteration)

    def __len__(self) -> int:
        return len(self.rows)

    def read(self) -> tuple[dict, Optional[tuple[int, float]]]:
        """Empty the window: ``({name: mean over its steps and processes}, first_bad)`` where
        ``first_bad`` is ``(iteration, loss)`` of the first step whose total ``"loss"`` is not finite
        on some process (``None`` when all are finite, on every process). One copy to the host."""
        if not self.rows:
            return {}, None
        values = torch.stack(self.rows)  # [steps, losses]
        total = values[:, self.names.index("loss")]
        finite = torch.isfinite(total)
        if du.is_distributed():  # every process must agree to stop
            finite = du.all_reduce_mean(finite.float()) == 1.0
        host = torch.cat([values.mean(0), finite.float()]).cpu().tolist()
        n = len(self.names)
        means, flags = dict(zip(self.names, host[:n])), host[n:]
        first_bad = None
        if not all(flags):
            step = flags.index(0.0)
            first_bad = (self.iterations[step], float(total[step]))  # a second copy, on the way out only
        self.rows, self.iterations = [], []
        if du.is_distributed():
            means = du.reduce_dict_mean(means)
        return means, first_bad
