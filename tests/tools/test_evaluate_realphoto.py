"""tools/evaluate.py --realphoto end to end: a random-weight tiny checkpoint on the fake
real-photo benchmark (tests/conftest.py FAKE_TILES)."""
import json
import os
import subprocess
import sys

import pytest
import torch

from detector.config import load_config, to_dict
from detector.data.realphoto import prepare_realphoto
from detector.models import build_model
from detector.utils.checkpoint import checkpoint_state, save_checkpoint

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TINY = os.path.join(ROOT, "configs", "tiny.yaml")


@pytest.fixture
def setup(fake_deepforest, tmp_path):
    torch.manual_seed(0)
    cfg = load_config(TINY, ["eval.max_detections=6"])
    model, _, _ = build_model(cfg)
    ckpt = save_checkpoint(str(tmp_path / "tiny.pth"), checkpoint_state(model, to_dict(cfg), iteration=0))
    bench = str(tmp_path / "realphoto")
    prepare_realphoto(bench, [fake_deepforest])
    return {"ckpt": ckpt, "bench": bench, "dir": tmp_path}


def run_evaluate(*args):
    return subprocess.run([sys.executable, os.path.join(ROOT, "tools", "evaluate.py"), *args], capture_output=True,
                          text=True, timeout=300, cwd=ROOT, env=dict(os.environ, OMP_NUM_THREADS="1"))


def test_realphoto_writes_metrics_and_pictures(setup):
    out, vis = setup["dir"] / "eval", setup["dir"] / "vis"
    r = run_evaluate("--checkpoint", setup["ckpt"], "--realphoto", setup["bench"], "--output-dir", str(out),
                     "--visualize", str(vis), "--device", "cpu", "infer.object_size=16")
    assert r.returncode == 0, r.stderr[-3000:]
    m = json.loads((out / "metrics.json").read_text())
    assert m["checkpoint"] == os.path.abspath(setup["ckpt"]) and m["split"] == "realphoto"
    assert m["benchmark_root"] == os.path.abspath(setup["bench"])
    # The protocol rescales each query by its exemplar; the other options come from the config.
    assert m["inference_options"]["rescale"] == "exemplar" and m["inference_options"]["object_size"] == 16
    assert (m["same_image_pairs"], m["other_image_pairs"]) == (4, 12)
    assert (m["same_image_instances"], m["other_image_instances"]) == (14, 42)
    assert m["max_dets"] == [1, 100, 1000] and m["count_threshold"] == 0.3 and m["eval_time_s"] >= 0
    assert len(m["per_pair"]) == 16
    for row in m["per_pair"]:
        assert row["detections"] >= 1  # score threshold 0: what the tiles keep after merging
        assert 0 <= row["detections_above"] <= row["detections"]
        assert row["count_error"] == abs(row["detections_above"] - row["instances"])
        assert 0.0 <= row["ap50"] <= 1.0 and 0.0 <= row["recall50"] <= 1.0
    assert max(row["detections"] for row in m["per_pair"]) > 6  # rescaled past the 64 px working size: tiles
    for key in ("ap50", "ap", "recall50", "count_error", "count_error_relative", "count_bias"):
        assert isinstance(m[f"same_image_{key}"], float) and isinstance(m[f"other_image_{key}"], float)
    assert "| same_image | 4 | 14 |" in (out / "metrics.md").read_text()
    assert len(os.listdir(vis)) == 16


def test_realphoto_mistakes_exit_2_with_one_line(setup):
    cases = [("--checkpoint", setup["ckpt"], "--realphoto", str(setup["dir"] / "missing")),
             ("--checkpoint", setup["ckpt"], "--realphoto", setup["bench"], "infer.no_such_option=1"),
             ("--checkpoint", setup["ckpt"], "--realphoto", setup["bench"], "infer.object_size=0"),  # rescale=exemplar, size unknown
             ("--checkpoint", setup["ckpt"], "--visualize", str(setup["dir"] / "vis")),
             ("--checkpoint", setup["ckpt"], "--realphoto", setup["bench"], "--coco-results")]
    for args in cases:
        r = run_evaluate(*args)
        assert r.returncode == 2, (args, r.stderr[-2000:])
        assert len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.stderr


def run_probe(setup, out, *args):
    return subprocess.run([sys.executable, os.path.join(ROOT, "tools", "analysis", "realphoto_probe.py"), "--checkpoint",
                           setup["ckpt"], "--output-dir", str(out), "--realphoto", setup["bench"], "infer.object_size=16",
                           *args], capture_output=True, text=True, timeout=300, cwd=ROOT,
                          env=dict(os.environ, OMP_NUM_THREADS="1"))


