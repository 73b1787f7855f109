"""The main job's plumbing on the tiny benchmark: benchmark, training, evaluation, one unseen pair,
the table and the paths printed."""
import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def run_demo(tmp_path, out, *overrides):
    return subprocess.run([sys.executable, os.path.join(ROOT, "tools", "demo.py"), "--config",
                           os.path.join(ROOT, "configs", "tiny.yaml"), "--no-progress", "--output-dir", str(out),
                           f"data.root={tmp_path / 'bench'}", *overrides],
                          capture_output=True, text=True, timeout=300, cwd=ROOT, env=dict(os.environ, OMP_NUM_THREADS="1"))


def test_demo_runs_end_to_end_on_the_tiny_config(tmp_path):
    out = tmp_path / "demo"
    r = run_demo(tmp_path, out, "train.max_iters=4", "eval.runs=2", "eval.split=test")
    assert r.returncode == 0, r.stderr[-3000:]
    assert "| seen |" in r.stdout and "| unseen |" in r.stdout
    assert "Evaluation set: test" in r.stdout and "WARNING" not in r.stdout + r.stderr
    assert f"metrics.json: {out / 'metrics.json'}" in r.stdout and "wall time:" in r.stdout
    assert os.path.isfile(out / "demo_unseen_pair.png")
    pair = json.load(open(out / "demo_unseen_pair.json"))
    metrics = json.load(open(out / "metrics.json"))
    assert metrics["runs"] == 2 and pair["query"] != pair["support"]
    assert metrics["split"] == "test" and "/images/test/" in pair["query"]
    assert metrics["training"] == {"iterations": 4, "planned_iterations": 4, "stopped_by_time_budget": False}
    assert {"image", "width", "height", "detections"} <= set(pair["prediction"])


def test_demo_says_loudly_when_the_time_budget_stopped_training(tmp_path):
    out = tmp_path / "demo"
    r = run_demo(tmp_path, out, "train.max_iters=6", "train.time_budget_min=0.00001", "eval.runs=1")
    assert r.returncode == 0, r.stderr[-3000:]
    metrics = json.load(open(out / "metrics.json"))
    assert metrics["training"] == {"iterations": 1, "planned_iterations": 6, "stopped_by_time_budget": True}
    assert "stopped training at iteration 1 of 6" in r.stderr and "WARNING: the time budget" in r.stdout
    log = [json.loads(line) for line in open(out / "metrics.jsonl")]
    assert any(rec["type"] == "warning" for rec in log)
