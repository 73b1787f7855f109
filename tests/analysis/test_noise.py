"""The noise/misalignment simulation (tools/analysis/noise.py) against the analytic forms of docs/PAPER_NOTES.md section 1.

Fixed seeds; tolerances are about four Monte-Carlo standard errors at these sample sizes.
"""
import math
import os
import sys

import pytest
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

from tools.analysis.noise import (attention_weights, init_attention, simulate, theory_gamma,  # noqa: E402
                                  theory_misaligned_error, theory_noise_energy, theory_snr_misaligned)

SHIFTS = (0.0, 4.0, 8.0, 16.0)


@pytest.fixture(scope="module")
def stats():
    return {d: simulate(d, SHIFTS, num_tokens=16, num_models=4, num_sets=64, num_queries=8, seed=7)
            for d in (32, 128)}


def test_module_setup_is_plain_weighted_sum_with_orthogonal_values():
    gen = torch.Generator().manual_seed(0)
    module = init_attention(24, gen)
    w_v = module.v_proj.weight
    torch.testing.assert_close(w_v @ w_v.T, torch.eye(24, dtype=torch.float64), atol=1e-10, rtol=0)
    q, x, y = (torch.randn(3, n, 24, dtype=torch.float64, generator=gen) for n in (5, 9, 9))
    want = attention_weights(module, q, x) @ (y @ w_v.T)
    torch.testing.assert_close(module(q, x, y), want, atol=1e-10, rtol=0)


@pytest.mark.parametrize("d", [32, 128])
def test_additive_noise_energy_is_sigma2_d_sum_a2(stats, d):
    s = stats[d]
    # Exact in expectation: the noise is independent of the weights and W_v keeps norms.
    assert s.unit_noise / theory_noise_energy(1.0, d, s.sum_a2) == pytest.approx(1.0, abs=0.04)
    for sigma in (0.5, 2.0):
        assert sigma ** 2 * s.unit_noise / theory_noise_energy(sigma, d, s.sum_a2) == pytest.approx(1.0, abs=0.04)


def test_additive_noise_snr_is_one_over_sigma2_and_flat_in_d(stats):
    # The paper's SNR ~ 1/sigma^2 neglects an O(1) signal term (weights favour tokens with large key
    # scores), worth 1/(d S2): under 10% at d = 32, about 1% at d = 128.
    for sigma in (0.5, 1.0, 2.0):
        assert stats[128].snr_additive(sigma) * sigma ** 2 == pytest.approx(1.0, abs=0.05)
        assert stats[32].snr_additive(sigma) * sigma ** 2 == pytest.approx(1.0, abs=0.12)
    assert stats[32].snr_additive(1.0) / stats[128].snr_additive(1.0) == pytest.approx(1.0, abs=0.12)


@pytest.mark.parametrize("d", [32, 128])
def test_gamma_is_shift2_plus_2d(stats, d):
    for shift in SHIFTS + (math.sqrt(d),):
        assert stats[d].gamma[shift] / theory_gamma(shift, d) == pytest.approx(1.0, abs=0.02)


@pytest.mark.parametrize("d", [32, 128])
def test_misaligned_output_error_and_snr(stats, d):
    s = stats[d]
    for shift in SHIFTS:
        assert s.mis_error[shift] / theory_misaligned_error(shift, d, s.sum_a2) == pytest.approx(1.0, abs=0.1)
        assert s.snr_misaligned(shift) / theory_snr_misaligned(shift, d, s.sum_a2) == pytest.approx(1.0, abs=0.12)
        # Misalignment is always worse than additive noise at the critical level sigma* = 1.
        assert s.snr_misaligned(shift) < 0.6 * s.snr_additive(1.0)
