"""Fault injection on tools/train.py (tiny config, tiny benchmark in tmp_path, real processes):
SIGKILL in the middle of a checkpoint write, between its write and its rename, at one random
moment, and at 20 seeded random moments of one run (start-up, training, checkpoint writes, final
evaluation); a disk that refuses a checkpoint write (RLIMIT_FSIZE); a truncated newest checkpoint.
After each, every checkpoint left loads (or is absent), and resuming ends with the weights (and
the logged losses) of the run that was never interrupted."""
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


# Forks tools/train.py's main from a process that imported torch once (and ran nothing in it), so a
# launch costs no import. The first run goes uninterrupted; it gives the times of start-up S, of the
# N training iterations T, and of what follows them E (final evaluation, metrics, curves). A launch
# that resumes from iteration k lives about S + T (N - k) / N + E. Then KILLS launches are each
# SIGKILLed after a seeded uniform delay: over its start-up and remaining training for all but the
# last AT_END, over its whole expected life for those. Then one launch runs to the end. Each launch
# does what a user would: --resume a folder with a checkpoint, --overwrite a run folder without one,
# a fresh start otherwise. A forked checker loads every checkpoint left after each kill.
SUPERVISOR = """
import json, os, signal, sys, time
sys.path.insert(0, {root!r})
import numpy as np
import torch  # noqa: F401  (imported once, before any fork, as is what train imports on its way)
import matplotlib.pyplot, timm  # noqa: F401,E401
import detector.engine, detector.data, detector.evaluation, detector.models.build, detector.utils.console_log  # noqa
from detector.run_folder import is_run_folder
from detector.utils.checkpoint import list_checkpoints, load_checkpoint
from detector_tools.train import main

spec = json.loads(sys.argv[1])

def child(fn, log):
    pid = os.fork()
    if pid:
        return pid
    fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    code = 1
    try:
        code = fn()
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else 1
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code or 0)

def wait(pid, seconds, watch=None):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return os.waitstatus_to_exitcode(status)
        if watch:
            watch()
        time.sleep(0.005)
    return None

def newest(folder):
    found = list_checkpoints(folder)
    return int(os.path.basename(found[-1])[11:19]) if found else 0

def launch(folder, log):
    how = ["--resume"] if list_checkpoints(folder) else ["--overwrite"] if is_run_folder(folder) else []
    args = spec["argv"] + ["--output-dir", folder] + how
    return child(lambda: main(args), log), (how or ["fresh"])[0]

def whole(folder, log):
    def check():
        for path in list_checkpoints(folder):
            load_checkpoint(path)
        return 0
    return wait(child(check, log), 120) == 0

start, trained = time.monotonic(), []
pid, _ = launch(spec["calibration"], spec["log"])
iters = spec["iters"]
watch = lambda: trained or newest(spec["calibration"]) < iters or trained.append(time.monotonic() - start)
assert wait(pid, 300, watch) == 0, "the uninterrupted forked run failed"
duration = time.monotonic() - start
records = [json.loads(x) for x in open(os.path.join(spec["calibration"], "metrics.jsonl")) if '"train"' in x]
training = records[-1]["time_s"]
startup, after = trained[0] - training, duration - trained[0]
rng, launches = np.random.default_rng(spec["seed"]), []
for i in range(spec["kills"]):
    at = newest(spec["run"])
    life = startup + training * (iters - at) / iters + (after if i >= spec["kills"] - spec["at_end"] else 0.0)
    delay = rng.uniform(0.0, life)
    pid, how = launch(spec["run"], spec["log"])
    code = wait(pid, delay)
    if code is None:
        os.kill(pid, signal.SIGKILL)
        code = wait(pid, 60)
    launches.append({{"from": at, "how": how, "delay": round(float(delay), 3), "code": code,
                      "to": newest(spec["run"]), "whole": whole(spec["run"], spec["log"])}})
pid, how = launch(spec["run"], spec["log"])
final = {{"from": newest(spec["run"]), "how": how, "code": wait(pid, 300)}}
json.dump({{"startup": startup, "training": training, "after": after, "launches": launches, "final": final}},
          open(spec["report"], "w"), indent=1)
"""


def train_records(folder):
    """The ``train`` lines of ``metrics.jsonl`` without their timings: the losses and learning rates."""
    rows = [json.loads(x) for x in open(folder / "metrics.jsonl") if '"train"' in x]
    return [{k: v for k, v in r.items() if k not in ("time_s", "images_per_s")} for r in rows]


def evaluation(folder):
    return {k: v for k, v in json.loads((folder / "metrics.json").read_text()).items() if k != "eval_time_s"}


def test_sigkill_at_20_random_moments_then_resume_ends_with_the_uninterrupted_losses(bench, tmp_path):
    supervisor = tmp_path / "supervisor.py"
    supervisor.write_text(SUPERVISOR.format(root=ROOT))
    spec = {"argv": ["--config", TINY, "--no-progress", f"data.root={bench}", "train.max_iters=40", "eval.runs=1"],
            "calibration": str(tmp_path / "uninterrupted"), "run": str(tmp_path / "run"), "iters": 40, "kills": 20, "at_end": 5, "seed": 27,
            "log": str(tmp_path / "launches.log"), "report": str(tmp_path / "report.json")}
    r = subprocess.run([sys.executable, str(supervisor), json.dumps(spec)], capture_output=True, text=True,
                       timeout=900, env=env(), cwd=ROOT)
    log = (tmp_path / "launches.log").read_text() if (tmp_path / "launches.log").exists() else ""
    assert r.returncode == 0, r.stderr[-3000:] + log[-3000:]
    report = json.loads((tmp_path / "report.json").read_text())
    launches = report["launches"]
    print(json.dumps(report))
    assert len(launches) == 20
    assert all(x["code"] in (-signal.SIGKILL, 0) for x in launches), launches  # killed, or done before its delay
    assert sum(x["code"] == -signal.SIGKILL for x in launches) >= 15
    # Kills landed mid-training too (the delays scale with this host's measured times): some
    # launch made progress and was killed before the last iteration.
    assert any(x["from"] < x["to"] < 40 and x["code"] == -signal.SIGKILL for x in launches), launches
    assert all(x["whole"] for x in launches)  # every checkpoint left by every kill loads
    assert report["final"]["code"] == 0, log[-3000:]
    assert "Traceback" not in log and "error" not in log.lower()
    run, uninterrupted = tmp_path / "run", tmp_path / "uninterrupted"
    assert not glob.glob(str(run / ".*.tmp*"))  # nothing half-written is left behind
    assert train_records(run) == train_records(uninterrupted)  # losses and lr at 2, 4, ..., 40, bit for bit
    assert [r["iter"] for r in train_records(run)] == list(range(2, 41, 2))
    a, b = (load_checkpoint(list_checkpoints(str(f))[-1]) for f in (uninterrupted, run))
    assert a["iteration"] == b["iteration"] == 40
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    for x, y in zip(a["optimizer"]["state"].values(), b["optimizer"]["state"].values()):
        assert all(torch.equal(x[k], y[k]) for k in x)
    assert evaluation(run) == evaluation(uninterrupted)
