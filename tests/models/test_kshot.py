"""Several exemplars (k-shot): one exemplar in a list is the one-shot model bit for bit, copies of
one exemplar change nothing, the order does not matter, and each combination is what its
docstring says (one softmax over all exemplars' keys; the mean exemplar; the best match over all
exemplars' cells)."""
import math

import pytest
import torch

from detector.models import build_model
from detector.models.indirect_attention import AttentionSink, IndirectAttention, indirect_attention_reference
from detector.models.kshot import ExemplarFrame, ExemplarKeys, combine_correlation
from detector.models.support_correlation import SupportCorrelation
from detector.structures import ImageBatch

DEMO_LIKE = ["model.support_layout=box", "model.attention_sink=true", "model.correlation_channels=4",
             "model.proposal_nms=0.7", "model.support_conditioning=false", "model.bias_box_prior=8",
             "model.attention_impl=reference"]
VARIANTS = {
    "demo": DEMO_LIKE,
    "pad": ["model.support_layout=pad", "model.attention_impl=fused"],
    "resize": ["model.support_layout=resize", "model.correlation_channels=4"],
    "double_cross": ["model.attention=double_cross", "model.correlation_channels=4"],
}


def _batches(seed):
    g = torch.Generator().manual_seed(seed)
    query = ImageBatch.from_tensors([torch.rand(3, 64, 64, generator=g), torch.rand(3, 64, 48, generator=g)])
    shots = [ImageBatch.from_tensors([torch.rand(3, 32, 20, generator=g), torch.rand(3, 24, 32, generator=g)], 32),
             ImageBatch.from_tensors([torch.rand(3, 32, 32, generator=g), torch.rand(3, 32, 16, generator=g)], 32),
             ImageBatch.from_tensors([torch.rand(3, 16, 32, generator=g), torch.rand(3, 32, 28, generator=g)], 32)]
    return query, shots


def _model(tiny_cfg, variant, *extra):
    model = build_model(tiny_cfg(*VARIANTS[variant], *extra))[0].eval()
    with torch.no_grad():  # away from the zero-initialised heads, so that every path shows in the outputs
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return model


def _flat(out):
    return [out["pred_logits"], out["pred_boxes"]] + [t for a in out["aux_outputs"] for t in a.values()]


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_one_exemplar_in_a_list_is_the_one_shot_path_bit_for_bit(tiny_cfg, variant):
    model = _model(tiny_cfg, variant)
    query, shots = _batches(0)
    with torch.no_grad():
        one, listed = model(query, shots[0]), model(query, [shots[0]])
    assert all(torch.equal(a, b) for a, b in zip(_flat(one), _flat(listed)))


@pytest.mark.parametrize("variant", sorted(VARIANTS))
@pytest.mark.parametrize("keys, correlation", [("joint", "max"), ("mean", "mean")])
def test_copies_of_one_exemplar_give_the_one_shot_detections(tiny_cfg, variant, keys, correlation):
    model = _model(tiny_cfg, variant, f"model.shot_keys={keys}", f"model.shot_correlation={correlation}")
    query, shots = _batches(1)
    with torch.no_grad():
        one, copies = model(query, shots[0]), model(query, [shots[0]] * 3)
        other = model(query, shots[:2])
    assert all(torch.allclose(a, b, atol=1e-5) for a, b in zip(_flat(one), _flat(copies)))
    assert (other["pred_logits"] - one["pred_logits"]).abs().max() > 1e-3  # the second exemplar counts


@pytest.mark.parametrize("variant", ["demo", "pad"])
def test_the_order_of_the_exemplars_does_not_matter(tiny_cfg, variant):
    model = _model(tiny_cfg, variant)
    query, shots = _batches(2)
    with torch.no_grad():
        a, b = model(query, shots), model(query, shots[::-1])
    assert all(torch.allclose(x, y, atol=1e-5) for x, y in zip(_flat(a), _flat(b)))


