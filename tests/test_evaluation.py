"""The one-shot evaluation protocol: known values, agreement with pycocotools, seen / unseen apart."""
import contextlib
import io
import json
import os

import numpy as np
import pytest
import torch
from PIL import Image
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from detector.data import OneShotEvalDataset
from detector.evaluation import evaluate_oneshot, format_metrics_table, write_metrics

SEEN, UNSEEN = [1, 2], [3, 4]
# (image id, category, box xywh) on 64x64 images; every category occurs in at least two images.
OBJECTS = [
    (1, 1, [4, 4, 20, 20]), (1, 1, [30, 30, 20, 25]), (1, 3, [40, 2, 20, 18]),
    (2, 1, [10, 10, 30, 30]), (2, 2, [44, 40, 16, 20]), (2, 4, [2, 40, 20, 20]),
    (3, 2, [5, 5, 25, 25]), (3, 3, [35, 35, 25, 25]), (3, 4, [35, 2, 20, 20]),
    (4, 2, [8, 30, 30, 30]), (4, 3, [40, 5, 20, 20]), (4, 1, [2, 2, 12, 12]),
    (5, 4, [10, 10, 40, 40]), (5, 1, [50, 50, 12, 12]),
    (6, 3, [0, 0, 30, 30]), (6, 2, [32, 32, 30, 30]), (6, 4, [40, 0, 22, 22]),
]


@pytest.fixture
def dataset(tmp_path):
    def make(objects=OBJECTS, crowd=(), absent_per_image=0):
        os.makedirs(tmp_path / "images", exist_ok=True)
        images = []
        for image_id in sorted({o[0] for o in objects}):
            arr = np.random.default_rng(image_id).integers(0, 256, (64, 64, 3), dtype=np.uint8)
            Image.fromarray(arr).save(tmp_path / "images" / f"{image_id}.png")
            images.append({"id": image_id, "file_name": f"{image_id}.png", "width": 64, "height": 64})
        anns = [{"id": k + 1, "image_id": i, "category_id": c, "bbox": b, "iscrowd": 0} for k, (i, c, b) in enumerate(objects)]
        anns += [{"id": 100 + k, "image_id": i, "category_id": c, "bbox": b, "iscrowd": 1} for k, (i, c, b) in enumerate(crowd)]
        path = tmp_path / "ann.json"
        path.write_text(json.dumps({"images": images, "annotations": anns,
                                    "categories": [{"id": c, "name": f"c{c}"} for c in SEEN + UNSEEN]}))
        return OneShotEvalDataset(str(path), str(tmp_path / "images"), SEEN + UNSEEN, support_size=16, eval_size=64,
                                  min_exemplar_area=16, absent_per_image=absent_per_image)
    return make


def _xyxy(box):
    return [box[0], box[1], box[0] + box[2], box[1] + box[3]]


def _predictor(boxes_for):
    """``boxes_for(image_id, category_id) -> (boxes xyxy list, scores list)`` as a ``predict``."""
    def predict(query, support, targets):
        assert len(query) == len(support) == len(targets)
        out = []
        for t in targets:
            boxes, scores = boxes_for(t["image_id"], t["category_id"])
            out.append({"boxes": torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
                        "scores": torch.tensor(scores, dtype=torch.float32)})
        return out
    return predict


def _perfect(image_id, category_id):
    boxes = [_xyxy(b) for i, c, b in OBJECTS if i == image_id and c == category_id]
    return boxes, [0.9] * len(boxes)


def _wrong_category(image_id, category_id):
    boxes = [_xyxy(b) for i, c, b in OBJECTS if i == image_id and c != category_id]
    return boxes, [0.9] * len(boxes)


def _noisy(image_id, category_id):
    rng = np.random.default_rng(image_id * 10 + category_id)
    boxes, scores = [], []
    for i, c, b in OBJECTS:
        if i == image_id:
            jitter = rng.uniform(-4, 4, 4) if c == category_id else rng.uniform(-1, 1, 4)
            boxes.append(list(np.array(_xyxy(b)) + jitter))
            scores.append(float(rng.uniform(0.3, 1.0) if c == category_id else rng.uniform(0.0, 0.8)))
    return boxes, scores


KW = dict(seen_ids=SEEN, unseen_ids=UNSEEN, batch_size=4)


def test_perfect_detections_score_one(dataset):
    m = evaluate_oneshot(_predictor(_perfect), dataset(), runs=2, **KW)
    for key in ("seen_ap50", "seen_ap", "unseen_ap50", "unseen_ap"):
        assert m[key] == pytest.approx(1.0)
    assert m["seen_ap50_std"] == 0.0 and len(m["per_run"]) == 2
    assert {row["category_id"]: row["ap50"] for row in m["per_category"]} == {c: pytest.approx(1.0) for c in SEEN + UNSEEN}
    assert m["num_items_seen"] == 8 and m["num_items_unseen"] == 8 and "absent_class" not in m


def test_wrong_category_detections_score_zero(dataset):
    m = evaluate_oneshot(_predictor(_wrong_category), dataset(), runs=1, **KW)
    assert m["seen_ap50"] == 0.0 and m["unseen_ap50"] == 0.0 and m["seen_ap"] == 0.0


