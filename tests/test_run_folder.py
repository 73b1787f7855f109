"""A run folder belongs to one run: fresh-run refusal, --overwrite limits, resume checkpoint choice
with fallback, and which config keys a resumed run may change."""
import os

import pytest

from detector.config import load_config, to_dict
from detector.errors import CheckpointError, ConfigError, InputError
from detector.run_folder import (check_fresh, clear_run_folder, discard_after, find_resume_checkpoint, resume_config,
                                 start_run_folder)

TINY = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs", "tiny.yaml")


def fake_run(folder, iterations=(2, 4), cfg=None):
    """A run folder with real (tiny-config, weights-free) checkpoints at ``iterations``."""
    from detector.utils.checkpoint import MODEL_CLASS, save_checkpoint

    cfg = cfg or load_config(TINY, [f"train.output_dir={folder}"])
    start_run_folder(cfg, str(folder))
    (folder / "metrics.jsonl").write_text('{"type": "train", "iter": 2}\n')
    for it in iterations:
        save_checkpoint(str(folder / f"checkpoint_{it:08d}.pth"),
                        {"model": {}, "config": to_dict(cfg), "model_class": MODEL_CLASS, "iteration": it})
    return cfg


def test_a_fresh_run_needs_a_missing_or_empty_folder(tmp_path):
    check_fresh(str(tmp_path / "new"))
    (tmp_path / "empty").mkdir()
    check_fresh(str(tmp_path / "empty"))
    fake_run(tmp_path / "run")
    with pytest.raises(InputError, match=r"run already holds a run \(config\.yaml, metrics\.jsonl, 2 checkpoint\(s\), "
                                         r"1 other file\(s\)\); continue it with --resume, or start over with --overwrite"):
        check_fresh(str(tmp_path / "run"))
    check_fresh(str(tmp_path / "run"), overwrite=True)
    (tmp_path / "file").write_text("x")
    with pytest.raises(InputError, match="is a file, not a folder"):
        check_fresh(str(tmp_path / "file"))


def test_overwrite_empties_run_folders_only(tmp_path):
    fake_run(tmp_path / "run")
    clear_run_folder(str(tmp_path / "run"))
    assert os.listdir(tmp_path / "run") == []
    (tmp_path / "home").mkdir()
    (tmp_path / "home" / "thesis.tex").write_text("precious")
    with pytest.raises(InputError, match="--overwrite empties only run folders"):
        check_fresh(str(tmp_path / "home"), overwrite=True)
    with pytest.raises(InputError, match="not a run folder"):
        clear_run_folder(str(tmp_path / "home"))
    assert (tmp_path / "home" / "thesis.tex").read_text() == "precious"


def test_resume_falls_back_past_unreadable_checkpoints_and_says_so(tmp_path):
    fake_run(tmp_path, iterations=(2, 4, 6))
    good = find_resume_checkpoint(str(tmp_path))
    assert good[0].endswith("checkpoint_00000006.pth") and good[2] == []
    data = (tmp_path / "checkpoint_00000006.pth").read_bytes()
    (tmp_path / "checkpoint_00000006.pth").write_bytes(data[: len(data) // 2])  # truncated
    (tmp_path / "checkpoint_00000004.pth").write_bytes(b"\0" * 100)  # corrupted
    path, state, warnings = find_resume_checkpoint(str(tmp_path))
    assert path.endswith("checkpoint_00000002.pth") and state["iteration"] == 2
    assert len(warnings) == 2 and "checkpoint_00000006.pth: not a readable checkpoint" in warnings[0]
    assert warnings[0].endswith("resuming from " + path + " instead")
    (tmp_path / "checkpoint_00000002.pth").write_bytes(b"")
    with pytest.raises(CheckpointError, match=r"none of the 3 checkpoints .* is readable"):
        find_resume_checkpoint(str(tmp_path))
    with pytest.raises(CheckpointError, match="no checkpoint"):
        find_resume_checkpoint(str(tmp_path / "missing"))


def test_a_resumed_run_keeps_its_config_except_schedule_and_logging(tmp_path):
    cfg = fake_run(tmp_path)
    state = {"config": to_dict(cfg)}
    resumed = resume_config(state, "ckpt", ["train.max_iters=220", "train.log_every=5", "eval.runs=3"])
    assert (resumed.train.max_iters, resumed.train.log_every, resumed.eval.runs) == (220, 5, 3)
    assert to_dict(resumed.model) == to_dict(cfg.model)
    assert resume_config(state, "ckpt", [f"data.root={cfg.data.root}"]).data.root == cfg.data.root  # unchanged: fine
    with pytest.raises(ConfigError, match=r"--resume: model\.d_model cannot change in a resumed run \(the run has 32, "
                                          r"the override asks 64\)"):
        resume_config(state, "ckpt", ["model.d_model=64"])
    with pytest.raises(ConfigError, match=r"train\.lr cannot change"):
        resume_config(state, "ckpt", ["train.lr=0.5"])
    other = tmp_path / "other.yaml"
    other.write_text(f"_base_: {TINY}\nmodel:\n  d_model: 64\n")
    with pytest.raises(ConfigError, match=r"other\.yaml has model\.d_model=64 but the run was trained with 32"):
        resume_config(state, "ckpt", [], str(other))
    bad = dict(state, config={**state["config"], "model": {"no_such_key": 1}})
    with pytest.raises(CheckpointError, match="its stored config does not fit this code"):
        resume_config(bad, "ckpt")


def test_discard_after_removes_later_checkpoints_and_stale_temporaries(tmp_path):
    fake_run(tmp_path, iterations=(2, 4, 6))
    (tmp_path / ".checkpoint_00000008.pth.tmp123").write_bytes(b"half")
    dropped = discard_after(str(tmp_path), 4)
    assert [os.path.basename(p) for p in dropped] == ["checkpoint_00000006.pth"]
    assert sorted(f for f in os.listdir(tmp_path) if "checkpoint" in f) == ["checkpoint_00000002.pth",
                                                                          "checkpoint_00000004.pth"]


def test_an_output_path_must_be_a_folder_this_user_can_write(tmp_path, monkeypatch):
    from detector.utils.output_paths import check_output_path

    (tmp_path / "file").write_text("x")
    with pytest.raises(InputError, match=r"^out .*/file: is a file, not a folder$"):
        check_output_path(str(tmp_path / "file"), "out")
    with pytest.raises(InputError, match=r"^out .*/file/a/b: .*/file is a file, not a folder$"):
        check_output_path(str(tmp_path / "file" / "a" / "b"), "out")
    check_output_path(str(tmp_path / "new" / "deeper"), "out")  # missing folders are made later: fine
    assert not (tmp_path / "new").exists()  # and checking makes nothing

    class ReadOnly:
        f_flag = os.ST_RDONLY

    monkeypatch.setattr(os, "access", lambda path, mode: False)
    with pytest.raises(InputError, match=r"^out .*/new/deeper: cannot write there \(in .*\): no permission to write$"):
        check_output_path(str(tmp_path / "new" / "deeper"), "out")
    monkeypatch.setattr(os, "statvfs", lambda path: ReadOnly())
    with pytest.raises(InputError, match=r"^out .*: cannot write there: read-only file system$"):
        check_output_path(str(tmp_path), "out")
