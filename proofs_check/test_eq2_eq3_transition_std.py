"""Eq. 2 / Eq. 3 / Eq. 2: the full per-step std of every kernel, including the σ = 1 rule (docs/failure_modes.md: step-0 σ, zero-std step).

Oracles are hand-derived numbers and the paper's closed forms restated here (never imported from
flowdppo.sde), so a wrong σ at step 0, a dropped √(−dt) or a CPS std with a √(−dt) fails.
All checks are exact arithmetic up to float64 rounding (rtol 1e-12); no randomness.
"""
from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from flowdppo import sde

RTOL = 1e-12


def test_sigma1_rule_on_the_sd3_grid():
    """Eq. 2 σ = 1 rule on UniRL's SD3 schedule (shift 3, 10 steps, η = 0.7; docs/failure_modes.md: step-0 σ).

    σ_1 = 3·0.9/(1 + 2·0.9) = 27/28.  At σ = 1 the rule replaces 1 − σ by 1 − σ_next, so
    std = η·√(1/(1 − 27/28))·√(1 − 27/28) = η = 0.7 exactly.  (The 0.99 clamp of UniRL's loss gives
    0.7·√(1/0.01)·√(1/28) = 1.3229, i.e. a KL 3.57× too small — the step-0 σ bug this pins down.)
    Step 1 uses σ itself: 0.7·√((27/28)/(1/28))·√(27/28 − 12/13)."""
    grid = sde.shifted_sigmas(10, shift=3.0)
    assert float(grid[1]) == pytest.approx(27 / 28, rel=RTOL)
    assert float(grid[2]) == pytest.approx(12 / 13, rel=RTOL)
    std0 = float(sde.transition_std("flow_sde", grid[0], grid[1], 0.7))
    assert std0 == pytest.approx(0.7, rel=RTOL)
    std1 = float(sde.transition_std("flow_sde", grid[1], grid[2], 0.7))
    assert std1 == pytest.approx(0.7 * math.sqrt((27 / 28) / (1 / 28)) * math.sqrt(27 / 28 - 12 / 13), rel=RTOL)
    # the step-0 value is what the σ = 1 rule gives, not a clamp: it does not depend on a 0.99 constant
    assert abs(std0 - 0.7 * math.sqrt(1 / 0.01) * math.sqrt(1 / 28)) > 0.5


@given(eta=st.floats(0.05, 1.0), sigma_next=st.floats(0.01, 0.99))
def test_flow_sde_std_at_sigma1_equals_eta(eta, sigma_next):
    """Eq. 2: with σ̃ = σ_next at σ = 1, s_t·√(−dt) = η·√(1/(1−σ'))·√(1−σ') = η for every σ'."""
    std = float(sde.transition_std("flow_sde", 1.0, sigma_next, eta))
    assert std == pytest.approx(eta, rel=1e-10)


@given(eta=st.floats(0.05, 1.0), sigma=st.floats(0.02, 0.98), frac=st.floats(0.01, 0.99))
def test_each_kernel_std_matches_its_closed_form(eta, sigma, frac):
    """Eq. 2 (Flow-SDE: η√(σ/(1−σ))·√(σ−σ')), Dance-SDE (η√(σ−σ')), Eq. 3 (CPS: σ'·sin(ηπ/2), no √(−dt)),
    ODE (0), for σ < 1."""
    sigma_next = sigma * (1.0 - frac)
    expected = {
        "flow_sde": eta * math.sqrt(sigma / (1.0 - sigma)) * math.sqrt(sigma - sigma_next),
        "dance_sde": eta * math.sqrt(sigma - sigma_next),
        "cps": sigma_next * math.sin(eta * math.pi / 2.0),
        "ode": 0.0,
    }
    for kernel, value in expected.items():
        got = float(sde.transition_std(kernel, sigma, sigma_next, eta))
        assert got == pytest.approx(value, rel=RTOL, abs=1e-300), kernel


@given(eta=st.floats(0.1, 1.0), num_steps=st.integers(2, 30), shift=st.floats(1.0, 5.0))
def test_batched_sigmas_equal_scalar_calls(eta, num_steps, shift):
    """Per-sample σ tensors [B] (one trajectory per sample at different steps, σ = 1 included) give the
    same std as scalar calls: the σ = 1 rule is applied element-wise, not to the whole batch."""
    grid = sde.shifted_sigmas(num_steps, shift)
    s, sn = grid[:-1], grid[1:]
    for kernel in sde.KERNELS:
        batched = sde.transition_std(kernel, s, sn, eta)
        scalar = torch.stack([sde.transition_std(kernel, float(a), float(b), eta) for a, b in zip(s, sn)])
        torch.testing.assert_close(batched, scalar.to(batched.dtype), rtol=RTOL, atol=0.0)


def test_zero_std_step_is_an_error_not_a_nan():
    """zero-std step: an SDE step with std 0 (CPS at σ_next = 0) raises with a fix-it message instead of log 0."""
    x = torch.zeros(2, 3, dtype=torch.float64)
    with pytest.raises(ValueError, match="ODE kernel"):
        sde.step("cps", x=x, v=x, sigma=0.1, sigma_next=0.0, eta=0.7)
