"""Indirect attention: exact against a direct computation, and the properties the paper relies on."""
import math

import pytest
import torch

from detector.models.indirect_attention import IndirectAttention
from detector.models.relative_bias import BoxRelativePositionBias, FactoredBias


def direct_indirect_attention(module, object_queries, keys, values, bias_full, mask):
    """Loop-over-heads computation written independently of the module's code path."""
    b, nq, d = object_queries.shape
    h = module.num_heads
    dh = d // h
    q = object_queries @ module.q_proj.weight.T + module.q_proj.bias
    k = keys @ module.k_proj.weight.T + module.k_proj.bias
    v = values @ module.v_proj.weight.T + module.v_proj.bias
    out = torch.zeros(b, nq, d)
    for bi in range(b):
        for hi in range(h):
            sl = slice(hi * dh, (hi + 1) * dh)
            s = q[bi, :, sl] @ k[bi, :, sl].T / math.sqrt(dh)
            if bias_full is not None:
                s = s + bias_full[bi, hi]
            if mask is not None:
                s[:, mask[bi]] = float("-inf")
            a = torch.softmax(s, dim=-1)
            out[bi, :, sl] = a @ v[bi, :, sl]
    return out @ module.out_proj.weight.T + module.out_proj.bias


def random_inputs(b=2, nq=5, hgt=3, wid=4, d=16):
    n = hgt * wid
    return torch.randn(b, nq, d), torch.randn(b, n, d), torch.randn(b, n, d)


@pytest.mark.parametrize("impl", ["reference", "fused"])
@pytest.mark.parametrize("with_mask", [False, True])
def test_matches_direct_computation(impl, with_mask):
    heads, hgt, wid = 4, 3, 4
    module = IndirectAttention(16, heads, impl=impl)
    oq, keys, values = random_inputs(hgt=hgt, wid=wid)
    bias = FactoredBias(torch.randn(2, heads, 5, hgt), torch.randn(2, heads, 5, wid))
    full = torch.zeros(2, heads, 5, hgt * wid)
    for r in range(hgt):
        for c in range(wid):
            full[..., r * wid + c] = bias.bias_y[..., r] + bias.bias_x[..., c]
    mask = None
    if with_mask:
        mask = torch.zeros(2, hgt * wid, dtype=torch.bool)
        mask[1, -5:] = True
    got = module(oq, keys, values, bias=bias, key_padding_mask=mask)
    want = direct_indirect_attention(module, oq, keys, values, full, mask)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


def test_output_depends_on_query_image_values():
    module = IndirectAttention(16, 4)
    oq, keys, values = random_inputs()
    a = module(oq, keys, values)
    b = module(oq, keys, values + torch.randn_like(values))
    assert (a - b).abs().max() > 1e-3


def test_identical_values_make_output_independent_of_support():
    module = IndirectAttention(16, 4)
    oq, keys, _ = random_inputs()
    values = torch.randn(2, 1, 16).expand(2, 12, 16).contiguous()
    bias = FactoredBias(torch.randn(2, 4, 5, 3), torch.randn(2, 4, 5, 4))
    a = module(oq, keys, values, bias=bias)
    b = module(oq, torch.randn_like(keys) * 5, values, bias=bias)
    torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    # ... while with distinct values the support does matter.
    values = torch.randn(2, 12, 16)
    assert (module(oq, keys, values) - module(oq, torch.randn_like(keys), values)).abs().max() > 1e-3


def attention_weights_probe(hgt, wid, mask=None, bias=None, seed=0):
    """Read the attention weights out of the module: one head, identity value/output projections
    and one-hot values, so the output row of each object query is its weight over positions."""
    torch.manual_seed(seed)
    n = hgt * wid
    module = IndirectAttention(n, 1)
    with torch.no_grad():
        for lin in (module.v_proj, module.out_proj):
            lin.weight.copy_(torch.eye(n))
            lin.bias.zero_()
    oq = torch.randn(1, 3, n)
    keys = torch.randn(1, n, n)
    values = torch.eye(n)[None]
    return module(oq, keys, values, bias=bias, key_padding_mask=mask)[0]


def inside_box_bias():
    """A BoxRPB whose MLPs give 0 inside the reference box and -200 per (signed-log) unit outside."""
    rpb = BoxRelativePositionBias(num_heads=1, hidden_dim=2)
    with torch.no_grad():
        for mlp in (rpb.mlp_x, rpb.mlp_y):
            # unit 0 fires when the cell centre is left of/above the box start (x0 - p > 0),
            # unit 1 when it is right of/below the box end (x1 - p < 0).
            mlp[0].weight.copy_(torch.tensor([[1.0, 0.0], [0.0, -1.0]]))
            mlp[0].bias.zero_()
            mlp[2].weight.copy_(torch.tensor([[-200.0, -200.0]]))
            mlp[2].bias.zero_()
    return rpb