def test_joint_keys_are_one_softmax_over_every_exemplar_and_cell():
    """k exemplars' keys over one value grid, the bias and a sink: one softmax over the k x N keys
    (each exemplar with prior 1/k) and the sink, each key reading its cell's value."""
    g = torch.Generator().manual_seed(3)
    b, h, q, n, d, k = 2, 3, 4, 6, 5, 3
    qs = torch.randn(b, h, q, d, generator=g)
    keys = [torch.randn(b, h, n, d, generator=g) for _ in range(k)]
    v = torch.randn(b, h, n, d, generator=g)
    bias = torch.randn(b, h, q, 2, generator=g), torch.randn(b, h, q, 3, generator=g)  # a 2 x 3 grid

    class Bias:
        def materialise(self):
            return (bias[0][..., :, None] + bias[1][..., None, :]).flatten(-2)

    sink = AttentionSink(torch.randn(h, d, generator=g), torch.randn(h, d, generator=g))
    frame = ExemplarFrame((None,) * k, n, "joint")
    got = indirect_attention_reference(qs, torch.cat(keys, dim=2), v, Bias(), None, sink, frame)
    logits = [qs @ kk.transpose(-1, -2) / math.sqrt(d) + Bias().materialise() - math.log(k) for kk in keys]
    sink_logit = (qs * sink.key[None, :, None]).sum(-1, keepdim=True) / math.sqrt(d)
    weights = torch.cat(logits + [sink_logit], dim=-1).softmax(-1)
    expected = sum(weights[..., s * n:(s + 1) * n] @ v for s in range(k)) + weights[..., -1:] * sink.value[None, :, None]
    assert torch.allclose(got, expected, atol=1e-5)


def test_mean_keys_are_attention_to_the_mean_exemplar():
    torch.manual_seed(4)
    attn = IndirectAttention(16, 4).eval()
    queries, values = torch.randn(2, 5, 16), torch.randn(2, 12, 16)
    keys = [torch.randn(2, 12, 16) for _ in range(3)]
    frame = ExemplarFrame((None,) * 3, 12, "mean")
    got = attn(queries, ExemplarKeys(tuple(keys), "mean").features, values, frame=frame)
    assert torch.allclose(got, attn(queries, torch.stack(keys).mean(0), values), atol=1e-5)


def test_max_correlation_is_the_one_shot_correlation_over_the_union_of_the_exemplars_cells():
    torch.manual_seed(5)
    corr = SupportCorrelation(16, channels=4, channel_dim=8)
    query = torch.randn(2, 20, 16)
    supports = [torch.randn(2, 9, 16) for _ in range(3)]
    masks = [torch.rand(2, 9) < 0.3 for _ in range(3)]
    for m in masks:
        m[:, 0] = False
    sims = [corr.similarity(query, s, m) for s, m in zip(supports, masks)]
    union = corr.similarity(query, torch.cat(supports, 1), torch.cat(masks, 1))
    assert torch.allclose(combine_correlation(sims, "max"), union)
    assert torch.allclose(combine_correlation(sims, "mean"), torch.stack(sims).mean(0))


def test_several_exemplars_train(tiny_cfg):
    """A training forward and backward with k = 2: finite loss, gradients through every exemplar."""
    model, criterion, _ = build_model(tiny_cfg(*DEMO_LIKE))
    model.train()
    query, shots = _batches(6)
    shots = [ImageBatch(s.tensors.clone().requires_grad_(True), s.mask, s.image_sizes) for s in shots[:2]]
    targets = [{"boxes": torch.tensor([[0.5, 0.5, 0.3, 0.3]]), "labels": torch.zeros(1, dtype=torch.long)}] * 2
    loss = criterion(model(query, shots), targets)["loss"]
    loss.backward()
    assert torch.isfinite(loss) and all(s.tensors.grad.abs().sum() > 0 for s in shots)


def test_mistakes_are_refused(tiny_cfg):
    model = _model(tiny_cfg, "demo")
    query, shots = _batches(7)
    with pytest.raises(ValueError, match="one exemplar per query image"):
        model(query, shots[:2], path_supports={"keys": shots[2]})
    with pytest.raises(ValueError, match="2 query images but 1 supports"):
        model(query, [shots[0], ImageBatch.from_tensors([torch.rand(3, 32, 32)], 32)])
    with pytest.raises(ValueError, match="no support"):
        model(query, [])
    with pytest.raises(ValueError, match="shot_keys must be one of"):
        build_model(tiny_cfg(*DEMO_LIKE))[0].__class__(model.backbone, model.decoder, shot_keys="sum")
