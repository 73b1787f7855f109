"""The stacked criterion against scoring each prediction set on its own, and the matcher's stacks."""
import pytest
import torch
import torch.nn.functional as F

from detector.models.criterion import SetCriterion, sigmoid_focal_loss
from detector.models.matcher import HungarianMatcher
from detector.utils.box_ops import box_cxcywh_to_xyxy, generalized_box_iou, paired_generalized_box_iou

WEIGHTS = {"loss_class": 2.0, "loss_bbox": 5.0, "loss_giou": 2.0}


def one_set(matcher, out, targets, num_boxes):
    """DETR's per-set losses, written out plainly (the pre-stacking implementation)."""
    indices = matcher(out, targets)
    batch = torch.cat([torch.full_like(src, i) for i, (src, _) in enumerate(indices)])
    src = torch.cat([s for s, _ in indices])
    classes = torch.zeros_like(out["pred_logits"])
    classes[batch, src, 0] = 1.0
    loss_class = sigmoid_focal_loss(out["pred_logits"], classes).sum() / num_boxes
    pred = out["pred_boxes"][batch, src]
    tgt = torch.cat([t["boxes"][j] for t, (_, j) in zip(targets, indices)])
    loss_bbox = F.l1_loss(pred, tgt, reduction="sum") / num_boxes
    giou = torch.diag(generalized_box_iou(box_cxcywh_to_xyxy(pred), box_cxcywh_to_xyxy(tgt)))
    return {"loss_class": loss_class, "loss_bbox": loss_bbox, "loss_giou": (1 - giou).sum() / num_boxes}


def reference(outputs, targets, matcher, repeat, o2m_weight):
    groups = [("", outputs, targets, 1.0), ("_enc", {"pred_logits": outputs["enc_outputs"]["pred_logits"],
                                                     "pred_boxes": outputs["enc_outputs"]["pred_boxes"]}, targets, 1.0)]
    repeated = [{"boxes": t["boxes"].repeat(repeat, 1)} for t in targets]
    groups.append(("_o2m", outputs["one2many"], repeated, o2m_weight))
    losses = {}
    for suffix, out, tgts, weight in groups:
        n = max(float(sum(len(t["boxes"]) for t in tgts)), 1.0)
        sets = [("", out)] + [(f"_aux{i}", a) for i, a in enumerate(out.get("aux_outputs", []))] if suffix != "_enc" else [("", out)]
        for name, o in sets:
            for k, v in one_set(matcher, o, tgts, n).items():
                losses[f"{k}{name}{suffix}"] = v * WEIGHTS[k] * weight
    losses["loss"] = sum(losses.values())
    return losses


def random_outputs(g, b=3, q=7, q_many=20, layers=3):
    def one(n):
        return {"pred_logits": torch.randn(b, n, 1, generator=g, requires_grad=True),
                "pred_boxes": (torch.rand(b, n, 4, generator=g) * 0.5 + 0.2).requires_grad_()}
    out = one(q)
    out["aux_outputs"] = [one(q) for _ in range(layers - 1)]
    out["enc_outputs"] = one(q)
    out["one2many"] = one(q_many)
    out["one2many"]["aux_outputs"] = [one(q_many) for _ in range(layers - 1)]
    return out


def leaves(out):
    found = []
    for v in out.values():
        if isinstance(v, torch.Tensor):
            found.append(v)
        elif isinstance(v, dict):
            found += leaves(v)
        elif isinstance(v, list):
            for x in v:
                found += leaves(x)
    return found


@pytest.mark.parametrize("sizes", [(2, 0, 3), (0, 0, 0), (1, 4, 1)])
def test_stacked_losses_and_gradients_equal_one_set_at_a_time(sizes):
    g = torch.Generator().manual_seed(sum(sizes))
    outputs = random_outputs(g)
    targets = [{"boxes": torch.rand(n, 4, generator=g) * 0.4 + 0.3} for n in sizes]
    matcher = HungarianMatcher()
    got = SetCriterion(matcher, one2many_repeat=3, one2many_weight=0.5)(outputs, targets)
    want = reference(outputs, targets, matcher, 3, 0.5)
    assert got.keys() == want.keys() and len(got) == 3 * (3 + 1 + 3) + 1
    for k in want:
        torch.testing.assert_close(got[k], want[k], rtol=1e-5, atol=1e-6, msg=k)
    grads_got = torch.autograd.grad(got["loss"], leaves(outputs), allow_unused=True)
    grads_want = torch.autograd.grad(want["loss"], leaves(outputs), allow_unused=True)
    for a, b in zip(grads_got, grads_want):
        torch.testing.assert_close(a if a is not None else torch.zeros(1), b if b is not None else torch.zeros(1),
                                   rtol=1e-5, atol=1e-6)


