"""The main job's plumbing on the tiny benchmark: benchmark, training, evaluation, one unseen pair,
the table and the paths printed."""
import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_demo_runs_end_to_end_on_the_tiny_config(tmp_path):
    out = tmp_path / "demo"
    r = subprocess.run([sys.executable, os.path.join(ROOT, "tools", "demo.py"), "--config",
                        os.path.join(ROOT, "configs", "tiny.yaml"), "--no-progress", "--output-dir", str(out),
                        f"data.root={tmp_path / 'bench'}", "train.max_iters=4", "eval.runs=2"],
                       capture_output=True, text=True, timeout=300, cwd=ROOT,
                       env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert r.returncode == 0, r.stderr[-3000:]
    assert "| seen |" in r.stdout and "| unseen |" in r.stdout
    assert f"metrics.json: {out / 'metrics.json'}" in r.stdout and "wall time:" in r.stdout
    assert os.path.isfile(out / "demo_unseen_pair.png")
    pair = json.load(open(out / "demo_unseen_pair.json"))
    metrics = json.load(open(out / "metrics.json"))
    assert metrics["runs"] == 2 and pair["query"] != pair["support"]
    assert {"image", "width", "height", "detections"} <= set(pair["prediction"])
