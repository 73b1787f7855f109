"""Fault injection on tools/train.py (tiny config, tiny benchmark in tmp_path, real processes):
SIGKILL in the middle of a checkpoint write, between its write and its rename, and at a random
moment; a disk that refuses a checkpoint write (RLIMIT_FSIZE); a truncated newest checkpoint.
After each, every checkpoint left loads (or is absent), and resuming ends with the weights of the
run that was never interrupted."""
import glob
import json
import os
import resource
import shutil
import signal
import subprocess
import sys

import numpy as np
import torch

from detector.utils.checkpoint import list_checkpoints, load_checkpoint

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TINY = os.path.join(ROOT, "configs", "tiny.yaml")

# Runs tools/train.py with a fault: KILL_MODE=write kills the process half-way through writing the
# KILL_AT-th checkpoint of this process, KILL_MODE=rename after writing it, before renaming it.
KILLER = """
import io, os, signal, sys
sys.path.insert(0, {root!r})
import torch
mode, at, count = os.environ.get("KILL_MODE", ""), int(os.environ.get("KILL_AT", "0")), [0]
real_save, real_replace = torch.save, os.replace

def save(obj, f, *args, **kwargs):
    count[0] += 1
    if mode == "write" and count[0] == at:
        buffer = io.BytesIO()
        real_save(obj, buffer, *args, **kwargs)
        f.write(buffer.getvalue()[: len(buffer.getvalue()) // 2])
        f.flush()
        os.fsync(f.fileno())
        os.kill(os.getpid(), signal.SIGKILL)
    return real_save(obj, f, *args, **kwargs)

def replace(src, dst):
    if mode == "rename" and os.path.basename(dst).startswith("checkpoint_") and count[0] == at:
        os.kill(os.getpid(), signal.SIGKILL)
    return real_replace(src, dst)

torch.save, os.replace = save, replace
from detector_tools.train import main
sys.exit(main(sys.argv[1:]))
"""


def command(tmp, bench, out, *extra):
    killer = tmp / "killer.py"
    killer.write_text(KILLER.format(root=ROOT))
    return [sys.executable, str(killer), "--config", TINY, "--no-progress", "--output-dir", str(out),
            f"data.root={bench}", "train.max_iters=8", "eval.runs=1", *extra]


def env(**faults):
    return dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=ROOT, **faults)


def assert_checkpoints_whole(folder):
    """Every checkpoint file loads: a kill never leaves a half-written one under its real name."""
    for path in list_checkpoints(str(folder)):
        load_checkpoint(path)


def assert_same_final_state(a_folder, b_folder):
    a, b = (load_checkpoint(list_checkpoints(str(f))[-1]) for f in (a_folder, b_folder))
    assert a["iteration"] == b["iteration"] == 8
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    for x, y in zip(a["optimizer"]["state"].values(), b["optimizer"]["state"].values()):
        assert all(torch.equal(x[k], y[k]) for k in x)


def test_sigkill_during_and_around_checkpoint_writes_then_resume_is_exact(bench, reference, tmp_path):
    run = tmp_path / "run"
    cmd = command(tmp_path, bench, run)
    # 1. Killed half-way through writing the second checkpoint (iteration 4).
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env(KILL_MODE="write", KILL_AT="2"), cwd=ROOT)
    assert r.returncode == -signal.SIGKILL
    assert [os.path.basename(p) for p in list_checkpoints(str(run))] == ["checkpoint_00000002.pth"]
    assert glob.glob(str(run / ".checkpoint_00000004.pth.tmp*"))  # the write was cut, under a temporary name
    assert_checkpoints_whole(run)
    # 2. Resumed, then killed after writing checkpoint 4 and before renaming it.
    r = subprocess.run(cmd + ["--resume"], capture_output=True, text=True, timeout=300,
                       env=env(KILL_MODE="rename", KILL_AT="1"), cwd=ROOT)
    assert r.returncode == -signal.SIGKILL
    assert [os.path.basename(p) for p in list_checkpoints(str(run))] == ["checkpoint_00000002.pth"]
    assert len(glob.glob(str(run / ".checkpoint_*.tmp*"))) == 1  # the first one was cleaned at resume
    assert_checkpoints_whole(run)
    # 3. Resumed, then killed at a random moment (reproducible draw).
    delay = np.random.default_rng(18).uniform(1.0, 6.0)
    proc = subprocess.Popen(cmd + ["--resume"], env=env(), cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        proc.wait(timeout=delay)
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert_checkpoints_whole(run)
    # 4. Resumed to the end.
    r = subprocess.run(cmd + ["--resume"], capture_output=True, text=True, timeout=300, env=env(), cwd=ROOT)
    assert r.returncode == 0, r.stderr[-3000:]
    assert_checkpoints_whole(run)
    assert not glob.glob(str(run / ".checkpoint_*"))
    logged = [json.loads(x)["iter"] for x in open(run / "metrics.jsonl") if '"train"' in x]
    assert logged == [2, 4, 6, 8]
    assert_same_final_state(reference, run)


def _limit_file_size():
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # fail the write with EFBIG instead of killing the process
    resource.setrlimit(resource.RLIMIT_FSIZE, (1_000_000, 1_000_000))


def test_a_failing_disk_during_a_checkpoint_write_keeps_the_previous_one(bench, reference, tmp_path):
    run = shutil.copytree(reference, tmp_path / "run")
    r = subprocess.run(command(tmp_path, bench, run, "--resume", "train.max_iters=12"), capture_output=True, text=True,
                       timeout=300, env=env(), cwd=ROOT, preexec_fn=_limit_file_size)
    assert r.returncode == 1 and "Traceback" not in r.stderr
    assert r.stderr.splitlines() == [f"error: cannot write checkpoint {run / 'checkpoint_00000010.pth'}: File too large "
                                     f"(errno 27); the previous checkpoints are intact"]
    kept = [os.path.basename(p) for p in list_checkpoints(str(run))]
    assert kept == ["checkpoint_00000006.pth", "checkpoint_00000008.pth"]
    assert load_checkpoint(str(run / "checkpoint_00000008.pth"))["iteration"] == 8
    assert not glob.glob(str(run / ".checkpoint_*"))


def test_resume_falls_back_past_a_truncated_checkpoint_and_says_so(bench, reference, tmp_path):
    run = shutil.copytree(reference, tmp_path / "run")
    newest = run / "checkpoint_00000008.pth"
    newest.write_bytes(newest.read_bytes()[: newest.stat().st_size // 2])
    r = subprocess.run(command(tmp_path, bench, run, "--resume"), capture_output=True, text=True, timeout=300,
                       env=env(), cwd=ROOT)
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stderr.splitlines() == [f"warning: {newest}: not a readable checkpoint: truncated, corrupted or not a "
                                     f"PyTorch file; resuming from {run / 'checkpoint_00000006.pth'} instead"]
    assert_same_final_state(reference, run)  # 6 -> 8 again, exactly
    assert "resuming from" in (run / "train.log").read_text()
