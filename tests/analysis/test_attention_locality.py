"""tools/analysis/attention_locality.py: the mass-inside-the-box measurement on known cases."""
import torch

from detector.models import build_model
from detector.structures import ImageBatch
from tools.analysis.attention_locality import attention_locality


def inputs():
    query = ImageBatch.from_tensors([torch.rand(3, 128, 128), torch.rand(3, 96, 128)])
    support = ImageBatch.from_tensors([torch.rand(3, 64, 64)] * 2, size_divisibility=64)
    return query, support


def test_a_box_prior_reads_inside_the_box_and_no_bias_reads_everywhere(tiny_cfg):
    query, support = inputs()
    stats = {}
    for name, overrides in {"prior": ["model.bias_box_prior=16"], "zero": ["model.bias_box_prior=0"],
                            "misaligned": ["model.attention=misaligned"]}.items():
        torch.manual_seed(0)
        model, _, _ = build_model(tiny_cfg("model.support_layout=pad", *overrides))
        stats[name] = attention_locality(model, query, support, top=3)
    for s in stats.values():
        assert s["mass"].shape == (2, 4) and s["box_share"].shape == (2,)
        assert ((s["mass"] >= 0) & (s["mass"] <= 1)).all()
    # Without a bias (and with a zero-started one) the weights are nearly uniform: mass ~ box share.
    for name in ("zero", "misaligned"):
        share = stats[name]["box_share"][:, None]
        assert (stats[name]["mass"] - share).abs().max() < 0.05, name
        assert stats[name]["bias_std"].abs().max() == 0
    # The prior concentrates every head on its box from the start.
    assert (stats["prior"]["mass"] > 3 * stats["prior"]["box_share"][:, None]).all()
    assert (stats["prior"]["bias_std"] > 1).all()


def test_the_model_is_left_as_it_was(tiny_cfg):
    model, _, _ = build_model(tiny_cfg("model.attention_impl=fused"))
    query, support = inputs()
    attention_locality(model, query, support)
    assert model.decoder.recompute_layers is True
    assert not model.decoder._forward_pre_hooks and not model.decoder._forward_hooks
    assert all(not layer.cross_attn._forward_pre_hooks for layer in model.decoder.layers)