def test_the_exemplar_probe_searches_each_tile_with_a_tree_and_with_no_tree(setup):
    """tools/analysis/realphoto_probe.py: the same pairs, the tree exemplar and a treeless box of
    its size; both rows scored, the boxes written; then each support path fed the treeless box
    alone."""
    out = setup["dir"] / "probe"
    r = run_probe(setup, out)
    assert r.returncode == 0, r.stderr[-3000:]
    result = json.loads((out / "realphoto_probe.json").read_text())
    assert result["paths"] == ["keys", "correlation"]  # every support path of the tiny model, by default
    assert set(result["rows"]) == {"tree", "no_tree", "no_tree in keys", "no_tree in correlation"}
    assert result["inference_options"]["rescale"] == "exemplar"
    bench = json.loads((setup["dir"] / "realphoto" / "pairs.json").read_text())
    same = [p for p in (bench["pairs"] if isinstance(bench, dict) else bench) if p["mode"] == "same_image"]
    assert result["rows"]["tree"]["boxes"] == [p["support_box"] for p in same]
    for tree, empty in zip(result["rows"]["tree"]["boxes"], result["rows"]["no_tree"]["boxes"]):
        assert empty[2:] == tree[2:] and empty != tree  # same size (so the same query scale), elsewhere
    for path in result["paths"]:
        row = result["rows"][f"no_tree in {path}"]
        assert row["fed"] == [path] and row["boxes"] == result["rows"]["no_tree"]["boxes"]
    for row in result["rows"].values():
        assert len(row["per_tile_recall50"]) == 4 and 0.0 <= row["recall50"] <= 1.0
    table = (out / "realphoto_probe.md").read_text()
    assert "| no_tree |" in table and "| no_tree in correlation |" in table


def test_the_exemplar_probe_refuses_an_unknown_path(setup):
    r = run_probe(setup, setup["dir"] / "bad", "--paths", "keys,fusion")
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1, r.stderr[-2000:]
    assert "fusion" in r.stderr and "keys, correlation" in r.stderr and "Traceback" not in r.stderr


def test_a_path_fed_its_own_exemplar_changes_nothing_and_another_changes_that_path():
    """exemplar_in_paths: the same exemplar in a path is the plain forward, bit for bit; another
    exemplar in one path changes the output, in each path the tiny model has."""
    from detector.structures import ImageBatch
    from tools.analysis.realphoto_probe import exemplar_in_paths

    torch.manual_seed(0)
    cfg = load_config(TINY)
    model = build_model(cfg)[0].eval()
    size = cfg.model.support_size
    query = ImageBatch.from_tensors([torch.rand(3, 64, 64), torch.rand(3, 64, 48)])
    tree, other = torch.rand(3, size, size), torch.rand(3, size, size)
    support = ImageBatch.from_tensors([tree, tree], size_divisibility=size)
    with torch.no_grad():
        plain = model(query, support)["pred_logits"]
        with exemplar_in_paths(model, list(model.support_paths), tree, size):
            same = model(query, support)["pred_logits"]
        changed = {}
        for path in model.support_paths:
            with exemplar_in_paths(model, [path], other, size):
                changed[path] = (model(query, support)["pred_logits"] - plain).abs().max().item()
        with exemplar_in_paths(model, list(model.support_paths), other, size):
            everywhere = model(query, support)["pred_logits"]
        swapped = model(query, ImageBatch.from_tensors([other, other], size_divisibility=size))["pred_logits"]
        after = model(query, support)["pred_logits"]
    assert torch.allclose(everywhere, swapped, atol=1e-6)  # every path fed it: the other exemplar's output
    assert torch.equal(same, plain) and torch.equal(after, plain)  # the hook is gone after the block
    assert all(v > 1e-6 for v in changed.values()), changed


def test_treeless_box_keeps_away_from_every_tree():
    from detector.data.realphoto import treeless_box

    trees = [{"bbox": [0.0, 0.0, 20.0, 20.0]}, {"bbox": [0.0, 80.0, 20.0, 20.0]}]
    box = treeless_box(trees, 100, 100, (20.0, 20.0))
    assert box == [80.0, 40.0, 20.0, 20.0]  # the point farthest from both trees on the half-box grid
    assert treeless_box([], 50, 40, (10.0, 10.0)) == [0.0, 0.0, 10.0, 10.0]  # no tree: the first place
