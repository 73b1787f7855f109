"""Every mistake a user makes on the command line: exit code 2, one line on stderr naming the file,
option or key, no traceback, and no half-made output. The tools' ``main(argv)`` (what the console
scripts call) runs in-process for speed; two cases run as real processes."""
import json
import os
import shutil
import subprocess
import sys

import pytest
import torch

import detector_tools.evaluate as evaluate_tool
import detector_tools.train as train_tool
from detector.utils.checkpoint import load_checkpoint

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TINY = os.path.join(ROOT, "configs", "tiny.yaml")


def call(main, *argv):
    """The exit code of a tool's ``main``, argparse's exits included."""
    try:
        rc = main(list(argv))
    except SystemExit as e:
        rc = e.code
    return rc


def one_line_error(capsys, rc, *needles):
    out, err = capsys.readouterr()
    lines = [line for line in err.splitlines() if line.strip()]
    assert rc == 2, (rc, out, err)
    assert len(lines) == 1 and "Traceback" not in err, err
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    return lines[0]


def fresh(bench, out, *extra):
    return ["--config", TINY, "--no-progress", "--output-dir", str(out), f"data.root={bench}", *extra]


def snapshot(folder):
    return {name: open(os.path.join(folder, name), "rb").read() for name in sorted(os.listdir(folder))}


def test_overrides_go_anywhere_and_resume_never_swallows_one():
    args = train_tool.parse_args(["--config", TINY, "a.b=1", "--no-progress", "c.d=2", "--resume", "e.f=3"])
    assert args.resume == train_tool.AUTO and args.no_progress and sorted(args.overrides) == ["a.b=1", "c.d=2", "e.f=3"]
    args = train_tool.parse_args(["--resume", "run/checkpoint_00000004.pth", "train.max_iters=9"])
    assert args.resume == "run/checkpoint_00000004.pth" and args.overrides == ["train.max_iters=9"]


@pytest.mark.parametrize("extra, needles", [
    (["data.dataset=custom", "data.split_file={tmp}/split.txt"], ["split.txt: 'circle-solidd' is not a category"]),
    (["data.dataset=custom", "data.split_file={tmp}/missing.txt"], ["data.split_file: split file not found", "missing.txt"]),
    (["data.train_annotations={tmp}/none.json"], ["annotation file not found", "none.json"]),
    (["train.batch_size=5000"], ["train.batch_size=5000 is larger than the training set"]),
    (["train.lr=["], ["override 'train.lr=['", "not valid YAML"]),
    (["train.epoch=3"], ["unknown config key 'train.epoch'"]),
    (["train.log_every=0"], ["train.log_every=0 must be >= 1"]),
])
def test_train_data_and_config_mistakes(bench, tmp_path, capsys, extra, needles):
    (tmp_path / "split.txt").write_text("circle-solidd\n")
    out = tmp_path / "run"
    rc = call(train_tool.main, *fresh(bench, out, *[e.format(tmp=tmp_path) for e in extra]))
    one_line_error(capsys, rc, *needles)
    assert not out.exists()  # no half-made output folder


def test_a_second_run_into_a_run_folder_is_refused(bench, reference, tmp_path, capsys):
    run = shutil.copytree(reference, tmp_path / "run")
    before = snapshot(run)
    rc = call(train_tool.main, *fresh(bench, run, "train.max_iters=4"))
    one_line_error(capsys, rc, f"{run} already holds a run", "--resume", "--overwrite")
    assert snapshot(run) == before


def test_overwrite_starts_over_and_the_printed_checkpoint_exists(bench, reference, tmp_path, capsys):
    run = shutil.copytree(reference, tmp_path / "run")
    assert call(train_tool.main, *fresh(bench, run, "train.max_iters=4", "--overwrite")) == 0
    out, _ = capsys.readouterr()
    printed = [line.split(": ", 1)[1] for line in out.splitlines() if line.startswith("checkpoint: ")][0]
    assert os.path.isfile(printed) and printed.endswith("checkpoint_00000004.pth")
    assert [json.loads(x)["iter"] for x in open(run / "metrics.jsonl") if '"train"' in x] == [2, 4]  # no mixing
    assert "| unseen |" in out  # the final metrics table
    log = (run / "train.log").read_text()
    assert log.count("training into") == 1 and "| unseen |" in log


@pytest.mark.parametrize("extra, needles", [
    (["--resume", "model.d_model=64"], ["--resume: model.d_model cannot change", "the override asks 64"]),
    (["--config", "{other}", "--resume"], ["other.yaml has model.d_model=64 but the run was trained with 32"]),
    (["--resume", "train.lr=1"], ["train.lr cannot change"]),
])
def test_resume_refuses_changes_that_break_the_weights(reference, tmp_path, capsys, extra, needles):
    run = shutil.copytree(reference, tmp_path / "run")
    other = tmp_path / "other.yaml"
    other.write_text(f"_base_: {TINY}\nmodel:\n  d_model: 64\n")
    before = snapshot(run)
    rc = call(train_tool.main, "--output-dir", str(run), "--no-progress", *[e.format(other=other) for e in extra])
    one_line_error(capsys, rc, *needles)
    assert snapshot(run) == before  # config.yaml not overwritten with the wrong config


def test_resume_uses_the_stored_config_and_takes_a_schedule_override(reference, tmp_path, capsys):
    run = shutil.copytree(reference, tmp_path / "run")
    assert call(train_tool.main, "--output-dir", str(run), "--resume", "train.max_iters=10", "--no-progress") == 0
    out, err = capsys.readouterr()
    assert "resuming" in out and "| unseen |" in out and err == ""
    assert load_checkpoint(str(run / "checkpoint_00000010.pth"))["config"]["train"]["max_iters"] == 10
    assert [json.loads(x)["iter"] for x in open(run / "metrics.jsonl") if '"train"' in x] == [2, 4, 6, 8, 10]
    assert "resuming" in (run / "train.log").read_text()


