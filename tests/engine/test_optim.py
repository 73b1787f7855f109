"""Optimiser groups come from modules; the schedule has known values."""
import math

import pytest
import torch

from detector.config import load_config
from detector.models import build_model
from detector.optim import build_optimizer, build_scheduler, lr_factor, param_groups


def test_backbone_group_is_the_backbone_body_module(tiny_cfg):
    cfg = tiny_cfg("train.lr=1e-3", "train.lr_backbone=1e-5")
    model, _, _ = build_model(cfg)
    groups = {g["name"]: g for g in param_groups(model, cfg.train)}
    body = {id(p) for p in model.backbone.body.parameters() if p.requires_grad}
    in_backbone = {id(p) for n in ("backbone", "backbone_no_decay") for p in groups.get(n, {"params": []})["params"]}
    assert in_backbone == body
    assert groups["backbone"]["lr"] == 1e-5 and groups["decoder"]["lr"] == 1e-3
    # The projection belongs to model.backbone but not to its body: it trains at the decoder rate.
    proj = {id(p) for p in model.backbone.proj.parameters()}
    assert proj.isdisjoint(in_backbone)
    everything = [id(p) for g in groups.values() for p in g["params"]]
    assert len(everything) == len(set(everything)) == sum(1 for p in model.parameters() if p.requires_grad)
    # Norms, biases and embeddings are not decayed.
    assert groups["decoder_no_decay"]["weight_decay"] == 0.0
    assert id(model.query_embed.weight) in {id(p) for p in groups["decoder_no_decay"]["params"]}


def test_frozen_backbone_has_no_backbone_group(tiny_cfg):
    cfg = tiny_cfg("model.backbone.freeze=true")
    model, _, _ = build_model(cfg)
    assert [g["name"] for g in param_groups(model, cfg.train)] == ["decoder", "decoder_no_decay"]


@pytest.mark.parametrize("schedule, it, expected", [
    ("constant", 0, 0.1), ("constant", 9, 1.0), ("constant", 500, 1.0),
    ("step", 15, 1.0), ("step", 19, 1.0), ("step", 20, 0.1), ("step", 45, 0.01),
    ("cosine", 10, 1.0), ("cosine", 55, 0.5), ("cosine", 100, 0.0),
])
def test_lr_factor_known_values(schedule, it, expected):
    cfg = load_config(None, [f"train.lr_schedule={schedule}", "train.warmup_iters=10", "train.lr_drop_epochs=[2, 4]"])
    assert lr_factor(it, iters_per_epoch=10, total_iters=100, cfg=cfg.train) == pytest.approx(expected, abs=1e-9)


def test_scheduler_steps_every_group_and_round_trips(tiny_cfg):
    cfg = tiny_cfg("train.lr=1e-3", "train.warmup_iters=4", "train.lr_schedule=cosine", "model.backbone.freeze=true")
    model, _, _ = build_model(cfg)
    opt = build_optimizer(model, cfg.train)
    sched = build_scheduler(opt, iters_per_epoch=5, total_iters=20, cfg=cfg.train)
    assert opt.param_groups[0]["lr"] == pytest.approx(1e-3 / 4)
    for _ in range(6):
        opt.step()
        sched.step()
    expected = 1e-3 * 0.5 * (1 + math.cos(math.pi * 2 / 16))
    assert opt.param_groups[0]["lr"] == pytest.approx(expected)
    state = sched.state_dict()
    opt2 = build_optimizer(model, cfg.train)
    sched2 = build_scheduler(opt2, 5, 20, cfg.train)
    sched2.load_state_dict(state)
    opt2.step()
    sched2.step()
    opt.step()
    sched.step()
    assert opt2.param_groups[0]["lr"] == pytest.approx(opt.param_groups[0]["lr"])


def test_a_loaded_state_keeps_the_optimisers_own_implementation():
    from detector.optim import load_optimizer_state

    params = [torch.nn.Parameter(torch.randn(3, 2))]
    saved_by = torch.optim.AdamW(params, lr=0.1, foreach=False)  # as the CPU runs it
    params[0].grad = torch.ones(3, 2)
    saved_by.step()
    state = saved_by.state_dict()
    for kind in ({"foreach": True}, {"fused": True}):  # as CUDA runs it (fused AdamW also runs on the CPU)
        loaded = torch.optim.AdamW(params, lr=0.5, **kind)
        load_optimizer_state(loaded, state)
        key = next(iter(kind))
        assert loaded.param_groups[0][key] is True and loaded.param_groups[0]["lr"] == 0.1
        assert torch.equal(loaded.state[params[0]]["exp_avg"], saved_by.state[params[0]]["exp_avg"])
        loaded.step()  # runs with the loaded state
    assert state["param_groups"][0]["foreach"] is False  # the saved dict is not changed


def test_the_cpu_update_is_fused_and_gives_the_plain_loops_values(tiny_cfg):
    import copy

    cfg = tiny_cfg()
    model = build_model(cfg)[0]
    twin = copy.deepcopy(model)
    fused = build_optimizer(model, cfg.train)
    assert all(g["fused"] is True for g in fused.param_groups)
    plain = torch.optim.AdamW(param_groups(twin, cfg.train), lr=cfg.train.lr, weight_decay=cfg.train.weight_decay,
                              foreach=False)
    pairs = [(p, q) for p, q in zip(model.parameters(), twin.parameters()) if p.requires_grad]
    start = [p.detach().clone() for p, _ in pairs]
    g = torch.Generator().manual_seed(0)
    for _ in range(3):
        for p, q in pairs:
            p.grad = torch.randn(p.shape, generator=g)
            q.grad = p.grad.clone()
        fused.step()
        plain.step()
    for (p, q), s in zip(pairs, start):
        torch.testing.assert_close(p.detach(), q.detach(), atol=1e-6, rtol=1e-6)
    assert all(not torch.equal(p.detach(), s) for (p, _), s in zip(pairs, start))
