"""Checkpoints: atomic, rotating, weights_only-loadable, RNG states restored, foreign files refused."""
import os
import random

import numpy as np
import pytest
import torch

from detector.config import to_dict
from detector.models import build_model
from detector.utils.checkpoint import (CheckpointError, checkpoint_state, latest_checkpoint, list_checkpoints,
                                       load_checkpoint, rng_state, save_checkpoint, save_rotating, set_rng_state,
                                       weights_digest)


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


def test_rotation_never_deletes_the_checkpoint_it_just_wrote(tmp_path, tiny_cfg):
    """A folder holding checkpoints of later iterations (an abandoned run) used to lose the new one."""
    model, _, _ = build_model(tiny_cfg())
    state = checkpoint_state(model, to_dict(tiny_cfg()), iteration=0)
    for it in (2, 20):
        save_rotating(str(tmp_path), it, state, keep=2)
    path = save_rotating(str(tmp_path), 4, state, keep=1)
    assert os.path.isfile(path) and path.endswith("checkpoint_00000004.pth")
    names = [os.path.basename(p) for p in list_checkpoints(str(tmp_path))]
    assert names == ["checkpoint_00000004.pth", "checkpoint_00000020.pth"]  # older ones rotated, later ones kept


def test_a_failing_disk_leaves_the_previous_checkpoint_and_no_temporary(tmp_path, tiny_cfg, monkeypatch):
    import errno

    from detector.errors import CheckpointWriteError

    model, _, _ = build_model(tiny_cfg())
    state = checkpoint_state(model, to_dict(tiny_cfg()), iteration=2)
    save_rotating(str(tmp_path), 2, state, keep=2)
    real_save = torch.save

    def full_disk(obj, f):
        f.write(b"partial")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(torch, "save", full_disk)
    with pytest.raises(CheckpointWriteError, match=r"cannot write checkpoint .*checkpoint_00000004\.pth: No space left "
                                                   r"on device \(errno 28\); the previous checkpoints are intact"):
        save_rotating(str(tmp_path), 4, state, keep=2)
    monkeypatch.setattr(torch, "save", real_save)
    assert sorted(os.listdir(tmp_path)) == ["checkpoint_00000002.pth"]
    assert load_checkpoint(str(tmp_path / "checkpoint_00000002.pth"))["iteration"] == 2


def test_truncated_and_corrupted_checkpoints_read_as_one_line(tmp_path, tiny_cfg):
    model, _, _ = build_model(tiny_cfg())
    path = save_checkpoint(str(tmp_path / "c.pth"), checkpoint_state(model, to_dict(tiny_cfg())))
    data = open(path, "rb").read()
    (tmp_path / "truncated.pth").write_bytes(data[: len(data) // 3])
    corrupted = bytearray(data)
    corrupted[100:400] = b"\xff" * 300  # zip entries' headers
    (tmp_path / "corrupted.pth").write_bytes(bytes(corrupted))
    (tmp_path / "empty.pth").write_bytes(b"")
    (tmp_path / "no_signature.pth").write_bytes(b"\0" * 4 + data[4:])
    for name, message in (("truncated", "truncated, corrupted or not a PyTorch file"),
                          ("corrupted", "not a readable checkpoint: corrupted ("),
                          ("empty", "empty or truncated"), ("no_signature", "truncated, corrupted or not a PyTorch")):
        with pytest.raises(CheckpointError) as err:
            load_checkpoint(str(tmp_path / f"{name}.pth"))
        text = str(err.value)
        assert text.startswith(str(tmp_path / f"{name}.pth")) and message in text
        assert "\n" not in text and "trusted source" not in text and "miniz" not in text


def _flip_a_byte_inside_the_largest_tensor(path) -> None:
    """Change one byte in the middle of the largest tensor record of a torch zip file, as a bad disk
    or copy would: the zip still opens and torch.load does not notice."""
    import struct
    import zipfile

    with zipfile.ZipFile(path) as z:
        info = max((i for i in z.infolist() if "/data/" in i.filename), key=lambda i: i.file_size)
    with open(path, "r+b") as f:
        f.seek(info.header_offset + 26)
        name_len, extra_len = struct.unpack("<HH", f.read(4))
        where = info.header_offset + 30 + name_len + extra_len + info.file_size // 2
        f.seek(where)
        byte = f.read(1)
        f.seek(where)
        f.write(bytes([byte[0] ^ 0x10]))


def test_a_changed_byte_inside_a_tensor_is_refused_naming_the_file(tmp_path, tiny_cfg):
    model, _, _ = build_model(tiny_cfg())
    path = save_checkpoint(str(tmp_path / "c.pth"), checkpoint_state(model, to_dict(tiny_cfg())))
    assert load_checkpoint(path)["weights_sha256"]  # intact: loads
    _flip_a_byte_inside_the_largest_tensor(path)
    torch.load(path, weights_only=True)  # the format itself does not see the change
    with pytest.raises(CheckpointError, match=r"c\.pth: damaged: its weights do not match the digest"):
        load_checkpoint(path)


def test_non_finite_weights_are_refused_at_load(tmp_path, tiny_cfg):
    model, _, _ = build_model(tiny_cfg())
    state = checkpoint_state(model, to_dict(tiny_cfg()))
    name = next(k for k, v in state["model"].items() if v.is_floating_point() and v.numel() > 1)
    state["model"][name].view(-1)[1] = float("nan")
    state["weights_sha256"] = weights_digest(state["model"])  # written so by a run that diverged
    path = save_checkpoint(str(tmp_path / "nan.pth"), state)
    with pytest.raises(CheckpointError, match=f"weight {name} holds NaN or inf"):
        load_checkpoint(path)


def test_a_checkpoint_without_a_digest_still_loads(tmp_path, tiny_cfg):
    """Files written before the digest existed load as before (their tensors are still checked for NaN)."""
    model, _, _ = build_model(tiny_cfg())
    state = checkpoint_state(model, to_dict(tiny_cfg()))
    del state["weights_sha256"]
    path = save_checkpoint(str(tmp_path / "old.pth"), state)
    assert "weights_sha256" not in load_checkpoint(path)
