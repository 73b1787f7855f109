"""The k-shot protocol end to end on a trained tiny checkpoint: eval.shots=1 is the one-shot
evaluation bit for bit, eval.shots=k records k in metrics.json, tools/kshot_table.py tabulates
k = 1 and k > 1 for each combination of the exemplars."""
import json
import os

import detector_tools.evaluate as evaluate_tool
import detector_tools.kshot_table as kshot_table


def _metrics(folder):
    with open(os.path.join(folder, "metrics.json")) as f:
        return json.load(f)


def test_one_exemplar_is_the_one_shot_protocol_bit_for_bit_and_k_is_recorded(reference, tmp_path):
    ckpt = str(reference / "checkpoint_00000008.pth")
    runs = {}
    for name, extra in (("default", []), ("one", ["eval.shots=1"]), ("three", ["eval.shots=3"])):
        assert evaluate_tool.main(["--checkpoint", ckpt, "--output-dir", str(tmp_path / name), "eval.runs=2",
                                   "--coco-results", *extra]) == 0
        runs[name] = _metrics(tmp_path / name)
    strip = lambda m: {k: v for k, v in m.items() if k != "eval_time_s"}  # noqa: E731
    assert strip(runs["default"]) == strip(runs["one"]) and runs["one"]["shots"] == 1
    three = runs["three"]
    assert three["shots"] == 3 and "3 exemplars per item" in three["protocol"]
    assert three["num_items_seen"] == runs["one"]["num_items_seen"]
    # the extra exemplars reach the detections (the AP of an 8-iteration model may round alike)
    scores = {n: [d["score"] for d in json.load(open(tmp_path / n / "coco_results.json"))] for n in ("one", "three")}
    assert len(scores["one"]) == len(scores["three"]) and scores["one"] != scores["three"]
    assert "3 exemplars per item" in open(tmp_path / "three" / "metrics.md").read()


def test_kshot_table(reference, tmp_path, capsys):
    rc = kshot_table.main(["--checkpoint", str(reference / "checkpoint_00000008.pth"), "--split", "val",
                           "--shots", "1,2", "--runs", "1", "--combinations", "mean/mean,joint/max",
                           "--output-dir", str(tmp_path)])
    out = capsys.readouterr().out
    assert rc == 0
    assert sorted(os.listdir(tmp_path)) == ["kshot.md", "metrics_k1.json", "metrics_k2_joint-max.json",
                                            "metrics_k2_mean-mean.json"]
    assert "| 2 | joint | max |" in out and "| 1 | - | - |" in out
    m = json.load(open(tmp_path / "metrics_k2_joint-max.json"))
    assert m["shots"] == 2 and m["shot_keys"] == "joint" and m["shot_correlation"] == "max" and m["split"] == "val"
    try:
        rc = kshot_table.main(["--checkpoint", "x.pth", "--shots", "0"])
    except SystemExit as e:  # argparse
        rc = e.code
    assert rc == 2 and "expected integers >= 1" in capsys.readouterr().err
