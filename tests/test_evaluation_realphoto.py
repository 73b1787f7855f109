"""detector.evaluation_realphoto: the real-photo scores on hand-made detections of known value,
the options passed to predict, the tables and the pictures."""
import json
import os

import pytest
from PIL import Image

from detector.data.realphoto import RealPhotoBenchmark, load_realphoto, prepare_realphoto
from detector.evaluation_realphoto import (COUNT_THRESHOLD, MAX_DETS, anchor_metrics, anchor_results, format_realphoto_table,
                                           predict_pairs, render_pair, save_pair_pictures,
                                           score_pairs, write_realphoto_evaluation)


def _grid(n, side=10, step=20, columns=20):
    """``n`` disjoint ``side``-pixel boxes on a grid, as COCO annotations."""
    return [{"id": k + 1, "bbox": [float(step * (k % columns)), float(step * (k // columns)), float(side), float(side)]}
            for k in range(n)]


def _bench(sizes=(4, 8)):
    """Image i (1-based) holds ``sizes[i - 1]`` grid trees; pairs: each image with itself, then
    every other-image pair (query, support) in order."""
    images = {i + 1: {"id": i + 1, "file_name": f"im{i + 1}.png", "width": 500, "height": 500}
              for i in range(len(sizes))}
    instances = {i: _grid(n) for i, n in zip(images, sizes)}
    combos = [("same_image", i, i) for i in images] + [("other_image", q, s) for q in images for s in images if q != s]
    pairs = [{"id": k + 1, "mode": m, "query_image_id": q, "support_image_id": s, "support_box": [0, 0, 10, 10],
              "support_annotation_id": 1} for k, (m, q, s) in enumerate(combos)]
    return RealPhotoBenchmark("unused", images, instances, pairs)


def _result(boxes, score=0.9):
    dets = [{"bbox": list(b), "score": score} for b in boxes]
    return {"image": None, "width": 500, "height": 500, "detections": dets}


def _truth(bench, pair):
    return [a["bbox"] for a in bench.instances[pair["query_image_id"]]]


def test_perfect_detections_score_one_and_count_exactly():
    bench = _bench()
    m = score_pairs(bench, [_result(_truth(bench, p)) for p in bench.pairs])
    for mode in ("same_image", "other_image"):
        assert m[f"{mode}_ap50"] == pytest.approx(1.0) and m[f"{mode}_ap"] == pytest.approx(1.0)
        assert m[f"{mode}_recall50"] == pytest.approx(1.0)
        assert m[f"{mode}_count_error"] == 0 and m[f"{mode}_count_error_relative"] == 0 and m[f"{mode}_count_bias"] == 0
    assert (m["same_image_pairs"], m["other_image_pairs"]) == (2, 2)
    assert (m["same_image_instances"], m["other_image_instances"]) == (12, 12)
    assert m["max_dets"] == [1, 100, 1000] and m["count_threshold"] == 0.3
    assert [(r["pair"], r["instances"], r["detections_above"], r["ap50"], r["recall50"]) for r in m["per_pair"]] == [
        (1, 4, 4, 1.0, 1.0), (2, 8, 8, 1.0, 1.0), (3, 4, 4, 1.0, 1.0), (4, 8, 8, 1.0, 1.0)]


def test_half_the_trees_give_recall_half_and_count_error_half():
    bench = _bench()
    m = score_pairs(bench, [_result(_truth(bench, p)[::2]) for p in bench.pairs])
    assert m["same_image_recall50"] == pytest.approx(0.5)
    assert m["same_image_ap50"] == pytest.approx(51 / 101)  # precision 1 up to recall 0.5 on COCO's 101 points
    assert m["same_image_count_error"] == pytest.approx((2 + 4) / 2)
    assert m["same_image_count_error_relative"] == pytest.approx(0.5)
    assert m["same_image_count_bias"] == pytest.approx(-3.0)


def test_duplicates_inflate_the_count_but_not_ap50():
    bench = _bench()
    results = []
    for p in bench.pairs:
        truth = _truth(bench, p)
        results.append({"detections": [{"bbox": b, "score": 0.9} for b in truth] +
                        [{"bbox": b, "score": 0.8} for b in truth]})
    m = score_pairs(bench, results)
    assert m["other_image_ap50"] == pytest.approx(1.0) and m["other_image_recall50"] == pytest.approx(1.0)
    assert m["other_image_count_error"] == pytest.approx(6.0)
    assert m["other_image_count_error_relative"] == pytest.approx(1.0)
    assert m["other_image_count_bias"] == pytest.approx(6.0)


def test_low_scores_are_found_but_not_counted_and_modes_stay_apart():
    bench = _bench()
    results = [_result(_truth(bench, p), score=0.2) if p["mode"] == "same_image" else _result([])
               for p in bench.pairs]
    m = score_pairs(bench, results)
    assert m["same_image_ap50"] == pytest.approx(1.0)  # ranking only: a low score is still a hit
    assert m["same_image_count_error"] == pytest.approx(6.0)  # below the 0.3 count threshold
    assert m["other_image_ap50"] == 0.0 and m["other_image_recall50"] == 0.0
    assert m["other_image_count_error_relative"] == pytest.approx(1.0)


def test_hundreds_of_trees_fit_in_max_dets():
    bench = _bench(sizes=(574, 3))
    m = score_pairs(bench, [_result(_truth(bench, p)) for p in bench.pairs])
    assert m["same_image_recall50"] == pytest.approx(1.0) and m["same_image_ap50"] == pytest.approx(1.0)
    capped = score_pairs(bench, [_result(_truth(bench, p)) for p in bench.pairs], max_dets=(1, 100))
    assert capped["per_pair"][0]["recall50"] == pytest.approx(100 / 574)


class _Recorder:
    """A detector double: returns the query's trees and records each call."""

    def __init__(self, bench):
        self.bench, self.calls = bench, []

    def predict(self, query, support, support_box=None, score_threshold=0.3, *, size=None):
        self.calls.append((os.path.basename(query), os.path.basename(support), support_box, score_threshold, size))
        image_id = next(i for i, im in self.bench.images.items() if im["file_name"] == os.path.basename(query))
        return _result([a["bbox"] for a in self.bench.instances[image_id]])


def test_predict_pairs_on_files_with_options(fake_deepforest, tmp_path):
    prepare_realphoto(str(tmp_path / "rp"), [fake_deepforest])
    bench = load_realphoto(str(tmp_path / "rp"))
    det = _Recorder(bench)
    results = predict_pairs(det, bench, {"size": 256})
    assert len(results) == 16 and len(det.calls) == 16
    assert det.calls[4] == ("OSBS_029.png", "SOAP_061.png", [29.0, 29.0, 16.0, 16.0], 0.0, 256)
    m = score_pairs(bench, results)
    assert m["same_image_ap50"] == pytest.approx(1.0) and m["other_image_count_error"] == 0
    json_path, md_path = write_realphoto_evaluation({"split": "realphoto", **m}, str(tmp_path / "eval"))
    assert json.load(open(json_path))["other_image_pairs"] == 12
    table = open(md_path).read()
    assert "| model | same_image | 4 | 14 | 100.0 | 100.0 | 100.0 | 0.0 | 0.0% | +0.0 |" in table
    assert "| 5 | other_image | OSBS_029.png | SOAP_061.png | 3 | 3 | 100.0 | 100.0 |" in table
    assert table == format_realphoto_table(m) + "\n"
    picture = render_pair(bench, bench.pairs[0], results[0])
    assert picture.width > 720 + 256 and picture.height > 540  # 80x60 tile enlarged to 720x540, exemplar panel
    paths = save_pair_pictures(bench, results, str(tmp_path / "vis"))
    assert len(paths) == 16 and os.path.basename(paths[4]) == "pair05_OSBS_029_from_SOAP_061.png"
    assert Image.open(paths[0]).size == picture.size


def test_constants_are_the_documented_ones():
    assert COUNT_THRESHOLD == 0.3 and MAX_DETS == (1, 100, 1000)
    with pytest.raises(ValueError, match="3 results for 4 pairs"):
        score_pairs(_bench(), [_result([])] * 3)


def test_anchors_run_on_the_same_pairs_and_stand_beside_the_model(fake_deepforest, tmp_path):
    prepare_realphoto(str(tmp_path / "rp"), [fake_deepforest])
    bench = load_realphoto(str(tmp_path / "rp"))
    template = anchor_results(bench, "template")
    assert len(template) == len(bench.pairs)
    for pair, result in zip(bench.pairs, template):
        query = bench.images[pair["query_image_id"]]
        assert (result["width"], result["height"]) == (query["width"], query["height"])
        if pair["mode"] == "same_image":  # the exemplar finds itself first, exactly
            best = result["detections"][0]
            assert best["score"] == pytest.approx(1.0, abs=1e-4)
            assert best["bbox"] == pytest.approx(pair["support_box"], abs=1.0)
    anchors = anchor_metrics(bench, ("template",))
    assert set(anchors) == {"template"} and anchors["template"]["same_image_pairs"] == 4
    with pytest.raises(ValueError, match="unknown anchor"):
        anchor_results(bench, "oracle")
    model = score_pairs(bench, [_result(_truth(bench, p)) for p in bench.pairs])
    table = format_realphoto_table({**model, "anchors": anchors})
    assert "| model | same_image | 4 |" in table and "| template matching (pixels, no learning) | same_image | 4 |" in table
    assert table.index("| model | other_image") < table.index("| template matching (pixels, no learning) | other_image")
    header = next(line for line in table.splitlines() if line.startswith("| pair |"))
    assert header.endswith("| AP50 | recall50 | template AP50 |")