def test_bias_steers_attention_into_the_reference_box():
    hgt = wid = 8
    rpb = inside_box_bias()
    boxes = torch.tensor([[[0.25, 0.25, 0.25, 0.25], [0.75, 0.5, 0.3, 0.6], [0.5, 0.8, 1.0, 0.2]]])  # cxcywh
    bias = rpb(boxes, (hgt, wid), torch.tensor([[hgt, wid]]))
    weights = attention_weights_probe(hgt, wid, bias=bias).view(3, hgt, wid)
    centres = (torch.arange(8) + 0.5) / 8
    for i, (cx, cy, w, h) in enumerate(boxes[0].tolist()):
        inside_x = (centres > cx - w / 2) & (centres < cx + w / 2)
        inside_y = (centres > cy - h / 2) & (centres < cy + h / 2)
        inside = inside_y[:, None] & inside_x[None, :]
        assert inside.any()
        assert weights[i][inside].sum() > 0.95, f"query {i}: mass inside its box {weights[i][inside].sum():.3f}"
    # Without the bias the same probe spreads its mass.
    plain = attention_weights_probe(hgt, wid).view(3, hgt, wid)
    assert plain[0][:2, :2].sum() < 0.5


def test_padded_positions_get_zero_weight_and_do_not_matter():
    hgt, wid = 4, 4
    mask = torch.zeros(1, 16, dtype=torch.bool)
    mask[0, 10:] = True
    weights = attention_weights_probe(hgt, wid, mask=mask)
    assert torch.all(weights[:, 10:] == 0)
    torch.testing.assert_close(weights.sum(-1), torch.ones(3))
    module = IndirectAttention(16, 4)
    oq, keys, values = random_inputs(b=1, hgt=4, wid=4)
    a = module(oq, keys, values, key_padding_mask=mask)
    values2, keys2 = values.clone(), keys.clone()
    values2[:, 10:] += 100.0
    keys2[:, 10:] -= 50.0
    torch.testing.assert_close(a, module(oq, keys2, values2, key_padding_mask=mask))


def test_gradients_reach_support_query_features_and_bias_mlp():
    module = IndirectAttention(16, 4)
    rpb = BoxRelativePositionBias(4, hidden_dim=8)
    torch.nn.init.normal_(rpb.mlp_x[2].weight)
    torch.nn.init.normal_(rpb.mlp_y[2].weight)
    oq, keys, values = random_inputs()
    keys.requires_grad_(True)
    values.requires_grad_(True)
    boxes = torch.rand(2, 5, 4) * 0.5 + 0.25
    bias = rpb(boxes, (3, 4), torch.tensor([[3, 4], [3, 4]]))
    module(oq, keys, values, bias=bias).square().sum().backward()
    assert keys.grad.abs().sum() > 0
    assert values.grad.abs().sum() > 0
    for p in rpb.parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0


def test_keys_and_values_must_line_up():
    module = IndirectAttention(16, 4)
    with pytest.raises(ValueError, match="line up"):
        module(torch.randn(1, 2, 16), torch.randn(1, 5, 16), torch.randn(1, 6, 16))


def test_box_prior_starts_at_zero_inside_the_box_and_falls_outside():
    rpb = BoxRelativePositionBias(num_heads=4, hidden_dim=16, box_prior=8.0)
    boxes = torch.tensor([[[0.5, 0.5, 0.25, 0.25]]])  # x and y from 0.375 to 0.625
    bias = rpb(boxes, (16, 16), torch.tensor([[16, 16]]))
    centres = (torch.arange(16) + 0.5) / 16
    inside = (centres > 0.375) & (centres < 0.625)
    for table in (bias.bias_x[0, :, 0], bias.bias_y[0, :, 0]):  # [heads, 16]
        assert torch.equal(table[:, inside], torch.zeros(4, int(inside.sum())))
        assert (table[:, ~inside] < 0).all()
        left = table[:, :6]  # cells before the box: the further away, the lower
        assert (left[:, :-1] < left[:, 1:]).all()
        # head strengths run geometrically from box_prior / 4 to box_prior
        torch.testing.assert_close(table[:, 0] / table[-1, 0], torch.tensor([0.25, 0.25 * 4 ** (1 / 3), 0.25 * 4 ** (2 / 3), 1.0]))
    # without a prior the bias starts at zero everywhere
    plain = BoxRelativePositionBias(num_heads=4, hidden_dim=16)(boxes, (16, 16), torch.tensor([[16, 16]]))
    assert not plain.bias_x.any() and not plain.bias_y.any()


