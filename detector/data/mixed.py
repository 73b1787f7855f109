"""Replay: a training set whose items are, with a fixed probability, items of a second set.

Stage 2 (one-shot training) can keep drawing stage 1's items (``data.replay_config``,
``data.replay_share``) so that what stage 1 taught (look-alikes in real photos) is not forgotten
while the model learns the one-shot task on other data.
"""
from __future__ import annotations

import numpy as np
from torch.utils.data import Dataset

REPLAY_STREAM = 11  # the random stream of the replay draws, apart from the sets' own


class MixedDataset(Dataset):
    """``len(primary)`` items per epoch; item ``i`` is ``secondary[j]`` (``j`` drawn at random) with
    probability ``share``, else ``primary[i]``. Draws use ``default_rng([seed, epoch,
    REPLAY_STREAM, i])``, so an epoch's mix is fixed and a resumed run sees the same items.

    Args:
        primary, secondary: item datasets with ``set_epoch`` (e.g. :class:`OneShotDataset`), whose
            items have the same keys.
        share: probability in [0, 1] that an item comes from ``secondary``.
        seed: non-negative base seed.
    """

    def __init__(self, primary, secondary, share: float, seed: int = 0):
        if not 0.0 <= share <= 1.0:
            raise ValueError(f"share must be in [0, 1], got {share}")
        if len(secondary) == 0:
            raise ValueError("the replayed set has no items")
        self.primary, self.secondary, self.share, self.seed, self.epoch = primary, secondary, float(share), int(seed), 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)
        self.primary.set_epoch(epoch)
        self.secondary.set_epoch(epoch)

    def __len__(self) -> int:
        return len(self.primary)

    def source(self, index: int) -> tuple[str, int]:
        """``("primary", index)`` or ``("secondary", j)``: where item ``index`` of this epoch comes from."""
        rng = np.random.default_rng([self.seed, self.epoch, REPLAY_STREAM, int(index)])
        if rng.random() < self.share:
            return "secondary", int(rng.integers(len(self.secondary)))
        return "primary", int(index)

    def __getitem__(self, index: int) -> dict:
        which, j = self.source(index)
        return (self.secondary if which == "secondary" else self.primary)[j]
