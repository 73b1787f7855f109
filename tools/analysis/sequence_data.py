"""The paper's two synthetic sequence tasks (docs/PAPER_NOTES.md section 2), as fixed-seed tensors.

Every example is a pair of equal-length token sequences and a target:

* ``conditioning [n]`` -- the sequence the keys come from in indirect attention (the ordering, or
  the retrieval pattern padded with :data:`PAD`);
* ``content [n]`` -- the sequence the values come from (the symbols to sort, or the sequence to
  search);
* ``target [Q]`` -- for each output slot, a position on the shared grid ``0 .. n-1`` (in
  ``conditioning`` for sorting, in ``content`` for retrieval).

Sorting by a given ordering (``Q = n = 10``): ``content`` holds 10 symbols drawn with replacement
from an alphabet of 10; ``conditioning`` is one of a fixed pool of 5 permutations of the alphabet,
listed first-to-last. The output for each symbol of ``content`` is its index in the ordering (the
position of that symbol in ``conditioning``), i.e. the key by which it is sorted; accuracy is per
symbol. (The harder reading -- slot ``i`` outputs the index in ``content`` of the ``i``-th symbol of
the sorted sequence -- is :func:`argsort_target`; see docs/RESULTS.md for why we do not train on it.)

Retrieval (``Q = 1``): a pattern of 3 digits overwrites positions ``p .. p+2`` of a random
length-10 digit sequence (``content``), ``p`` uniform in ``0..7``; ``conditioning`` is the pattern
followed by 7 :data:`PAD` tokens. The other digits are redrawn (a bounded number of times) until the
pattern occurs only at ``p``, so the answer is unique. The target is ``p``.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

ALPHABET = 10
PAD = ALPHABET          # token id of padding; the embedding table has ALPHABET + 1 rows
SEQ_LEN = 10
NUM_ORDERINGS = 5
PATTERN_LEN = 3
POOL_SEED = 1234        # the ordering pool is part of the task definition, not of a run
TRAIN_SEED, TEST_SEED = 0, 1
MAX_REDRAWS = 1000


@dataclass
class SequenceTaskData:
    """A task split: ``conditioning, content [N, n]`` (long), ``target [N, Q]`` (long)."""

    conditioning: torch.Tensor
    content: torch.Tensor
    target: torch.Tensor

    def __len__(self) -> int:
        return self.target.shape[0]


def ordering_pool(num: int = NUM_ORDERINGS, seed: int = POOL_SEED) -> np.ndarray:
    """The fixed pool of reference orderings, ``[num, ALPHABET]`` permutations of the alphabet."""
    rng = np.random.default_rng(seed)
    return np.stack([rng.permutation(ALPHABET) for _ in range(num)])


def sort_target(sequence: np.ndarray, ordering: np.ndarray) -> np.ndarray:
    """Index in ``ordering`` of each symbol of ``sequence`` (its sort key).

    ``ordering`` lists the alphabet first-to-last. Example: ordering ``[2, 0, 1]`` and sequence
    ``[0, 2, 1, 2]`` give ``[1, 0, 2, 0]``.
    """
    rank = np.empty(len(ordering), dtype=np.int64)
    rank[ordering] = np.arange(len(ordering))
    return rank[sequence]


def argsort_target(sequence: np.ndarray, ordering: np.ndarray) -> np.ndarray:
    """Stable argsort of ``sequence`` by :func:`sort_target`: slot ``i`` holds the index in
    ``sequence`` of the ``i``-th symbol of the sorted sequence (ties in input order).

    Example: ordering ``[2, 0, 1]`` and sequence ``[0, 2, 1, 2]`` give ``[1, 3, 0, 2]``.
    """
    return np.argsort(sort_target(sequence, ordering), kind="stable")


def pattern_positions(sequence: np.ndarray, pattern: np.ndarray) -> list[int]:
    """All start indices where ``pattern`` occurs in ``sequence``."""
    m = len(pattern)
    return [p for p in range(len(sequence) - m + 1) if np.array_equal(sequence[p:p + m], pattern)]


def make_sort(num: int, seed: int, pool: np.ndarray | None = None, target_fn=sort_target) -> SequenceTaskData:
    """``num`` sorting examples from ``numpy.random.default_rng(seed)``; ``target_fn`` is
    :func:`sort_target` (trained on) or :func:`argsort_target`."""
    pool = ordering_pool() if pool is None else pool
    rng = np.random.default_rng(seed)
    cond, cont, tgt = [], [], []
    for _ in range(num):
        ordering = pool[rng.integers(len(pool))]
        sequence = rng.integers(0, ALPHABET, SEQ_LEN)
        cond.append(ordering)
        cont.append(sequence)
        tgt.append(target_fn(sequence, ordering))
    return SequenceTaskData(torch.as_tensor(np.stack(cond)), torch.as_tensor(np.stack(cont)),
                            torch.as_tensor(np.stack(tgt)))


def make_retrieval(num: int, seed: int) -> SequenceTaskData:
    """``num`` retrieval examples from ``numpy.random.default_rng(seed)``."""
    rng = np.random.default_rng(seed)
    cond, cont, tgt = [], [], []
    for _ in range(num):
        pattern = rng.integers(0, ALPHABET, PATTERN_LEN)
        start = int(rng.integers(0, SEQ_LEN - PATTERN_LEN + 1))
        for _ in range(MAX_REDRAWS):
            sequence = rng.integers(0, ALPHABET, SEQ_LEN)
            sequence[start:start + PATTERN_LEN] = pattern
            if pattern_positions(sequence, pattern) == [start]:
                break
        else:
            raise RuntimeError(f"no sequence with a unique occurrence of {pattern} after {MAX_REDRAWS} draws")
        cond.append(np.concatenate([pattern, np.full(SEQ_LEN - PATTERN_LEN, PAD)]))
        cont.append(sequence)
        tgt.append([start])
    return SequenceTaskData(torch.as_tensor(np.stack(cond)), torch.as_tensor(np.stack(cont)),
                            torch.as_tensor(np.array(tgt, dtype=np.int64)))


TASKS = {"sort": make_sort, "retrieval": make_retrieval}
NUM_SLOTS = {"sort": SEQ_LEN, "retrieval": SEQ_LEN}  # object queries per task
CHANCE = {"sort": 1.0 / SEQ_LEN, "retrieval": 1.0 / (SEQ_LEN - PATTERN_LEN + 1)}


def load_task(task: str, num_train: int = 1000, num_test: int = 200) -> tuple[SequenceTaskData, SequenceTaskData]:
    """The fixed train and test splits of ``task`` (``"sort"`` or ``"retrieval"``)."""
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}; choose from {sorted(TASKS)}")
    return TASKS[task](num_train, TRAIN_SEED), TASKS[task](num_test, TEST_SEED)