def test_no_detections_score_zero(dataset):
    m = evaluate_oneshot(_predictor(lambda i, c: ([], [])), dataset(), runs=1, **KW)
    assert m["seen_ap50"] == 0.0 and m["unseen_ap"] == 0.0


def test_agrees_with_a_direct_pycocotools_computation(dataset):
    ds = dataset()
    m = evaluate_oneshot(_predictor(_noisy), ds, runs=1, **KW)
    # direct: one pseudo-image per item, standard COCOeval + summarize over each category set
    images, gts, dets = [], [], []
    for j, item in enumerate(ds.items):
        images.append({"id": j + 1})
        for i, c, b in OBJECTS:
            if i == item.image_id and c == item.category_id:
                gts.append({"id": len(gts) + 1, "image_id": j + 1, "category_id": c, "bbox": b, "area": b[2] * b[3],
                            "iscrowd": 0})
        for box, score in zip(*_noisy(item.image_id, item.category_id)):
            dets.append({"image_id": j + 1, "category_id": item.category_id, "score": score,
                         "bbox": [box[0], box[1], box[2] - box[0], box[3] - box[1]]})
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO()
        gt.dataset = {"images": images, "annotations": gts, "categories": [{"id": c} for c in SEEN + UNSEEN]}
        gt.createIndex()
        dt = gt.loadRes(dets)
        for ids, prefix in ((SEEN, "seen"), (UNSEEN, "unseen")):
            ev = COCOeval(gt, dt, "bbox")
            ev.params.catIds = ids
            ev.evaluate()
            ev.accumulate()
            ev.summarize()
            assert m[f"{prefix}_ap"] == pytest.approx(ev.stats[0], abs=1e-9)
            assert m[f"{prefix}_ap50"] == pytest.approx(ev.stats[1], abs=1e-9)
    assert 0.05 < m["seen_ap"] < 0.95  # a non-trivial case


def test_seen_and_unseen_are_never_mixed(dataset):
    def seen_only(image_id, category_id):
        return _perfect(image_id, category_id) if category_id in SEEN else _wrong_category(image_id, category_id)
    m = evaluate_oneshot(_predictor(seen_only), dataset(), runs=1, **KW)
    assert m["seen_ap50"] == pytest.approx(1.0) and m["unseen_ap50"] == 0.0
    assert {r["category_id"]: r["split"] for r in m["per_category"]} == {1: "seen", 2: "seen", 3: "unseen", 4: "unseen"}
    with pytest.raises(ValueError, match="both seen and unseen"):
        evaluate_oneshot(_predictor(_perfect), dataset(), runs=1, seen_ids=[1, 2, 3], unseen_ids=[3, 4])


def test_crowd_regions_are_ignored(dataset):
    crowd_box = [0, 44, 18, 18]
    ds = dataset(crowd=[(1, 1, crowd_box)])

    def with_crowd_hit(image_id, category_id):
        boxes, scores = _perfect(image_id, category_id)
        if (image_id, category_id) == (1, 1):
            boxes, scores = boxes + [_xyxy(crowd_box)], scores + [0.95]  # a confident box on the crowd region
        return boxes, scores
    m = evaluate_oneshot(_predictor(with_crowd_hit), ds, runs=1, **KW)
    assert m["seen_ap50"] == pytest.approx(1.0)


def test_absent_class_is_reported_separately(dataset):
    plain, with_absent = dataset(), dataset(absent_per_image=2)
    assert len(with_absent.items) > len(plain.items)

    def fires_everywhere(image_id, category_id):  # perfect where present, a confident box where absent
        boxes, scores = _perfect(image_id, category_id)
        return (boxes, scores) if boxes else ([[10, 10, 40, 40]], [0.99])
    a = evaluate_oneshot(_predictor(fires_everywhere), plain, runs=1, **KW)
    b = evaluate_oneshot(_predictor(fires_everywhere), with_absent, runs=1, **KW)
    for key in ("seen_ap50", "seen_ap", "unseen_ap50", "unseen_ap", "num_items_seen", "num_items_unseen"):
        assert a[key] == b[key]  # the comparable numbers do not change
    assert b["absent_class"]["num_absent_items"] == len(with_absent.items) - len(plain.items)
    assert b["absent_class"]["seen_ap50"] < 1.0 or b["absent_class"]["unseen_ap50"] < 1.0
    assert "Absent-class protocol" in format_metrics_table(b)


def test_metrics_file_and_table(dataset, tmp_path):
    m = evaluate_oneshot(_predictor(_noisy), dataset(), runs=3, **KW)
    assert len(m["per_run"]) == 3 and m["seen_ap50_min"] <= m["seen_ap50"] <= m["seen_ap50_max"]
    assert all(len(r["ap50_per_run"]) == 3 for r in m["per_category"])
    path = write_metrics(m, str(tmp_path / "out"))
    assert path.endswith(os.path.join("out", "metrics.json"))
    with open(path) as f:
        assert json.load(f)["seen_ap50"] == m["seen_ap50"]
    table = format_metrics_table(m)
    assert "| seen |" in table and "| c3 | unseen |" in table


def test_predict_must_answer_every_item(dataset):
    with pytest.raises(ValueError, match="returned 1 results for a batch of 4"):
        evaluate_oneshot(lambda q, s, t: [{"boxes": torch.zeros(0, 4), "scores": torch.zeros(0)}], dataset(), runs=1, **KW)
