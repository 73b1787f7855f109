"""The support-path probe (tools/analysis/support_paths.py) on tiny models built for it: a path the
model does not use changes nothing, a path it uses changes the detections."""
import json
import os
import sys

import numpy as np
import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, ROOT)

from detector.config import load_config, to_dict  # noqa: E402
from detector.models import build_model  # noqa: E402
from detector.utils.checkpoint import checkpoint_state, save_checkpoint  # noqa: E402
from tools.analysis import support_paths as sp  # noqa: E402

TINY = os.path.join(ROOT, "configs", "tiny.yaml")


@pytest.fixture(scope="module")
def bench(tmp_path_factory):
    from detector.data import build_synthetic

    root = tmp_path_factory.mktemp("bench") / "synthetic_tiny"
    build_synthetic(str(root), "tiny", workers=1)
    return str(root)


def make_checkpoint(path, bench, keys_unused: bool):
    """A tiny model (random weights, keys and correlation paths) saved as a checkpoint. With
    ``keys_unused`` its object queries score every key alike (q = 0): the keys cannot matter."""
    cfg = load_config(TINY, [f"data.root={bench}", "model.support_conditioning=false", "model.correlation_channels=4",
                             "model.support_layout=box", "model.attention_sink=true", "model.bias_box_prior=8",
                             "eval.split=test", "eval.batch_size=16"])
    torch.manual_seed(0)
    model = build_model(cfg)[0]
    with torch.no_grad():
        for layer in model.decoder.layers:
            layer.cross_attn.sink_key.normal_()
            layer.cross_attn.k_proj.weight.mul_(5.0)  # scores that the keys clearly move
            if keys_unused:
                layer.cross_attn.q_proj.weight.zero_()
                layer.cross_attn.q_proj.bias.zero_()
        for p in model.correlation.parameters():  # make the correlation clearly matter
            p.mul_(4.0)
        for head in model.class_embed:  # scores near 0.5, where they move most with the logits
            head.bias.zero_()
            head.weight.mul_(3.0)
    return save_checkpoint(str(path), checkpoint_state(model, to_dict(cfg)))


pytestmark = pytest.mark.usefixtures("one_thread")


def test_an_unused_path_changes_nothing_and_a_used_one_changes_the_detections(bench, tmp_path):
    ckpt = make_checkpoint(tmp_path / "keys_unused.pth", bench, keys_unused=True)
    result = sp.probe(ckpt, runs=1, progress=False)
    assert result["split"] == "test" and result["paths"] == ["keys", "correlation"]
    assert set(result["wrong_exemplar"]) == {"keys", "correlation", "all_but_keys", "all"}
    keys = result["wrong_exemplar"]["keys"]
    assert keys["score_change"] == 0.0  # bit for bit the same detections
    assert keys["unseen_ap50"] == result["baseline"]["unseen_ap50"] and keys["unseen_ap50_drop"] == 0.0
    assert result["wrong_exemplar"]["correlation"]["score_change"] > 1e-3
    assert result["wrong_exemplar"]["all_but_keys"]["fed"] == ["correlation"]


def test_keys_that_are_used_change_the_detections(bench, tmp_path):
    ckpt = make_checkpoint(tmp_path / "keys_used.pth", bench, keys_unused=False)
    result = sp.probe(ckpt, runs=1, progress=False)
    assert result["wrong_exemplar"]["keys"]["score_change"] > 5e-5  # the unused keys give exactly 0


def test_the_wrong_exemplar_is_of_another_category_reproducible_and_differs_by_run(bench):
    from detector.data import build_eval_dataset

    cfg = load_config(TINY, [f"data.root={bench}"])
    dataset, _ = build_eval_dataset(cfg, "val")
    wrong = sp.WrongExemplars(dataset, ["keys"], seed=0)
    picks = [[wrong.other_item(j, run) for j in range(len(dataset))] for run in (0, 1)]
    for j, k in enumerate(picks[0]):
        assert dataset.items[k].category_id != dataset.items[j].category_id
    assert picks[0] == [sp.WrongExemplars(dataset, ["keys"], seed=0).other_item(j, 0) for j in range(len(dataset))]
    assert picks[0] != picks[1]
    dataset.set_run(1)
    batch = wrong([{"index": 0}, {"index": 1}])["keys"]
    expected = dataset.support_image(picks[1][0], 1)
    assert torch.equal(batch.tensors[0, :, :expected.shape[1], :expected.shape[2]], expected)


def test_rows_cover_every_path_and_the_two_aggregates():
    assert sp.probe_rows(["keys"]) == {"keys": ["keys"]}
    rows = sp.probe_rows(["keys", "object_queries", "logits"])
    assert rows["all_but_keys"] == ["object_queries", "logits"] and rows["all"] == ["keys", "object_queries", "logits"]
    assert "all_but_keys" not in sp.probe_rows(["fusion", "logits"])


def test_the_tool_writes_json_and_table(bench, tmp_path):
    ckpt = make_checkpoint(tmp_path / "m.pth", bench, keys_unused=False)
    assert sp.main(["--checkpoint", ckpt, "--output-dir", str(tmp_path / "out"), "--runs", "1", "--no-progress",
                    "eval.split=val"]) == 0
    result = json.load(open(tmp_path / "out" / "support_paths.json"))
    assert result["split"] == "val" and result["runs"] == 1
    assert np.isfinite(result["baseline"]["unseen_ap50"])
    table = open(tmp_path / "out" / "support_paths.md").read()
    assert "| keys |" in table and "nothing (baseline)" in table
    assert sp.main(["--checkpoint", str(tmp_path / "missing.pth"), "--output-dir", str(tmp_path / "x")]) == 2
