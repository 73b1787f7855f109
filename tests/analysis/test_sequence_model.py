"""The sequence decoder: the bias contract, the three variants and the per-layer reference update."""
import os
import sys

import pytest
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

from detector.models.relative_bias import SequenceRelativeBias  # noqa: E402
from tools.analysis.sequence_model import VARIANTS, SequenceModel  # noqa: E402

SMALL = dict(d_model=32, num_heads=4, num_layers=2, dim_feedforward=64, bias_hidden_dim=16)


def randomise_bias(module: SequenceRelativeBias, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=gen))


def test_sequence_bias_contract_and_zero_start():
    bias = SequenceRelativeBias(num_heads=4, hidden_dim=8)
    ref = torch.rand(2, 3)
    out = bias(ref, 10)
    assert out.bias_y.shape == (2, 4, 3, 1) and out.bias_x.shape == (2, 4, 3, 10)
    assert torch.count_nonzero(out.bias_y) == 0
    assert torch.count_nonzero(out.bias_x) == 0  # no bias at initialisation
    assert out.materialise().shape == (2, 4, 3, 10)


def test_sequence_bias_depends_only_on_offset_in_positions():
    bias = SequenceRelativeBias(num_heads=2, hidden_dim=8)
    randomise_bias(bias)
    n = 10
    ref = torch.tensor([[0.35]])
    shifted = bias(ref + 2.0 / n, n).bias_x  # moving the reference by two positions ...
    base = bias(ref, n).bias_x
    torch.testing.assert_close(shifted[..., 2:], base[..., :-2])  # ... moves the table by two
    # The same offset in positions gives the same bias whatever the length.
    long = bias(torch.tensor([[0.35 * n / 20]]), 20).bias_x
    torch.testing.assert_close(long[..., :n], base, atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("proposals", [False, True])
def test_shapes_and_dependence_on_both_sequences(variant, proposals):
    torch.manual_seed(0)
    model = SequenceModel(variant, 10, 10, 11, slots_from_content=proposals, **SMALL)
    cond, cont = torch.randint(0, 10, (3, 10)), torch.randint(0, 10, (3, 10))
    out = model(cond, cont)
    q = 1 if proposals else 10
    assert out["logits"].shape == (3, q, 10)
    assert len(out["aux_logits"]) == len(out["references"]) == 2
    assert (model(torch.randint(0, 10, (3, 10)), cont)["logits"] - out["logits"]).abs().max() > 1e-4
    assert (model(cond, torch.randint(0, 10, (3, 10)))["logits"] - out["logits"]).abs().max() > 1e-4


def test_indirect_equals_misaligned_until_the_bias_learns():
    torch.manual_seed(0)
    indirect = SequenceModel("indirect", 10, 10, 11, **SMALL)
    misaligned = SequenceModel("misaligned", 10, 10, 11, **SMALL)
    missing = misaligned.load_state_dict(indirect.state_dict(), strict=False)
    assert all(k.startswith("biases.") for k in missing.unexpected_keys) and not missing.missing_keys
    cond, cont = torch.randint(0, 10, (2, 10)), torch.randint(0, 10, (2, 10))
    torch.testing.assert_close(indirect(cond, cont)["logits"], misaligned(cond, cont)["logits"])
    randomise_bias(indirect.biases[0])
    assert (indirect(cond, cont)["logits"] - misaligned(cond, cont)["logits"]).abs().max() > 1e-3


def test_reference_is_refined_per_layer_and_detached():
    torch.manual_seed(0)
    model = SequenceModel("indirect", 10, 10, 11, **SMALL)
    out = model(torch.randint(0, 10, (2, 10)), torch.randint(0, 10, (2, 10)))
    centres = (torch.arange(10) + 0.5) / 10
    expected = (out["aux_logits"][0].softmax(-1) * centres).sum(-1)
    torch.testing.assert_close(out["references"][1], expected)
    assert not out["references"][1].requires_grad
    # Proposals keep their reference on their own position.
    model = SequenceModel("indirect", 10, 10, 11, slots_from_content=True, **SMALL)
    out = model(torch.randint(0, 10, (2, 10)), torch.randint(0, 10, (2, 10)))
    for ref in out["references"]:
        torch.testing.assert_close(ref, centres.expand(2, 10))