def test_box_prior_concentrates_attention_in_the_box_from_the_start():
    """With the prior, the first step already reads mostly inside the box; at zero it reads everywhere."""
    hgt = wid = 16
    boxes = torch.tensor([[[0.5, 0.5, 0.25, 0.25]]])
    centres = (torch.arange(16) + 0.5) / 16
    inside_1d = (centres > 0.375) & (centres < 0.625)
    inside = (inside_1d[:, None] & inside_1d[None, :]).flatten()
    masses = []
    for prior in (0.0, 16.0):
        bias = BoxRelativePositionBias(num_heads=1, hidden_dim=8, box_prior=prior)(boxes, (hgt, wid),
                                                                                  torch.tensor([[hgt, wid]]))
        logits = bias.materialise()[0, 0, 0]  # q . k = 0: the bias alone decides
        masses.append(logits.softmax(-1)[inside].sum().item())
    assert masses[0] == pytest.approx(16 / 256)
    assert masses[1] > 0.6


def test_cell_centres_are_normalised_to_each_unpadded_image():
    from detector.models.relative_bias import cell_centres

    # Image 0 covers the whole 2x4 grid; image 1 only 1 row and 2 columns (the rest is padding).
    cy, cx = cell_centres((2, 4), torch.tensor([[2, 4], [1, 2]]))
    assert torch.allclose(cy, torch.tensor([[0.25, 0.75], [0.5, 1.5]]))
    assert torch.allclose(cx, torch.tensor([[0.125, 0.375, 0.625, 0.875], [0.25, 0.75, 1.25, 1.75]]))


def test_attention_weights_are_what_the_reference_kernel_averages_values_with():
    from detector.models.indirect_attention import indirect_attention_reference, indirect_attention_weights

    g = torch.Generator().manual_seed(0)
    q = torch.randn(2, 4, 5, 8, generator=g)  # 5 object queries
    k, v = torch.randn(2, 4, 6, 8, generator=g), torch.randn(2, 4, 6, 8, generator=g)  # a 2x3 grid
    bias = FactoredBias(bias_y=torch.randn(2, 4, 5, 2, generator=g), bias_x=torch.randn(2, 4, 5, 3, generator=g))
    mask = torch.zeros(2, 6, dtype=torch.bool)
    mask[1, 3:] = True
    w = indirect_attention_weights(q, k, bias, mask)
    assert w.shape == (2, 4, 5, 6)
    assert torch.allclose(w.sum(-1), torch.ones(2, 4, 5))
    assert torch.all(w[1, :, :, 3:] == 0)
    assert torch.allclose(w @ v, indirect_attention_reference(q, k, v, bias, mask), atol=1e-6)


def test_a_sink_lets_the_match_level_survive_the_softmax():
    """Keys that all match an object query equally well get uniform weights whatever the level of
    the match: without a sink the output cannot tell a strong match from a weak one; with a sink
    it can (the weak match leaves more mass on the sink)."""
    from detector.models.indirect_attention import AttentionSink, indirect_attention_reference

    g = torch.Generator().manual_seed(0)
    q = torch.randn(1, 2, 3, 8, generator=g)
    v = torch.randn(1, 2, 6, 8, generator=g)
    direction = q / q.norm(dim=-1, keepdim=True)  # every key along the object query: one score for all keys
    weak, strong = (direction[:, :, :1].expand(1, 2, 6, 8) * s for s in (0.1, 3.0))
    sink = AttentionSink(key=torch.zeros(2, 8), value=torch.randn(2, 8, generator=g))
    plain = [indirect_attention_reference(q[:, :, :1], k, v, None, None) for k in (weak, strong)]
    torch.testing.assert_close(plain[0], plain[1])  # the match level is normalised away
    sunk = [indirect_attention_reference(q[:, :, :1], k, v, None, None, sink=sink) for k in (weak, strong)]
    assert (sunk[0] - sunk[1]).abs().max() > 1e-2


def test_sink_weights_are_the_last_column_and_everything_sums_to_one():
    from detector.models.indirect_attention import AttentionSink, indirect_attention_reference, indirect_attention_weights

    g = torch.Generator().manual_seed(1)
    q, k, v = torch.randn(2, 4, 5, 8, generator=g), torch.randn(2, 4, 6, 8, generator=g), torch.randn(2, 4, 6, 8, generator=g)
    sink = AttentionSink(key=torch.randn(4, 8, generator=g), value=torch.randn(4, 8, generator=g))
    mask = torch.zeros(2, 6, dtype=torch.bool)
    mask[1, 4:] = True
    w = indirect_attention_weights(q, k, None, mask, sink=sink)
    assert w.shape == (2, 4, 5, 7)
    torch.testing.assert_close(w.sum(-1), torch.ones(2, 4, 5))
    assert torch.all(w[1, :, :, 4:6] == 0) and torch.all(w[..., 6] > 0)
    expected_sink_logit = (q * sink.key[None, :, None]).sum(-1) / math.sqrt(8)
    logits = torch.cat([q @ k.transpose(-1, -2) / math.sqrt(8), expected_sink_logit[..., None]], -1)
    torch.testing.assert_close(w[0], logits[0].softmax(-1))
    out = indirect_attention_reference(q, k, v, None, mask, sink=sink)
    torch.testing.assert_close(out, w[..., :6] @ v + w[..., 6:] * sink.value[None, :, None])
