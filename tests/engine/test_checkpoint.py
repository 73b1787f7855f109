"""Checkpoints: atomic, rotating, weights_only-loadable, RNG states restored, foreign files refused."""
import os
import random

import numpy as np
import pytest
import torch

from detector.config import to_dict
from detector.models import build_model
from detector.utils.checkpoint import (CheckpointError, checkpoint_state, latest_checkpoint, list_checkpoints,
                                       load_checkpoint, rng_state, save_checkpoint, save_rotating, set_rng_state)


def test_rotation_keeps_the_last_k(tmp_path, tiny_cfg):
    model, _, _ = build_model(tiny_cfg())
    state = checkpoint_state(model, to_dict(tiny_cfg()), iteration=0)
    for it in (2, 4, 6, 8):
        save_rotating(str(tmp_path), it, state, keep=2)
    names = [os.path.basename(p) for p in list_checkpoints(str(tmp_path))]
    assert names == ["checkpoint_00000006.pth", "checkpoint_00000008.pth"]
    assert latest_checkpoint(str(tmp_path)).endswith("checkpoint_00000008.pth")
    assert not [f for f in os.listdir(tmp_path) if ".tmp" in f]


def test_checkpoint_loads_with_weights_only_and_restores_rng(tmp_path, tiny_cfg):
    model, _, _ = build_model(tiny_cfg())
    torch.manual_seed(3)
    np.random.seed(4)
    random.seed(5)
    rng = rng_state()
    expected = (torch.rand(3), np.random.rand(3), [random.random() for _ in range(3)])
    path = save_checkpoint(str(tmp_path / "c.pth"), checkpoint_state(model, to_dict(tiny_cfg()), rng=[rng]))
    state = torch.load(path, weights_only=True)  # no pickled Python objects inside
    assert state["model_class"] == "OneShotDETR"
    set_rng_state(load_checkpoint(path)["rng"][0])
    assert torch.equal(torch.rand(3), expected[0])
    assert np.array_equal(np.random.rand(3), expected[1])
    assert [random.random() for _ in range(3)] == expected[2]


def test_foreign_and_missing_checkpoints_get_clear_errors(tmp_path):
    torch.save({"state_dict": {"w": torch.zeros(2)}}, tmp_path / "other.pth")
    with pytest.raises(CheckpointError, match="not a checkpoint of this project"):
        load_checkpoint(str(tmp_path / "other.pth"))
    torch.save({"model": {}, "model_class": "ResNet", "config": {}}, tmp_path / "resnet.pth")
    with pytest.raises(CheckpointError, match="another model"):
        load_checkpoint(str(tmp_path / "resnet.pth"))
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="not a readable checkpoint"):
        load_checkpoint(str(tmp_path / "junk.pth"))
    with pytest.raises(CheckpointError, match="not found"):
        load_checkpoint(str(tmp_path / "missing.pth"))
