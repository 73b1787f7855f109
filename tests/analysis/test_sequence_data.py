"""Generators of the sequence tasks: labels on known small cases and invariants of the fixed splits."""
import os
import sys

import numpy as np
import pytest
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

from tools.analysis.sequence_data import (ALPHABET, NUM_ORDERINGS, PAD, PATTERN_LEN, SEQ_LEN,  # noqa: E402
                                          argsort_target, load_task, make_retrieval, make_sort,
                                          ordering_pool, pattern_positions, sort_target)


def test_sort_target_known_cases():
    ordering = np.array([2, 0, 1])
    assert sort_target(np.array([0, 2, 1, 2]), ordering).tolist() == [1, 0, 2, 0]
    assert argsort_target(np.array([0, 2, 1, 2]), ordering).tolist() == [1, 3, 0, 2]
    identity = np.arange(ALPHABET)
    seq = np.array([3, 1, 4, 1, 5, 9, 2, 6, 5, 3])
    assert sort_target(seq, identity).tolist() == seq.tolist()
    assert seq[argsort_target(seq, identity)].tolist() == sorted(seq.tolist())


def test_pattern_positions_known_cases():
    assert pattern_positions(np.array([1, 2, 3, 1, 2, 3]), np.array([1, 2, 3])) == [0, 3]
    assert pattern_positions(np.array([4, 4, 4, 4]), np.array([4, 4])) == [0, 1, 2]
    assert pattern_positions(np.array([1, 2]), np.array([2, 1])) == []


def test_ordering_pool_is_fixed_and_distinct():
    pool = ordering_pool()
    assert pool.shape == (NUM_ORDERINGS, ALPHABET)
    assert len({tuple(p) for p in pool}) == NUM_ORDERINGS
    for p in pool:
        assert sorted(p.tolist()) == list(range(ALPHABET))
    np.testing.assert_array_equal(pool, ordering_pool())


def test_sort_split_labels():
    data = make_sort(50, seed=3)
    pool = {tuple(p) for p in ordering_pool()}
    for cond, cont, tgt in zip(data.conditioning.numpy(), data.content.numpy(), data.target.numpy()):
        assert tuple(cond) in pool
        assert cont.min() >= 0 and cont.max() < ALPHABET
        for sym, t in zip(cont, tgt):
            assert cond[t] == sym  # the target is where the symbol sits in the ordering
        # sorting by the target sorts the sequence by the ordering
        order = np.argsort(tgt, kind="stable")
        assert np.all(np.diff(tgt[order]) >= 0)


def test_retrieval_split_labels():
    data = make_retrieval(200, seed=3)
    assert data.target.shape == (200, 1)
    starts = data.target[:, 0].numpy()
    assert starts.min() >= 0 and starts.max() <= SEQ_LEN - PATTERN_LEN
    assert len(set(starts.tolist())) == SEQ_LEN - PATTERN_LEN + 1  # every start occurs
    for cond, cont, p in zip(data.conditioning.numpy(), data.content.numpy(), starts):
        pattern = cond[:PATTERN_LEN]
        assert np.all(cond[PATTERN_LEN:] == PAD) and np.all(pattern < ALPHABET)
        assert pattern_positions(cont, pattern) == [p]  # present, and only there


@pytest.mark.parametrize("task", ["sort", "retrieval"])
def test_splits_are_fixed_sized_and_disjoint_draws(task):
    train, test = load_task(task)
    assert (len(train), len(test)) == (1000, 200)
    train2, _ = load_task(task)
    assert torch.equal(train.content, train2.content) and torch.equal(train.target, train2.target)
    assert not torch.equal(train.content[:200], test.content)
    with pytest.raises(ValueError):
        load_task("copy")