@pytest.mark.parametrize("argv, needles", [
    (["--output-dir", "{tmp}/nothing", "--resume"], ["--resume: no checkpoint", "nothing"]),
    (["--config", TINY, "--resume", "--overwrite"], ["--resume and --overwrite exclude each other"]),
    (["train.max_iters=3"], ["--config is required"]),
    (["--config", TINY, "--output-dir", "{tmp}/file.txt"], ["output folder", "file.txt: is a file, not a folder"]),
    (["--config", "{tmp}/nope.yaml"], ["config file not found", "nope.yaml"]),
    (["--config", TINY, "--bogus"], ["unrecognized arguments: --bogus"]),
])
def test_train_command_line_mistakes(tmp_path, capsys, argv, needles):
    (tmp_path / "file.txt").write_text("x")
    rc = call(train_tool.main, *[a.format(tmp=tmp_path) for a in argv])
    one_line_error(capsys, rc, *needles)
    assert not (tmp_path / "nothing").exists()


def test_a_nan_loss_is_one_line_and_keeps_the_last_good_checkpoint(bench, tmp_path, capsys, monkeypatch):
    from detector.models.criterion import SetCriterion

    forward, calls = SetCriterion.forward, []

    def poisoned(self, outputs, targets):
        losses = forward(self, outputs, targets)
        calls.append(1)
        return {**losses, "loss": losses["loss"] * float("nan")} if len(calls) == 4 else losses

    monkeypatch.setattr(SetCriterion, "forward", poisoned)
    rc = call(train_tool.main, *fresh(bench, tmp_path / "run"))
    _, err = capsys.readouterr()
    assert rc == 1 and err.count("\n") == 1 and "non-finite loss (nan) at iteration 3" in err and "Traceback" not in err
    assert load_checkpoint(str(tmp_path / "run" / "checkpoint_00000002.pth"))["iteration"] == 2
    assert not (tmp_path / "run" / "checkpoint_00000004.pth").exists()


@pytest.mark.parametrize("kind, needles", [
    ("truncated", ["checkpoint_00000006.pth: not a readable checkpoint: truncated, corrupted or not a PyTorch file"]),
    ("device", ["--device cuda: no CUDA GPU is available"]),
    ("output_file", ["--output-dir", "file.txt: is a file, not a folder"]),
    ("config", ["weights do not fit the model of this config (size mismatch for"]),
])
def test_evaluate_mistakes(reference, tmp_path, capsys, kind, needles):
    if kind == "device" and torch.cuda.is_available():
        pytest.skip("needs a machine without a GPU")
    run = shutil.copytree(reference, tmp_path / "run")
    ckpt = run / "checkpoint_00000006.pth"
    (tmp_path / "file.txt").write_text("x")
    (tmp_path / "wide.yaml").write_text(f"_base_: {TINY}\nmodel:\n  d_model: 64\n")
    argv = ["--checkpoint", str(ckpt), "--output-dir", str(tmp_path / "eval")]
    if kind == "truncated":
        ckpt.write_bytes(ckpt.read_bytes()[:5000])
    argv += {"truncated": [], "device": ["--device", "cuda"], "config": ["--config", str(tmp_path / "wide.yaml")],
             "output_file": ["--output-dir", str(tmp_path / "file.txt")]}[kind]
    one_line_error(capsys, call(evaluate_tool.main, *argv), *needles)
    assert not (tmp_path / "eval").exists()


def run_tool(script, *args):
    return subprocess.run([sys.executable, os.path.join(ROOT, "tools", script), *args], capture_output=True, text=True,
                          timeout=120, cwd=ROOT, env=dict(os.environ, OMP_NUM_THREADS="1"))


def test_real_processes_print_one_line_and_no_traceback(bench, tmp_path, fake_png):
    (tmp_path / "split.txt").write_text("circle-solidd\n")
    r = run_tool("train.py", *fresh(bench, tmp_path / "run", "data.dataset=custom",
                                    f"data.split_file={tmp_path / 'split.txt'}"))
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "Traceback" not in r.stderr
    assert "'circle-solidd' is not a category" in r.stderr and not (tmp_path / "run").exists()
    huge = fake_png(tmp_path / "huge.png", 20000, 20000)
    r = run_tool("infer.py", "--checkpoint", str(tmp_path / "never_read.pth"), "--query", huge, "--support", huge,
                 "--output", str(tmp_path / "out" / "results.json"), "--batch-size", "0")
    assert r.returncode == 2 and r.stderr.strip().endswith("argument --batch-size: must be >= 1, got 0 (see --help)")
    assert r.stderr.count("\n") == 1 and not (tmp_path / "out").exists()


def test_an_override_after_resume_keeps_its_place_among_the_others():
    args = train_tool.parse_args(["--config", TINY, "train.max_iters=8", "--resume", "train.max_iters=12"])
    assert args.resume == train_tool.AUTO and args.overrides == ["train.max_iters=8", "train.max_iters=12"]


def test_the_demo_refuses_a_folder_holding_another_run(reference, tmp_path, capsys):
    import detector_tools.demo as demo_tool

    run = shutil.copytree(reference, tmp_path / "run")
    before = snapshot(run)
    rc = call(demo_tool.main, "--config", TINY, "--output-dir", str(run), "--no-progress", "--no-stage1", "--no-realphoto",
              "eval.runs=1")
    one_line_error(capsys, rc, f"{run} already holds a run", "start over with --overwrite")
    assert snapshot(run) == before
