"""A read-only output disk, at the start of a run and in the middle of one.

At the start, on a real read-only file system (a read-only bind mount in a private mount namespace:
``unshare -m``, as root, or ``unshare -rm`` where user namespaces are allowed; skipped where
neither is): every entry point that writes refuses at once, with exit code 2 and one line naming
the folder, before any work. In the middle of a run (an injected ``EROFS`` from the moment a given
checkpoint is written, on any machine): one line and exit code 1, the checkpoints written before
are intact, and resuming once the disk is back ends exactly as the run that never failed."""
import errno
import json
import os
import shutil
import subprocess
import sys

import pytest

from detector.utils.checkpoint import list_checkpoints, load_checkpoint

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TINY = os.path.join(ROOT, "configs", "tiny.yaml")
ENV = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=ROOT)


def read_only_prefix() -> list:
    """The command prefix that runs a shell in a private mount namespace, or [] where none can be made."""
    for prefix in (["unshare", "-m"], ["unshare", "-rm"]):
        try:
            r = subprocess.run(prefix + ["sh", "-c", "mount --bind /tmp /tmp && mount -o remount,bind,ro /tmp && "
                                         "! touch /tmp/.read-only-probe 2>/dev/null"], capture_output=True, timeout=30)
        except (OSError, subprocess.TimeoutExpired):
            continue
        if r.returncode == 0:
            return prefix
    return []


# Runs each case's tool in this one process (one torch import for all), under the read-only mount.
DRIVER = """
import contextlib, io, json, sys
sys.path.insert(0, {root!r})
from detector_tools import evaluate, export, infer, train
tools = {{"train": train.main, "evaluate": evaluate.main, "infer": infer.main, "export": export.main}}
out = {{}}
for name, (tool, argv) in json.loads(sys.argv[1]).items():
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            code = tools[tool](argv)
        except SystemExit as e:
            code = e.code
        except BaseException as e:  # a traceback is what this test looks for
            import traceback
            traceback.print_exc(file=err)
            code = "exception"
    out[name] = {{"code": code, "stderr": err.getvalue()}}
print(json.dumps(out))
"""


def test_every_entry_point_refuses_a_read_only_output_disk_at_once(bench, reference, tmp_path):
    prefix = read_only_prefix()
    if not prefix:
        pytest.skip("no private mount namespace here (needs root or user namespaces) for a read-only mount")
    disk = tmp_path / "disk"
    run = shutil.copytree(reference, disk / "run")
    (disk / "empty").mkdir()
    before = sorted((p.relative_to(disk).as_posix(), p.stat().st_size) for p in disk.rglob("*"))
    ckpt, image = str(run / "checkpoint_00000008.pth"), str(tmp_path / "q.png")
    from PIL import Image

    Image.new("RGB", (64, 64), (120, 80, 40)).save(image)
    fresh = ["--config", TINY, "--no-progress", f"data.root={bench}", "train.max_iters=4", "eval.runs=1"]
    cases = {
        "train fresh, new folder": ("train", fresh + ["--output-dir", str(disk / "new")]),
        "train fresh, empty folder": ("train", fresh + ["--output-dir", str(disk / "empty")]),
        "train --resume": ("train", ["--resume", "--output-dir", str(run), "--no-progress"]),
        "train --resume, longer": ("train", ["--resume", "--output-dir", str(run), "--no-progress", "train.max_iters=12"]),
        "train --overwrite": ("train", fresh + ["--output-dir", str(run), "--overwrite"]),
        "evaluate, default folder": ("evaluate", ["--checkpoint", ckpt]),
        "evaluate --output-dir": ("evaluate", ["--checkpoint", ckpt, "--output-dir", str(disk / "eval")]),
        "oracle --output-dir": ("evaluate", ["--class-agnostic-oracle", "--config", TINY, f"data.root={bench}",
                                             "--output-dir", str(disk / "oracle")]),
        "infer --output": ("infer", ["--checkpoint", ckpt, "--query", image, "--support", image,
                                     "--output", str(disk / "results.json")]),
        "infer --visualize": ("infer", ["--checkpoint", ckpt, "--query", image, "--support", image,
                                        "--output", str(tmp_path / "results.json"), "--visualize", str(disk / "vis")]),
        "export --output": ("export", ["--checkpoint", ckpt, "--output", str(disk / "model.onnx")]),
    }
    driver = tmp_path / "driver.py"
    driver.write_text(DRIVER.format(root=ROOT))
    script = 'mount --bind "$1" "$1" && mount -o remount,bind,ro "$1" && shift && exec "$@"'
    r = subprocess.run(prefix + ["sh", "-c", script, "sh", str(disk), sys.executable, str(driver), json.dumps(cases)],
                       capture_output=True, text=True, timeout=600, env=ENV, cwd=ROOT)
    assert r.returncode == 0, r.stderr[-3000:]
    results = json.loads(r.stdout.strip().splitlines()[-1])
    for name, got in results.items():
        lines = got["stderr"].strip().splitlines()
        assert got["code"] == 2 and len(lines) == 1, (name, got)
        assert lines[0].startswith("error: ") and "cannot write there" in lines[0], (name, lines)
        assert "read-only file system" in lines[0] and str(disk) in lines[0], (name, lines)
    assert not (tmp_path / "results.json").exists()  # refused before any work, the writable output included
    after = sorted((p.relative_to(disk).as_posix(), p.stat().st_size) for p in disk.rglob("*"))
    assert after == before


