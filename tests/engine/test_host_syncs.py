"""What a training step asks of an accelerator, counted on the CPU (detector/utils/op_audit.py):
host synchronisations and operators, and the pieces that keep them down."""
import pytest
import torch
import torch.nn.functional as F

from detector.engine import train_step
from detector.loss_window import LossWindow
from detector.models import build_model
from detector.models.detector import resize_valid
from detector.structures import ImageBatch
from detector.utils.op_audit import OpAudit

DEMO_LIKE = ["model.support_layout=box", "model.attention_sink=true", "model.correlation_channels=4",
             "model.proposal_nms=0.7", "model.support_conditioning=false", "model.attention_impl=reference"]


def test_the_audit_counts_reads_transfers_and_data_dependent_sizes():
    device_tensor = torch.randn(8)
    with OpAudit([device_tensor]) as audit:
        host = torch.arange(3)
        host.tolist(), float(host.sum())  # host values: free
        y = device_tensor * 2  # one kernel, its result on the device
        y.sum().item()  # 1
        bool((y > 0).any())  # 2
        y.cpu()  # 3
        y[y > 0]  # 4 (boolean mask)
        torch.nonzero(y)  # 5
        host.to(y.device)  # 6 (blocking upload)
        host.to(y.device, non_blocking=True)  # an asynchronous upload
        y.view(2, 4).expand(3, 2, 4)  # views: no kernel
    assert audit.syncs == 6 and audit.uploads == 1
    assert {site.split(" (")[-1] for site in audit.sync_sites} == {
        "item)", "__bool__)", "to host)", "index with a bool mask)", "nonzero)", "blocking upload)"}
    assert audit.op_names["mul"] == 1 and audit.op_names["view"] == 0 and audit.op_names["expand"] == 0


def batch(g, b=2, size=64, s_size=32):
    query = ImageBatch.from_tensors([torch.rand(3, size, size - 16 * i, generator=g) for i in range(b)])
    support = ImageBatch.from_tensors([torch.rand(3, s_size, s_size, generator=g) for _ in range(b)])
    targets = [{"boxes": torch.tensor([[0.3, 0.4, 0.2, 0.3], [0.7, 0.6, 0.25, 0.2]])}, {"boxes": torch.zeros(0, 4)}]
    return query, support, targets[:b]


@pytest.mark.parametrize("layout", [DEMO_LIKE, ["model.support_layout=resize", "model.num_queries_one2many=12"],
                                    ["model.support_layout=pad", "model.attention_impl=fused"]],
                         ids=["demo", "resize+hybrid", "pad+fused"])
def test_a_training_step_waits_for_the_matching_and_the_proposal_nms_only(tiny_cfg, layout, monkeypatch):
    import detector.models.nms as nms_module

    monkeypatch.setattr(nms_module, "CHUNK_BOXES", {"cpu": nms_module.CHUNK_BOXES["cuda"]})  # as on CUDA
    model, criterion, postprocess = build_model(tiny_cfg(*layout))
    query, support, targets = batch(torch.Generator().manual_seed(0))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, foreach=True)
    scaler = torch.amp.GradScaler("cuda", enabled=False)
    device = [model.parameters(), model.buffers(), query.tensors, query.mask, query.image_sizes,
              support.tensors, support.mask, support.image_sizes, targets]
    # The waits by design: the matching's costs (all prediction sets of the step in one copy) and,
    # with proposal_nms (the demo), one NMS call for the batch's proposals.
    nms = ["detector/models/nms.py"] if model.proposal_nms > 0 else []
    model.train()
    window = LossWindow()
    for i in range(2):
        with OpAudit(*device) as audit:
            window.add(i, train_step(model, criterion, optimizer, scaler, query, support, targets, None, 0.1))
        assert sorted(site.split(":")[0] for site in audit.sync_sites) == sorted(["detector/models/matcher.py"] + nms)
        assert audit.syncs == 1 + len(nms), audit.report()
    model.eval()
    with OpAudit(*device) as audit, torch.no_grad():
        model(query, support)
    assert audit.syncs == len(nms), audit.report()


def test_the_loss_window_reads_once_and_names_the_first_bad_iteration():
    window = LossWindow()
    for i, v in enumerate([1.0, 3.0, 5.0]):
        window.add(10 + i, {"loss_class": torch.tensor(v / 2), "loss": torch.tensor(v)})
        if i == 1:  # a checkpoint between two log lines: checked, and still in the next log line's means
            with OpAudit(window.rows) as audit:  # (the stacked losses live on the device)
                assert window.check() is None
            assert audit.syncs == 1
    with OpAudit(window.rows) as audit:
        means, bad = window.take()
    assert audit.syncs == 1 and bad is None and len(window) == 0
    assert means == {"loss_class": 1.5, "loss": 3.0}
    for i, v in enumerate([1.0, float("nan"), float("inf")]):
        window.add(20 + i, {"loss_class": torch.tensor(0.0), "loss": torch.tensor(v)})
    means, bad = window.take()
    assert bad[0] == 21 and bad[1] != bad[1]  # the first bad step, its value (nan)
    assert window.take() == ({}, None) and window.check() is None


def test_resize_valid_is_interpolate_of_each_valid_region():
    g = torch.Generator().manual_seed(0)
    for _ in range(20):
        hs, ws, h, w = (int(x) for x in torch.randint(2, 14, (4,), generator=g))
        feats = torch.randn(3, 5, hs, ws, generator=g)
        src = torch.stack([torch.randint(1, hs + 1, (3,), generator=g), torch.randint(1, ws + 1, (3,), generator=g)], 1)
        dst = torch.stack([torch.randint(1, h + 1, (3,), generator=g), torch.randint(1, w + 1, (3,), generator=g)], 1)
        out = resize_valid(feats, src, dst, (h, w))
        assert out.shape == (3, 5, h, w)
        for i in range(3):
            want = F.interpolate(feats[i:i + 1, :, :src[i, 0], :src[i, 1]], size=tuple(dst[i].tolist()),
                                 mode="bilinear", align_corners=False)[0]
            torch.testing.assert_close(out[i, :, :dst[i, 0], :dst[i, 1]], want, rtol=1e-5, atol=1e-5)
