"""tools/export.py (oneshot-export) and hubconf.py: a trained tiny checkpoint exported, checked on
pairs of its own validation data and on random images, benchmarked; mistakes are one line, exit 2,
nothing written; torch.hub.load(..., source="local") gives the inference API."""
import os

import numpy as np
import pytest
import torch

import detector_tools.export as export_tool
from detector.config import load_config, to_dict
from detector.models import build_model
from detector.utils.checkpoint import checkpoint_state, save_checkpoint

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TINY = os.path.join(ROOT, "configs", "tiny.yaml")


@pytest.fixture(scope="module")
def checkpoint(bench, tmp_path_factory):
    """A tiny checkpoint of the demo's kind (box layout, sink, correlation, proposal NMS, NMS of the
    detections) on the tiny benchmark, its weights randomised away from the zero-initialised heads."""
    torch.manual_seed(0)
    cfg = load_config(TINY, [f"data.root={bench}", "model.support_layout=box", "model.attention_sink=true",
                             "model.correlation_channels=4", "model.proposal_nms=0.7", "model.attention_impl=reference",
                             "eval.nms_iou=0.5"])
    model, _, _ = build_model(cfg)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return save_checkpoint(str(tmp_path_factory.mktemp("export") / "demo_like.pth"), checkpoint_state(model, to_dict(cfg)))


@pytest.fixture(scope="module")
def resize_checkpoint(bench, tmp_path_factory):
    """A tiny checkpoint with the ``resize`` support layout, which the export refuses."""
    torch.manual_seed(0)
    cfg = load_config(TINY, [f"data.root={bench}", "model.support_layout=resize"])
    model, _, _ = build_model(cfg)
    return save_checkpoint(str(tmp_path_factory.mktemp("export") / "resize.pth"), checkpoint_state(model, to_dict(cfg)))


def _call(*argv):
    try:
        return export_tool.main(list(argv))
    except SystemExit as e:  # argparse
        return e.code


def test_export_checks_on_validation_pairs_and_benchmarks(checkpoint, tmp_path, capsys):
    ort = pytest.importorskip("onnxruntime")
    ckpt = checkpoint
    out = tmp_path / "deploy" / "model.onnx"
    rc = _call("--checkpoint", ckpt, "--format", "onnx", "--output", str(out), "--check-pairs", "5",
               "--benchmark", "2")
    stdout = capsys.readouterr().out
    assert rc == 0 and out.is_file(), stdout
    assert "query 64x64, exemplar 32x32, dynamic batch; onnxruntime vs PyTorch on 5 pairs" in stdout
    assert "one pair, 1 thread(s), median of 2: onnxruntime" in stdout
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["query", "query_hw", "support", "support_hw"]
    assert [o.name for o in session.get_outputs()] == ["boxes", "scores", "num_detections"]
    rc = _call("--checkpoint", ckpt, "--output", str(tmp_path / "m96.onnx"), "--size", "96", "--check-split", "random",
               "--check-pairs", "3")
    assert rc == 0 and "query 96x96" in capsys.readouterr().out


@pytest.mark.parametrize("extra, needle", [
    (["--size", "80"], "--size 80: the query size must be a positive multiple of 32"),
    (["--format", "tflite"], "argument --format: invalid choice"),
    (["--output", "{tmp}"], "is a folder; give a file name"),
    (["--checkpoint", "{resize}"], "supports the 'box' and 'pad' support layouts"),
])
def test_export_mistakes_are_one_line_and_write_nothing(checkpoint, resize_checkpoint, tmp_path, capsys, extra, needle):
    extra = [e.replace("{tmp}", str(tmp_path)).replace("{resize}", resize_checkpoint) for e in extra]
    args = ["--checkpoint", checkpoint, "--output", str(tmp_path / "m.onnx"), "--check-split", "random"]
    rc = _call(*args, *extra)
    err = capsys.readouterr().err
    assert rc == 2 and len(err.strip().splitlines()) == 1 and needle in err, err
    assert os.listdir(tmp_path) == []


def test_torch_hub_load_local_gives_the_inference_api(reference):
    from detector import OneShotDetector

    det = torch.hub.load(ROOT, "oneshot_detector", checkpoint=str(reference / "checkpoint_00000008.pth"),
                         source="local")
    assert isinstance(det, OneShotDetector) and det.device.type == "cpu"
    image = np.random.default_rng(0).integers(0, 256, (50, 60, 3), dtype=np.uint8)
    result = det.predict(image, [image, image[:30]], score_threshold=0.0)
    assert (result["width"], result["height"]) == (60, 50) and len(result["detections"]) > 0