def test_match_stacked_equals_matching_each_set_and_image():
    g = torch.Generator().manual_seed(3)
    matcher = HungarianMatcher()
    logits, boxes = torch.randn(4, 3, 9, 1, generator=g), torch.rand(4, 3, 9, 4, generator=g) * 0.5 + 0.25
    targets = [{"boxes": torch.rand(n, 4, generator=g) * 0.5 + 0.25} for n in (3, 0, 5)]
    other = [{"boxes": torch.rand(n, 4, generator=g) * 0.5 + 0.25} for n in (1, 2, 0)]
    def group(lg, bx, tgts):
        return lg, bx, torch.cat([t["boxes"] for t in tgts]), [len(t["boxes"]) for t in tgts]

    pairs, pairs_other = matcher.match_stacked([group(logits, boxes, targets),
                                                group(logits[:2, :, :4], boxes[:2, :, :4], other)])
    assert pairs.shape == (4, 4 * 8) and pairs_other.shape == (4, 2 * 3)
    for s in range(4):
        single = matcher({"pred_logits": logits[s], "pred_boxes": boxes[s]}, targets)
        for i, (src, tgt) in enumerate(single):
            keep = (pairs[0] == s) & (pairs[1] == i)
            assert torch.equal(pairs[2][keep], src) and torch.equal(pairs[3][keep], tgt + [0, 3, 3][i])


def test_non_finite_predictions_still_match():
    matcher = HungarianMatcher()
    logits = torch.tensor([[[float("nan")], [0.0]]])
    boxes = torch.tensor([[[0.5, 0.5, 0.2, 0.2], [float("nan")] * 4]])
    src, tgt = matcher({"pred_logits": logits, "pred_boxes": boxes}, [{"boxes": torch.tensor([[0.5, 0.5, 0.2, 0.2]])}])[0]
    assert len(src) == 1 and tgt.tolist() == [0]


def test_paired_generalized_iou_is_the_diagonal():
    g = torch.Generator().manual_seed(0)
    a = box_cxcywh_to_xyxy(torch.rand(50, 4, generator=g) * 0.5 + 0.1)
    b = box_cxcywh_to_xyxy(torch.rand(50, 4, generator=g) * 0.5 + 0.1)
    b[:5] = a[:5]
    got = paired_generalized_box_iou(a, b)
    torch.testing.assert_close(got, torch.diag(generalized_box_iou(a, b)))
    torch.testing.assert_close(got[:5], torch.ones(5))


@pytest.mark.parametrize("nms_iou", [0.0, 0.5])
def test_batched_postprocess_is_the_per_image_one(nms_iou):
    from torchvision.ops import nms

    from detector.models.postprocess import PostProcess, results_to_host

    g = torch.Generator().manual_seed(4)
    crowded = torch.cat([torch.rand(3, 30, 2, generator=g) * 0.2 + 0.4, torch.rand(3, 30, 2, generator=g) * 0.2 + 0.2], -1)
    outputs = {"pred_logits": torch.randn(3, 30, 1, generator=g), "pred_boxes": crowded}
    sizes = torch.tensor([[100, 200], [50, 60], [300, 300]])
    got = results_to_host(PostProcess(num_select=12, nms_iou=nms_iou)(outputs, sizes))
    for i, r in enumerate(got):
        h, w = sizes[i].tolist()
        s = outputs["pred_logits"][i, :, 0].sigmoid()
        b = box_cxcywh_to_xyxy(outputs["pred_boxes"][i]) * torch.tensor([w, h, w, h])
        b[:, 0::2], b[:, 1::2] = b[:, 0::2].clamp(0, w), b[:, 1::2].clamp(0, h)
        keep = (nms(b, s, nms_iou) if nms_iou > 0 else s.argsort(descending=True))[:12]
        assert r["scores"].dtype == torch.float32 and r["scores"].device.type == "cpu"
        torch.testing.assert_close(r["scores"], s[keep])
        torch.testing.assert_close(r["boxes"], b[keep])
    if nms_iou:
        assert any(len(r["scores"]) < 12 for r in got)  # NMS did remove some
