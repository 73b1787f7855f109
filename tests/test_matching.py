"""detector.matching: the training-free anchors find exact copies of the exemplar, refuse bad
boxes, and are scored by the real-photo evaluation beside the model."""
import numpy as np
import pytest

from detector.matching import FeatureMatcher, local_maxima, template_match
from detector.utils.box_ops import box_iou
import torch


def _scene(seed=0, side=24, places=((10, 12), (70, 30), (40, 90))):
    """A smooth random background (150 x 130) with one textured patch pasted at ``places``
    (top-left x, y) -> (image, patch boxes xywh)."""
    rng = np.random.default_rng(seed)
    base = rng.integers(90, 110, (130 // 10 + 1, 150 // 10 + 1, 3)).astype(np.uint8)
    image = np.kron(base, np.ones((10, 10, 1), np.uint8))[:130, :150].copy()
    patch = rng.integers(0, 255, (side, side, 3), dtype=np.uint8)
    for x, y in places:
        image[y:y + side, x:x + side] = patch
    return image, [[float(x), float(y), float(side), float(side)] for x, y in places]


def _xyxy(boxes):
    b = torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4)
    return torch.cat([b[:, :2], b[:, :2] + b[:, 2:]], 1)


def test_template_match_ranks_the_three_copies_first_with_exact_boxes():
    image, truth = _scene()
    result = template_match(image, image, truth[0])
    assert (result["width"], result["height"]) == (150, 130)
    top = [d["bbox"] for d in result["detections"][:3]]
    iou = box_iou(_xyxy(top), _xyxy(truth))[0]
    assert (iou.max(dim=1).values > 0.99).all() and (iou.max(dim=0).values > 0.99).all()
    assert all(d["score"] > 0.99 for d in result["detections"][:3])
    assert all(d["score"] < 0.9 for d in result["detections"][3:])
    scores = [d["score"] for d in result["detections"]]
    assert scores == sorted(scores, reverse=True) and min(scores) >= 0.0


def test_template_match_exemplar_from_another_image():
    image, truth = _scene(places=((10, 12), (70, 30)))
    support, box = _scene(places=((100, 80),))
    top = template_match(image, support, box[0])["detections"][:2]
    iou = box_iou(_xyxy([d["bbox"] for d in top]), _xyxy(truth))[0]
    assert (iou.max(dim=0).values > 0.99).all()


def test_template_match_refuses_a_box_outside_or_empty_and_skips_flat_templates():
    image, _ = _scene()
    with pytest.raises(ValueError, match="outside"):
        template_match(image, image, [500, 500, 10, 10])
    with pytest.raises(ValueError, match="zero area"):
        template_match(image, image, [5, 5, 0, 10])
    flat = np.full((60, 60, 3), 128, np.uint8)
    assert template_match(image, flat, [10, 10, 20, 20])["detections"] == []


def test_local_maxima_are_the_peaks_of_their_window():
    score = np.zeros((9, 9), np.float32)
    score[2, 2], score[2, 3], score[7, 6] = 1.0, 0.5, 0.8
    rows, cols = local_maxima(score, 3)
    peaks = {(int(r), int(c)) for r, c in zip(rows, cols) if score[r, c] > 0}
    assert peaks == {(2, 2), (7, 6)}


def test_feature_matcher_with_the_offline_backbone_finds_the_copies():
    image, truth = _scene(side=40, places=((0, 0), (100, 10), (30, 80)))
    big = np.kron(image, np.ones((2, 2, 1), np.uint8))  # 300 x 260: copies 80 px, room for windows
    truth = [[2 * v for v in b] for b in truth]
    matcher = FeatureMatcher.build()
    result = matcher(big, big, truth[1])
    top = [d["bbox"] for d in result["detections"][:3]]
    iou = box_iou(_xyxy(top), _xyxy(truth))[0]
    assert (iou.max(dim=0).values > 0.5).all()  # every copy is among the three best, boxes on it
    assert result["detections"][0]["score"] > 0.9
