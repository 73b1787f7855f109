"""ONNX export: onnxruntime agrees with PyTorch (the model and its PostProcess) on a tiny model of
the demo's kind, for any batch size; a graph that disagrees is never written; the inputs follow
the documented preprocessing; the sizes are checked."""
import os

import numpy as np
import pytest
import torch

from detector.errors import InputError
from detector.export import (ExportMismatchError, check_onnx, export_onnx, pack_inputs, pixel_mask, random_inputs,
                             torch_detections)
from detector.models import build_model
from detector.structures import ImageBatch

ort = pytest.importorskip("onnxruntime")

# The demo's model (box layout, sink, correlation, proposal NMS, NMS of the detections) at toy size.
DEMO_LIKE = ["model.support_layout=box", "model.attention_sink=true", "model.correlation_channels=4",
             "model.proposal_nms=0.7", "model.support_conditioning=false", "model.bias_box_prior=8",
             "model.attention_impl=reference", "model.num_queries=10", "model.proposal_sizes=[0.3,0.6]",
             "eval.nms_iou=0.3", "eval.max_detections=10"]


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """A randomised tiny model, its PostProcess, and its graph at query size 64 (exemplars 32)."""
    from tests.conftest import TINY_MODEL
    from detector.config import load_config

    torch.manual_seed(0)
    cfg = load_config(None, TINY_MODEL + DEMO_LIKE + ["model.support_size=32"])
    model, _, post = build_model(cfg)
    with torch.no_grad():  # away from the zero-initialised heads: varied boxes and scores
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
    path = str(tmp_path_factory.mktemp("onnx") / "tiny.onnx")
    rng = np.random.default_rng(0)
    report = export_onnx(model.eval(), post, path, 64, 32, [random_inputs(3, 64, 32, rng)])
    return model, post, path, report


def test_onnxruntime_agrees_with_pytorch_for_any_batch_size(exported):
    model, post, path, report = exported
    assert report["ok"] and report["pairs"] == 3
    rng = np.random.default_rng(1)
    batches = [random_inputs(b, 64, 32, rng) for b in (1, 2, 5)]
    again = check_onnx(path, model, post, batches)
    assert again["ok"] and again["pairs"] == 8 and again["count_mismatches"] == 0
    assert again["max_score_diff"] < 1e-5 and again["max_box_diff"] < 1e-3
    session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    boxes, scores, num = session.run(None, batches[2])
    assert boxes.shape == (5, 10, 4) and scores.shape == (5, 10) and num.dtype == np.int64
    assert (num < 10).any() and (num > 1).all(), num  # the NMS of the detections dropped some
    for i, n in enumerate(num):
        assert np.all(np.diff(scores[i, :n]) <= 0) and np.all(scores[i, n:] == 0) and np.all(boxes[i, n:] == 0)
        h, w = batches[2]["query_hw"][i]
        assert np.all(boxes[i, :n, 0::2] <= w) and np.all(boxes[i, :n, 1::2] <= h) and np.all(boxes[i, :n] >= 0)


def test_the_graph_inputs_are_the_pipelines_image_batches(exported):
    """pack_inputs + pixel_mask rebuild exactly the ImageBatch the inference API makes."""
    model, post, _, _ = exported
    g = torch.Generator().manual_seed(2)
    queries = [torch.rand(3, 64, 40, generator=g), torch.rand(3, 48, 64, generator=g)]
    supports = [torch.rand(3, 32, 20, generator=g), torch.rand(3, 12, 32, generator=g)]
    inputs = pack_inputs(queries, supports, 64, 32)
    query = ImageBatch.from_tensors(queries)
    support = ImageBatch.from_tensors(supports, size_divisibility=32)
    assert np.array_equal(inputs["query"], query.tensors.numpy())
    assert torch.equal(pixel_mask(torch.from_numpy(inputs["query"]), torch.from_numpy(inputs["query_hw"])), query.mask)
    assert np.array_equal(inputs["support_hw"], support.image_sizes.numpy())
    with torch.no_grad():
        expected = post(model(query, support), query.image_sizes)
    got = torch_detections(model, post, inputs)
    assert all(torch.equal(a["scores"], b["scores"]) and torch.equal(a["boxes"], b["boxes"]) for a, b in zip(got, expected))
    with pytest.raises(InputError, match="does not fit the graph's 64x64 input"):
        pack_inputs([torch.rand(3, 96, 64)], supports[:1], 64, 32)


def test_a_graph_that_disagrees_is_not_written(exported, tmp_path, monkeypatch):
    import detector.export as export

    model, post, _, _ = exported
    real = export.torch_detections

    def off_by_a_bit(*args):
        return [{"scores": r["scores"] + 2e-3, "boxes": r["boxes"]} for r in real(*args)]

    monkeypatch.setattr(export, "torch_detections", off_by_a_bit)
    path = tmp_path / "bad.onnx"
    with pytest.raises(ExportMismatchError, match="max score difference 2.00e-03.*nothing written"):
        export_onnx(model, post, str(path), 64, 32, [random_inputs(2, 64, 32, np.random.default_rng(3))])
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("size, message", [(48, "multiple of 32"), (32, "8 proposals for 10 object queries")])
def test_sizes_the_graph_cannot_take_are_refused(exported, tmp_path, size, message):
    model, post, _, _ = exported
    with pytest.raises(InputError, match=message):
        export_onnx(model, post, str(tmp_path / "m.onnx"), size, 32, [])
