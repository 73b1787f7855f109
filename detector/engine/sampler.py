"""The training sampler: epoch-seeded shuffling, sharded over processes, restartable mid-epoch."""
from __future__ import annotations

import math
from typing import Iterator

import torch
from torch.utils.data import Sampler


class ShardedSampler(Sampler):
    """Epoch-seeded shuffling, sharded over processes, restartable mid-epoch.

    Each epoch's order is a permutation drawn from ``seed + epoch`` (identical on every process),
    padded to a multiple of ``num_replicas`` and split ``rank::num_replicas``. ``start`` skips the
    first indices of this process's shard (resume inside an epoch) without loading them.
    """

    def __init__(self, size: int, num_replicas: int = 1, rank: int = 0, seed: int = 0, shuffle: bool = True):
        if size <= 0:
            raise ValueError("cannot sample from an empty dataset")
        self.size, self.num_replicas, self.rank = size, num_replicas, rank
        self.seed, self.shuffle = seed, shuffle
        self.epoch = 0
        self.start = 0

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        """Select the epoch's order and the first index of this shard to yield."""
        self.epoch, self.start = epoch, start

    def shard(self) -> list[int]:
        """This process's full index list for the current epoch."""
        if self.shuffle:
            g = torch.Generator().manual_seed(self.seed + self.epoch)
            order = torch.randperm(self.size, generator=g).tolist()
        else:
            order = list(range(self.size))
        total = math.ceil(self.size / self.num_replicas) * self.num_replicas
        order += order[: total - self.size]
        return order[self.rank::self.num_replicas]

    def __iter__(self) -> Iterator[int]:
        return iter(self.shard()[self.start:])

    def __len__(self) -> int:
        return max(math.ceil(self.size / self.num_replicas) - self.start, 0)
