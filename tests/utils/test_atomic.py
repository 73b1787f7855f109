"""Atomic writes (detector.utils.atomic): the content lands whole, no temporary file is left behind,
and a failing write leaves an existing file as it was."""
import errno
import fnmatch
import json
import os

import pytest

from detector.utils import atomic
from detector.utils.atomic import (atomic_open, atomic_path, temporary_path, temporary_pattern, write_bytes, write_json,
                                   write_text)


def test_each_writer_leaves_the_content_and_nothing_else(tmp_path):
    assert write_bytes(str(tmp_path / "a.bin"), b"\x00\x01bytes") == str(tmp_path / "a.bin")
    write_text(str(tmp_path / "b.txt"), "text, ünïcode\n")
    write_json(str(tmp_path / "c.json"), {"boxes": [[1, 2, 3, 4]], "score": 0.5})
    assert (tmp_path / "a.bin").read_bytes() == b"\x00\x01bytes"
    assert (tmp_path / "b.txt").read_text(encoding="utf-8") == "text, ünïcode\n"
    assert json.loads((tmp_path / "c.json").read_text()) == {"boxes": [[1, 2, 3, 4]], "score": 0.5}
    assert sorted(os.listdir(tmp_path)) == ["a.bin", "b.txt", "c.json"]


def test_a_write_replaces_an_existing_file_and_creates_a_missing_folder(tmp_path):
    path = tmp_path / "out.json"
    path.write_text("old")
    write_json(str(path), [1, 2])
    assert json.loads(path.read_text()) == [1, 2]
    nested = tmp_path / "new" / "folder" / "r.txt"
    write_text(str(nested), "x")
    assert nested.read_text() == "x" and os.listdir(tmp_path / "new" / "folder") == ["r.txt"]


def test_the_temporary_file_is_hidden_in_the_same_folder_and_matches_its_pattern(tmp_path):
    path = str(tmp_path / "checkpoint_00000004.pth")
    with atomic_open(path, "wb") as f:
        seen = f.name
        assert not os.path.exists(path)  # nothing under the real name before the block ends
    assert seen == temporary_path(path) and os.path.dirname(seen) == str(tmp_path)
    assert os.path.basename(seen).startswith(".") and fnmatch.fnmatch(os.path.basename(seen),
                                                                       temporary_pattern("checkpoint_*.pth"))
    assert os.listdir(tmp_path) == ["checkpoint_00000004.pth"]


def test_an_exception_while_writing_leaves_no_temporary_and_no_file(tmp_path):
    path = str(tmp_path / "r.json")
    with pytest.raises(RuntimeError, match="the writer failed"):
        with atomic_open(path, "w", encoding="utf-8") as f:
            f.write('{"half": ')
            raise RuntimeError("the writer failed")
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("failure", ["writer", "unserialisable", "disk", "rename"])
def test_an_existing_file_is_untouched_when_the_write_fails(tmp_path, monkeypatch, failure):
    path = tmp_path / "results.json"
    path.write_text('["previous"]')
    if failure == "writer":
        with pytest.raises(KeyboardInterrupt):  # not only Exceptions: an interrupted write is dropped too
            with atomic_open(str(path), "w") as f:
                f.write("partial")
                raise KeyboardInterrupt
    elif failure == "unserialisable":
        with pytest.raises(TypeError):
            write_json(str(path), {"ok": 1, "bad": object()})  # fails half-way through the dump
    else:
        def refuse(*args, **kwargs):
            raise OSError(errno.ENOSPC, "No space left on device")

        monkeypatch.setattr(os, "fsync" if failure == "disk" else "replace", refuse)
        with pytest.raises(OSError, match="No space left on device"):
            write_json(str(path), ["new"])
        monkeypatch.undo()
    assert path.read_text() == '["previous"]'
    assert os.listdir(tmp_path) == ["results.json"]


def test_atomic_path_serves_writers_that_take_a_path(tmp_path):
    path = tmp_path / "model.onnx"
    path.write_bytes(b"old graph")
    with pytest.raises(ValueError, match="disagrees"):
        with atomic_path(str(path)) as tmp:
            with open(tmp, "wb") as f:
                f.write(b"a graph that fails its check")
            assert open(tmp, "rb").read() == b"a graph that fails its check"  # readable before the rename
            raise ValueError("onnxruntime disagrees")
    assert path.read_bytes() == b"old graph" and os.listdir(tmp_path) == ["model.onnx"]
    with atomic_path(str(path)) as tmp:
        with open(tmp, "wb") as f:
            f.write(b"new graph")
    assert path.read_bytes() == b"new graph" and os.listdir(tmp_path) == ["model.onnx"]


def test_only_write_modes_are_accepted(tmp_path):
    with pytest.raises(ValueError, match="mode must be 'wb' or 'w'"):
        with atomic_open(str(tmp_path / "x"), "a"):
            pass
    assert os.listdir(tmp_path) == []


def test_the_module_is_the_one_place_that_renames(tmp_path):
    """The checkpoint, export and results writers go through this module (no rename of their own)."""
    import inspect

    import detector.export
    import detector.file_inference
    import detector.utils.checkpoint

    for module in (detector.utils.checkpoint, detector.export, detector.file_inference):
        assert "os.replace" not in inspect.getsource(module), module.__name__
    assert "os.replace" in inspect.getsource(atomic)