# tools/train.py whose writes under RUN_FOLDER fail with EROFS once the READ_ONLY_AFTER-th checkpoint
# of this process is in place (renamed; a disk remounted read-only mid-run): new files, appends, renames,
# removals and new folders there. Files opened before keep working, as on a real remount they would not.
READ_ONLY_LATER = """
import builtins, errno, os, sys
sys.path.insert(0, {root!r})
import torch
folder, after, saved = os.path.abspath(os.environ["RUN_FOLDER"]), int(os.environ["READ_ONLY_AFTER"]), [0]
real_replace, real_open = os.replace, builtins.open

def refuse(path):
    path = os.path.abspath(os.fspath(path))
    if saved[0] >= after and (path == folder or path.startswith(folder + os.sep)):
        raise OSError(errno.EROFS, os.strerror(errno.EROFS), path)

def replace(src, dst):
    refuse(src)
    refuse(dst)
    real_replace(src, dst)
    saved[0] += os.path.basename(dst).startswith("checkpoint_")

def opener(file, mode="r", *args, **kwargs):
    if isinstance(file, (str, bytes, os.PathLike)) and any(c in mode for c in "wax+"):
        refuse(file)
    return real_open(file, mode, *args, **kwargs)

def guard(real, n=1):
    def call(*args, **kwargs):
        for p in args[:n]:
            refuse(p)
        return real(*args, **kwargs)
    return call

builtins.open, os.replace, os.rename = opener, replace, guard(os.rename, 2)
os.remove, os.unlink, os.mkdir, os.rmdir = guard(os.remove), guard(os.unlink), guard(os.mkdir), guard(os.rmdir)
from detector_tools.train import main
sys.exit(main(sys.argv[1:]))
"""


def test_a_disk_turned_read_only_mid_run_stops_with_one_line_and_resume_is_exact(bench, reference, tmp_path):
    wrapper = tmp_path / "read_only_later.py"
    wrapper.write_text(READ_ONLY_LATER.format(root=ROOT))
    run = tmp_path / "run"
    cmd = [sys.executable, str(wrapper), "--config", TINY, "--no-progress", "--output-dir", str(run),
           f"data.root={bench}", "train.max_iters=8", "eval.runs=1"]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=ROOT,
                       env=dict(ENV, RUN_FOLDER=str(run), READ_ONLY_AFTER="2"))
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 1 and len(lines) == 1 and "Traceback" not in r.stderr, r.stderr[-3000:]
    # The first write after checkpoint 4 fails (metrics.jsonl's next record or checkpoint 6), whichever comes first.
    assert lines[0].startswith("error: cannot write ") and f"{run}{os.sep}" in lines[0], lines
    assert f"Read-only file system (errno {errno.EROFS})" in lines[0], lines
    assert [os.path.basename(p) for p in list_checkpoints(str(run))] == ["checkpoint_00000002.pth",
                                                                         "checkpoint_00000004.pth"]
    assert load_checkpoint(str(run / "checkpoint_00000004.pth"))["iteration"] == 4
    # The disk is back: resume ends with the weights of the run that never failed.
    r = subprocess.run(cmd + ["--resume"], capture_output=True, text=True, timeout=300, cwd=ROOT,
                       env=dict(ENV, RUN_FOLDER=str(run), READ_ONLY_AFTER="1000"))
    assert r.returncode == 0, r.stderr[-3000:]
    import torch

    a, b = (load_checkpoint(list_checkpoints(str(f))[-1]) for f in (reference, run))
    assert a["iteration"] == b["iteration"] == 8
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    logged = [json.loads(x)["iter"] for x in open(run / "metrics.jsonl") if '"train"' in x]
    assert logged == [2, 4, 6, 8]
