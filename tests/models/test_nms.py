"""The batched NMS mask and the export's distinct top-k: the same answers as torchvision's NMS and
``select_distinct``, in PyTorch and, through ONNX's NonMaxSuppression, in onnxruntime."""
import numpy as np
import pytest
import torch
from torchvision.ops import nms

from detector.models.detector import select_distinct
from detector.models.nms import distinct_top_k, nms_mask


def _boxes(g, b, n):
    centres, sizes = torch.rand(b, n, 2, generator=g), 0.05 + 0.3 * torch.rand(b, n, 2, generator=g)
    return torch.cat([centres, sizes], dim=-1)  # cxcywh


def _xyxy(cxcywh):
    return torch.cat([cxcywh[..., :2] - cxcywh[..., 2:] / 2, cxcywh[..., :2] + cxcywh[..., 2:] / 2], -1)


def test_the_mask_is_torchvisions_nms_per_image():
    g = torch.Generator().manual_seed(0)
    for _ in range(20):
        cxcywh, scores = _boxes(g, 3, 50), torch.rand(3, 50, generator=g)
        xyxy = _xyxy(cxcywh)
        keep = nms_mask(xyxy, scores, 0.4)
        for i in range(3):
            assert sorted(keep[i].nonzero()[:, 0].tolist()) == sorted(nms(xyxy[i], scores[i], 0.4).tolist())


def per_image_select_distinct(scores, boxes, k, iou):
    """The selection written image by image with torchvision's nms (the model's code until the
    batched one replaced it)."""
    picked = []
    m = min(scores.shape[1], 8 * k)
    top_scores, top = scores.float().topk(m, dim=1)
    xyxy = _xyxy(torch.gather(boxes, 1, top[..., None].expand(-1, -1, 4)).float())
    for s, b, idx in zip(top_scores, xyxy, top):
        keep = nms(b, s, iou)
        if len(keep) < k:
            suppressed = torch.ones(m, dtype=torch.bool)
            suppressed[keep] = False
            keep = torch.cat([keep, suppressed.nonzero()[:, 0]])
        picked.append(idx[keep[:k]])
    return torch.stack(picked)


def test_the_mask_is_per_image_nms_when_many_images_share_a_call(monkeypatch):
    import detector.models.nms as nms_module

    g = torch.Generator().manual_seed(2)
    for per_call_boxes in (1, 100, 8192):  # one image per call, two, all
        monkeypatch.setattr(nms_module, "CHUNK_BOXES", {"cpu": per_call_boxes})
        cxcywh, scores = _boxes(g, 5, 50) * 3 - 1, torch.rand(5, 50, generator=g)  # coordinates from -1 to 2
        xyxy = _xyxy(cxcywh)
        keep = nms_mask(xyxy, scores, 0.4)
        for i in range(5):
            assert sorted(keep[i].nonzero()[:, 0].tolist()) == sorted(nms(xyxy[i], scores[i], 0.4).tolist())


def test_distinct_top_k_is_select_distinct():
    g = torch.Generator().manual_seed(1)
    for trial in range(100):
        n = int(torch.randint(10, 300, (1,), generator=g))
        k = min(n, int(torch.randint(1, 12, (1,), generator=g)))
        scores, boxes, iou = torch.randn(3, n, generator=g), _boxes(g, 3, n), float(torch.rand(1, generator=g))
        want = per_image_select_distinct(scores, boxes, k, iou)
        assert torch.equal(distinct_top_k(scores, boxes, k, iou), want), trial
        assert torch.equal(select_distinct(scores, boxes, k, iou), want), trial


def test_onnxruntime_runs_the_same_nms_for_any_batch_size(tmp_path):
    ort = pytest.importorskip("onnxruntime")

    class Graph(torch.nn.Module):
        def forward(self, scores, boxes):
            return distinct_top_k(scores, boxes, 5, 0.5), nms_mask(_xyxy(boxes), scores, 0.3)

    g = torch.Generator().manual_seed(2)
    path = str(tmp_path / "nms.onnx")
    example = (torch.randn(2, 60, generator=g), _boxes(g, 2, 60))
    torch.onnx.export(Graph(), example, path, dynamo=False, opset_version=17, input_names=["scores", "boxes"],
                      dynamic_axes={"scores": {0: "b"}, "boxes": {0: "b"}})
    session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    for b in (1, 4):
        scores, boxes = torch.randn(b, 60, generator=g), _boxes(g, b, 60)
        top, keep = session.run(None, {"scores": scores.numpy(), "boxes": boxes.numpy()})
        assert np.array_equal(top, per_image_select_distinct(scores, boxes, 5, 0.5).numpy())
        assert np.array_equal(keep, nms_mask(_xyxy(boxes), scores, 0.3).numpy())
