"""SupportCorrelation: known values, the support mask, and its place in the detector (values only)."""
import pytest
import torch

from detector.models import build_model
from detector.models.support_correlation import SupportCorrelation
from detector.structures import ImageBatch


def shared_projection(d=8, channels=2, channel_dim=4):
    corr = SupportCorrelation(d, channels, channel_dim)
    with torch.no_grad():
        corr.proj_support.load_state_dict(corr.proj_query.state_dict())
    return corr


def test_a_cell_equal_to_a_support_cell_scores_one_and_the_rest_less():
    corr = shared_projection()
    support = torch.randn(1, 5, 8)
    query = torch.cat([support[:, 3:4], torch.randn(1, 2, 8)], dim=1)  # cell 0 is support cell 3
    sim = corr.similarity(query, support, torch.zeros(1, 5, dtype=torch.bool))
    assert sim.shape == (1, 3, 2)
    torch.testing.assert_close(sim[0, 0], torch.ones(2))
    assert (sim <= 1 + 1e-6).all() and (sim >= -1 - 1e-6).all()


def test_it_is_the_maximum_over_support_cells_of_the_cosine_similarity():
    corr = SupportCorrelation(6, channels=3, channel_dim=2)
    query, support = torch.randn(2, 4, 6), torch.randn(2, 7, 6)
    sim = corr.similarity(query, support, torch.zeros(2, 7, dtype=torch.bool))
    a = corr.proj_query(query).view(2, 4, 3, 2)
    s = corr.proj_support(support).view(2, 7, 3, 2)
    for b in range(2):
        for n in range(4):
            for c in range(3):
                cos = torch.nn.functional.cosine_similarity(a[b, n, c][None], s[b, :, c], dim=-1)
                torch.testing.assert_close(sim[b, n, c], cos.max())


def test_padded_support_cells_are_ignored():
    corr = shared_projection()
    query, support = torch.randn(1, 4, 8), torch.randn(1, 6, 8)
    mask = torch.tensor([[False, False, False, True, True, True]])
    changed = support.clone()
    changed[:, 3:] = query[:, :3]  # padding that would match perfectly if it were counted
    torch.testing.assert_close(corr(query, support, mask), corr(query, changed, mask))
    assert not torch.allclose(corr(query, support, torch.zeros_like(mask)), corr(query, changed, torch.zeros_like(mask)))


def test_an_all_padding_support_gives_finite_low_similarities():
    corr = SupportCorrelation(8, 2, 4)
    sim = corr.similarity(torch.randn(1, 3, 8), torch.randn(1, 2, 8), torch.ones(1, 2, dtype=torch.bool))
    assert torch.isfinite(sim).all() and (sim <= -2.0).all()


@pytest.mark.parametrize("attention", ["indirect", "misaligned"])
def test_in_the_detector_it_changes_what_is_read_but_not_the_proposals(tiny_cfg, attention):
    """Plain-DETR proposals stay a function of the query image; the decoder's outputs follow the support."""
    model, _, _ = build_model(tiny_cfg(f"model.attention={attention}", "model.correlation_channels=4",
                                       "model.support_conditioning=false", "model.support_layout=pad"))
    model.eval()
    query = ImageBatch.from_tensors([torch.rand(3, 96, 128)])
    support = ImageBatch.from_tensors([torch.rand(3, 64, 64)], size_divisibility=64)
    other = ImageBatch.from_tensors([torch.rand(3, 64, 64)], size_divisibility=64)
    with torch.no_grad():
        a, b = model(query, support), model(query, other)
        model.correlation.out.weight.zero_()
        model.correlation.out.bias.zero_()
        c = model(query, other)
    assert torch.equal(a["enc_outputs"]["pred_logits"], b["enc_outputs"]["pred_logits"])
    assert (a["pred_logits"] - b["pred_logits"]).abs().max() > 1e-4
    assert (b["pred_logits"] - c["pred_logits"]).abs().max() > 1e-4  # the correlation reaches the output


def correlation_inputs(seed=0):
    """A correlation and inputs whose supports have padding: none, some, and (image 2) all of it."""
    torch.manual_seed(seed)
    corr = SupportCorrelation(16, channels=4, channel_dim=8)
    query, support = torch.randn(3, 20, 16, requires_grad=True), torch.randn(3, 9, 16, requires_grad=True)
    mask = torch.zeros(3, 9, dtype=torch.bool)
    mask[1, 5:] = True
    mask[2] = True
    return corr, query, support, mask


def value_and_gradients(fn, corr, query, support, mask):
    out = fn(query, support, mask)
    weights = torch.randn(out.shape, generator=torch.Generator().manual_seed(1))
    inputs = [query, support, *corr.parameters()]
    return out.detach(), torch.autograd.grad((out * weights).sum(), inputs, allow_unused=True)


def test_training_differentiates_the_best_match_alone_with_the_reference_values_and_gradients():
    corr, query, support, mask = correlation_inputs()
    ref_out, ref_grads = value_and_gradients(corr.similarity_reference, corr, query, support, mask)
    out, got = value_and_gradients(corr.similarity, corr, query, support, mask)
    torch.testing.assert_close(out, ref_out)
    assert (out[2] <= -2.0).all() and (out[:2] >= -1 - 1e-6).all()  # padding loses; all-padding stays low
    names = ["query", "support"] + [n for n, _ in corr.named_parameters()]
    for name, g, r in zip(names, got, ref_grads):
        if r is None:
            assert g is None or not g.any(), name
        else:
            torch.testing.assert_close(g, r, msg=lambda m: f"{name}: {m}")
    assert got[1][1, 5:].abs().max() == 0  # no gradient into padded support cells
    assert got[0].abs().max() > 0 and got[1][0].abs().max() > 0


def test_the_backward_pass_never_touches_a_full_similarity_map():
    from torch.profiler import profile

    corr, query, support, mask = correlation_inputs()
    full = [3 * 4, 20, 9]  # [B * channels, N, M]
    for fn, touches_map in ((corr.similarity_reference, True), (corr.similarity, False)):
        out = fn(query, support, mask)
        with profile(record_shapes=True) as prof:
            out.sum().backward()
        shapes = [list(shape) for e in prof.events() for shape in e.input_shapes if isinstance(shape, list)]
        assert (full in shapes) == touches_map


def test_without_a_gradient_it_is_the_reference_bit_for_bit():
    corr, query, support, mask = correlation_inputs()
    with torch.no_grad():
        assert torch.equal(corr.similarity(query, support, mask), corr.similarity_reference(query, support, mask))
