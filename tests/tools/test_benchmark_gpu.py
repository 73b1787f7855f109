"""The GPU suite of tools/benchmark.py, run on the CPU at small sizes (CI has no GPU): every table is
filled, and the training and inference steps wait for the device as often as designed."""
import os
import subprocess
import sys

import pytest
import torch

from detector.benchmark.gpu_suite import SCALES, run_suite, tables

TINY = {
    "decoder": [("8x8, 10 + 20, batch 2", 2, 8, 8, 10, 20), ("evaluation, 8x8, 10, batch 1, forward", 1, 8, 8, 10, 0)],
    "train": {"size": 128, "support": 64, "batch": 2, "one2one": 20, "one2many": 40},
    "infer": {"size": 128, "batched_size": 128, "batch": 2, "support": 64, "queries": 20},
    "demo": {"batch": 2, "batches": 2, "compile": [False]},
    "warmup": 1, "iters": 1,
}


def test_the_gpu_suite_runs_on_the_cpu_and_fills_every_table():
    from detector.models import nms

    before = dict(nms.CHUNK_BOXES)
    torch.set_num_threads(1)
    demo_config = os.path.join(__file__.rsplit("/tests/", 1)[0], "configs", "synthetic.yaml")
    rows = run_suite(torch.device("cpu"), TINY, ["reference", "fused"], demo_config)
    assert not [r for r in rows if "error" in r], [r["error"] for r in rows if "error" in r]
    parts = [(r["part"], r.get("impl")) for r in rows]
    assert parts == [("decoder", "reference"), ("decoder", "fused")] * 2 + [("train", "reference"), ("train", "fused"),
                                                                              ("infer", "reference"), ("infer", "fused"),
                                                                              ("demo", None)]
    for r in rows:
        if r["part"] in ("decoder", "train", "demo"):
            assert r["median_s"] > 0 and len(r["times_s"]) >= 1
    train = [r for r in rows if r["part"] == "train"]
    # One wait per training step (the matching's costs), none in inference until the results'
    # single copy to the host, whatever the kernel.
    assert all(r["syncs"] == 1 and list(r["sync_sites"]) == [s for s in r["sync_sites"] if "matcher.py" in s] for r in train)
    assert all(r["images_per_s"] > 0 and r["ops"] > 100 for r in train)
    infer = [r for r in rows if r["part"] == "infer"]
    assert all(r["single_syncs"] == 1 and r["batched_syncs"] == 1 and r["batched_pairs_per_s"] > 0 for r in infer)
    assert nms.CHUNK_BOXES == before  # the suite groups NMS calls as on CUDA while it runs, then restores
    demo = rows[-1]  # proposal_nms: the proposals' NMS for the batch (grouped as on CUDA), plus the matching
    assert demo["syncs"] == 2 and sorted(s.split(":")[0] for s in demo["sync_sites"]) == [
        "detector/models/matcher.py", "detector/models/nms.py"]
    assert demo["images_per_s"] > 0
    text = tables(rows, "CPU", torch.__version__, TINY)
    for heading in ("### Decoder", "### Whole model, training", "### Inference", "### Demo config", "fused / reference"):
        assert heading in text
    assert "error" not in text


def test_the_cuda_scale_has_the_issue_operating_points():
    cuda = SCALES["cuda"]
    assert ("32x32, 300 + 1500, batch 16", 16, 32, 32, 300, 1500) in cuda["decoder"]
    assert cuda["train"] == {"size": 512, "support": 128, "batch": 16, "one2one": 300, "one2many": 1500}
    assert cuda["infer"]["size"] == 512 and cuda["infer"]["batched_size"] == 256


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message of a machine without CUDA")
def test_asking_for_cuda_without_a_gpu_is_one_line():
    tool = os.path.join(__file__.rsplit("/tests/", 1)[0], "tools", "benchmark.py")
    proc = subprocess.run([sys.executable, tool, "--device", "cuda"], capture_output=True, text=True)
    assert proc.returncode == 2 and proc.stderr.strip().count("\n") == 0 and "no CUDA GPU" in proc.stderr
