"""tools/train.py and tools/evaluate.py on the tiny synthetic benchmark: the output folder contract,
exact resume after SIGKILL, and a two-process torchrun (gloo) run."""
import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TINY = os.path.join(ROOT, "configs", "tiny.yaml")


def train_cmd(bench, out, *extra):
    return [sys.executable, os.path.join(ROOT, "tools", "train.py"), "--config", TINY, "--no-progress",
            "--output-dir", str(out), f"data.root={bench}", *extra]


def env():
    e = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=ROOT)
    return e


def final_weights(folder):
    from detector.utils.checkpoint import latest_checkpoint, load_checkpoint

    return load_checkpoint(latest_checkpoint(str(folder)))


def test_train_writes_the_output_folder_and_evaluate_reads_it(bench, tmp_path):
    out = tmp_path / "run"
    r = subprocess.run(train_cmd(bench, out), capture_output=True, text=True, timeout=300, env=env(), cwd=ROOT)
    assert r.returncode == 0, r.stderr[-3000:]
    files = set(os.listdir(out))
    assert {"config.yaml", "git_revision.txt", "metrics.jsonl", "metrics.json", "training_curves.png"} <= files
    ckpts = sorted(f for f in files if f.startswith("checkpoint_"))
    assert len(ckpts) == 2 and ckpts[-1] == "checkpoint_00000006.pth"  # keep_checkpoints=2, max_iters=6
    lines = [json.loads(x) for x in open(out / "metrics.jsonl")]
    assert [x["iter"] for x in lines if x["type"] == "train"] == [2, 4, 6]
    assert any(x["type"] == "eval" and x.get("final") for x in lines)
    state = torch.load(out / ckpts[-1], weights_only=True)
    assert state["iteration"] == 6 and state["config"]["data"]["root"] == bench

    ev = subprocess.run([sys.executable, os.path.join(ROOT, "tools", "evaluate.py"), "--checkpoint",
                         str(out / ckpts[-1]), "--output-dir", str(tmp_path / "eval"), "--coco-results",
                         "eval.runs=2"],
                        capture_output=True, text=True, timeout=300, env=env(), cwd=ROOT)
    assert ev.returncode == 0, ev.stderr[-3000:]
    assert os.path.isfile(tmp_path / "eval" / "metrics.json") and "metrics.json" in ev.stdout
    assert "| unseen |" in ev.stdout and os.path.isfile(tmp_path / "eval" / "metrics.md")
    metrics = json.load(open(tmp_path / "eval" / "metrics.json"))
    assert metrics["runs"] == 2 and len(metrics["per_run"]) == 2
    dets = json.load(open(tmp_path / "eval" / "coco_results.json"))
    assert dets and {d["run"] for d in dets} == {0, 1}
    assert set(dets[0]) == {"image_id", "category_id", "bbox", "score", "run"}

    # Without --output-dir the evaluation goes beside the checkpoint, never over the run's metrics.json
    before = (out / "metrics.json").read_bytes()
    ev = subprocess.run([sys.executable, os.path.join(ROOT, "tools", "evaluate.py"), "--checkpoint",
                         str(out / ckpts[-1]), "eval.runs=1", "eval.split=test"],
                        capture_output=True, text=True, timeout=300, env=env(), cwd=ROOT)
    assert ev.returncode == 0, ev.stderr[-3000:]
    assert (out / "metrics.json").read_bytes() == before
    assert json.load(open(out / "eval_test" / "metrics.json"))["split"] == "test"


def test_sigkill_then_resume_ends_with_the_same_weights(bench, reference, tmp_path):
    killed = tmp_path / "killed"
    proc = subprocess.Popen(train_cmd(bench, killed, "train.max_iters=8", "eval.runs=1"), env=env(), cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None:
        if os.path.isdir(killed) and any(f.startswith("checkpoint_") for f in os.listdir(killed)):
            break
        time.sleep(0.05)
    assert proc.poll() is None, "training finished before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done = [f for f in os.listdir(killed) if f.startswith("checkpoint_")]
    assert done and max(done) < "checkpoint_00000008.pth"
    r = subprocess.run(train_cmd(bench, killed, "train.max_iters=8", "eval.runs=1") + ["--resume"],
                       capture_output=True, text=True, timeout=300, env=env(), cwd=ROOT)
    assert r.returncode == 0, r.stderr[-3000:]
    logged = [json.loads(x)["iter"] for x in open(killed / "metrics.jsonl") if '"train"' in x]
    assert logged == sorted(set(logged)) and logged[-1] == 8  # no duplicate lines from the killed run
    a, b = final_weights(reference), final_weights(killed)
    assert a["iteration"] == b["iteration"] == 8
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    assert all(torch.equal(x, y) for x, y in zip(a["optimizer"]["state"][0].values(), b["optimizer"]["state"][0].values()))


def test_torchrun_two_gloo_processes(bench, tmp_path):
    out = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29517",
           os.path.join(ROOT, "tools", "train.py"), "--config", TINY, "--no-progress", "--output-dir", str(out),
           f"data.root={bench}", "train.max_iters=4", "eval.runs=1"]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env(), cwd=ROOT)
    assert r.returncode == 0, r.stderr[-3000:]
    lines = [json.loads(x) for x in open(out / "metrics.jsonl")]
    train_lines = [x for x in lines if x["type"] == "train"]
    assert [x["iter"] for x in train_lines] == [2, 4]  # written once (rank 0), not once per process
    assert final_weights(out)["iteration"] == 4


def test_bad_config_and_missing_resume_fail_clearly(bench, tmp_path):
    r = subprocess.run(train_cmd(bench, tmp_path / "x", "train.epoch=3"), capture_output=True, text=True,
                       timeout=120, env=env(), cwd=ROOT)
    assert r.returncode == 2 and "unknown config key 'train.epoch'" in r.stderr and "Traceback" not in r.stderr
    r = subprocess.run(train_cmd(bench, tmp_path / "empty") + ["--resume"], capture_output=True, text=True,
                       timeout=120, env=env(), cwd=ROOT)
    assert r.returncode == 2 and "no checkpoint" in r.stderr


def test_the_class_agnostic_oracle_bounds_what_ignoring_the_exemplar_scores(bench, tmp_path):
    """Every box of the image at score 1 localises perfectly but cannot tell the queried class from
    the others, so it stays far from 1; a checkpoint is not needed."""
    from detector_tools.evaluate import main as evaluate_main

    out = tmp_path / "oracle"
    assert evaluate_main(["--class-agnostic-oracle", "--config", TINY, f"data.root={bench}", "eval.split=test",
                          "eval.runs=1", "--output-dir", str(out)]) == 0
    metrics = json.load(open(out / "metrics.json"))
    assert metrics["split"] == "test"
    for split in ("seen", "unseen"):
        assert 0.1 < metrics[f"{split}_ap50"] < 0.7
        assert metrics[f"{split}_ap"] <= metrics[f"{split}_ap50"] + 1e-9
    with pytest.raises(SystemExit) as e:
        evaluate_main(["--class-agnostic-oracle", f"data.root={bench}"])
    assert e.value.code == 2
