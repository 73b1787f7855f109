"""The main job's plumbing on the tiny benchmark: benchmark, training, evaluation, one unseen pair,
the table and the paths printed."""
import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def run_demo(tmp_path, out, *overrides, stages=("--no-stage1", "--no-realphoto"), env=None):
    return subprocess.run([sys.executable, os.path.join(ROOT, "tools", "demo.py"), "--config",
                           os.path.join(ROOT, "configs", "tiny.yaml"), "--no-progress", "--output-dir", str(out),
                           *stages, f"data.root={tmp_path / 'bench'}", *overrides],
                          capture_output=True, text=True, timeout=300, cwd=ROOT,
                          env=dict(os.environ, OMP_NUM_THREADS="1", **(env or {})))


def test_demo_runs_end_to_end_on_the_tiny_config(tmp_path, fake_deepforest):
    """Both stages and the real-photo step (on the fake tiles), as `make demo` runs them."""
    from detector.data.pasted import load_photos

    try:
        load_photos()
    except Exception as e:  # noqa: BLE001 - any reason the package photos are not there
        pytest.skip(f"no package photos for stage 1 ({e})")
    out = tmp_path / "demo"
    stages = ("--stage1-config", os.path.join(ROOT, "configs", "tiny_pretrain.yaml"),
              "--stage1", f"data.root={tmp_path / 'pasted'}", "--stage1", "train.max_iters=2",
              "--realphoto", str(tmp_path / "realphoto"))
    r = run_demo(tmp_path, out, "train.max_iters=4", "eval.runs=2", "eval.split=test", stages=stages,
                 env={"ONESHOT_PHOTO_PACKAGES": fake_deepforest})
    assert r.returncode == 0, r.stderr[-3000:]
    stage1 = json.load(open(f"{out}_stage1/metrics.json"))
    assert stage1["training"]["iterations"] == 2 and stage1["split"] == "val"
    config = open(out / "config.yaml").read()
    assert f"init_checkpoint: {out}_stage1/checkpoint_00000002.pth" in config  # stage 2 starts from stage 1
    real = json.load(open(out / "realphoto" / "metrics.json"))
    assert real["same_image_pairs"] == 4 and real["inference_options"]["rescale"] == "exemplar"
    assert "| same_image | 4 |" in r.stdout and "| other_image | 12 |" in r.stdout
    assert os.path.isfile(out / "realphoto" / "largest_tile.png")
    assert "[2/6] stage 1" in r.stdout and "[5/6] real-photo benchmark" in r.stdout
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
    oracle = json.load(open(out / "oracle_test" / "metrics.json"))  # the bound beside the model's table
    assert oracle["runs"] == 2 and oracle["split"] == "test"
    assert oracle["num_items_unseen"] == metrics["num_items_unseen"] and 0 < oracle["unseen_ap50"] <= 1
    assert f"unseen AP50 {100 * oracle['unseen_ap50']:.1f}" in r.stdout.split("class-agnostic oracle")[1]


def test_demo_says_loudly_when_the_time_budget_stopped_training(tmp_path):
    out = tmp_path / "demo"
    r = run_demo(tmp_path, out, "train.max_iters=6", "train.time_budget_min=0.00001", "eval.runs=1")
    assert r.returncode == 0, r.stderr[-3000:]
    metrics = json.load(open(out / "metrics.json"))
    assert metrics["training"] == {"iterations": 1, "planned_iterations": 6, "stopped_by_time_budget": True}
    assert "stopped training at iteration 1 of 6" in r.stderr and "WARNING: the time budget" in r.stdout
    log = [json.loads(line) for line in open(out / "metrics.jsonl")]
    assert any(rec["type"] == "warning" for rec in log)


def test_stage1_trains_stage2_s_model_whatever_its_file_says(tmp_path):
    """Any configuration is one demo command: stage 1 takes the model of ``--config`` and its
    ``model.*`` overrides (``pretrain_photos.yaml`` builds another model than ``tiny.yaml``)."""
    sys.path.insert(0, ROOT)
    from detector.config import to_dict
    from detector.errors import InputError
    from detector_tools.demo import load_stages, parse_args

    args = parse_args(["--config", os.path.join(ROOT, "configs", "tiny.yaml"), "--stage1-config",
                       os.path.join(ROOT, "configs", "pretrain_photos.yaml"), "--output-dir", str(tmp_path / "d"),
                       "--stage1", "train.max_iters=3", "model.attention=double_cross", "model.exemplar_similarity=true"])
    cfg, stage1 = load_stages(args)
    assert to_dict(stage1)["model"] == to_dict(cfg)["model"]
    assert stage1.model.attention == "double_cross" and stage1.model.exemplar_similarity
    assert stage1.model.d_model == 32  # tiny.yaml's, not pretrain_photos.yaml's 128
    assert stage1.data.dataset == "pasted" and stage1.train.max_iters == 3  # stage 1's own data and schedule
    assert stage1.train.output_dir == str(tmp_path / "d") + "_stage1"
    with pytest.raises(InputError, match="stage 1 trains stage 2's model"):
        load_stages(parse_args(["--stage1", "model.d_model=64"]))


def test_demo_refuses_a_model_override_for_stage1_in_one_line(tmp_path):
    r = run_demo(tmp_path, tmp_path / "demo", stages=("--stage1", "model.num_queries=3", "--no-realphoto"))
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.stderr
    assert "--stage1 model.num_queries=3" in r.stderr and not os.path.exists(tmp_path / "demo")
