"""Hungarian matcher: batched equals per-image, empty targets, known costs."""
import math

import torch

from detector.models.matcher import HungarianMatcher, focal_class_cost


def test_batched_equals_per_image():
    matcher = HungarianMatcher()
    logits = torch.randn(3, 7, 1)
    boxes = torch.rand(3, 7, 4) * 0.5 + 0.25
    targets = [{"boxes": torch.rand(n, 4) * 0.5 + 0.25} for n in (2, 0, 5)]
    batched = matcher({"pred_logits": logits, "pred_boxes": boxes}, targets)
    for i, t in enumerate(targets):
        single = matcher({"pred_logits": logits[i:i + 1], "pred_boxes": boxes[i:i + 1]}, [t])[0]
        assert torch.equal(batched[i][0], single[0]) and torch.equal(batched[i][1], single[1])
    assert [len(src) for src, _ in batched] == [2, 0, 5]


def test_all_targets_empty():
    matcher = HungarianMatcher()
    out = matcher({"pred_logits": torch.randn(2, 4, 1), "pred_boxes": torch.rand(2, 4, 4)},
                  [{"boxes": torch.zeros(0, 4)}, {"boxes": torch.zeros(0, 4)}])
    assert all(len(s) == 0 and len(t) == 0 for s, t in out)


def test_costs_agree_with_hand_computation():
    matcher = HungarianMatcher(cost_class=2.0, cost_bbox=5.0, cost_giou=2.0, focal_alpha=0.25, focal_gamma=2.0)
    pred_logits = torch.tensor([[0.0]])  # p = 0.5
    pred = torch.tensor([[0.5, 0.5, 0.2, 0.2]])  # xyxy (0.4, 0.4, 0.6, 0.6)
    tgt = torch.tensor([[0.55, 0.5, 0.2, 0.2]])  # xyxy (0.45, 0.4, 0.65, 0.6)
    p = 0.5
    focal = 0.25 * (1 - p) ** 2 * -math.log(p) - 0.75 * p ** 2 * -math.log(1 - p)
    l1 = 0.05
    inter, union, enclosing = 0.15 * 0.2, 0.04 + 0.04 - 0.15 * 0.2, 0.25 * 0.2
    giou = inter / union - (enclosing - union) / enclosing
    expected = 2.0 * focal + 5.0 * l1 - 2.0 * giou
    got = matcher.cost_matrix(pred_logits, pred, tgt)
    assert abs(got.item() - expected) < 1e-5
    assert abs(focal_class_cost(pred_logits, 0.25, 2.0).item() - focal) < 1e-6


def test_matching_prefers_the_obvious_assignment():
    matcher = HungarianMatcher()
    tgt = torch.tensor([[0.2, 0.2, 0.1, 0.1], [0.8, 0.8, 0.2, 0.2]])
    boxes = torch.stack([tgt[1], torch.tensor([0.5, 0.5, 0.9, 0.9]), tgt[0]])[None]
    src, dst = matcher({"pred_logits": torch.zeros(1, 3, 1), "pred_boxes": boxes}, [{"boxes": tgt}])[0]
    assert dict(zip(src.tolist(), dst.tolist())) == {0: 1, 2: 0}
