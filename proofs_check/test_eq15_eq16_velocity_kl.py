"""Eq. 15 (= Eq. 21) and Eq. 16 (= Eq. 22): the velocity-space KLs equal Eq. 14 evaluated on the kernels' means.

Oracle: Eq. 14 on μ = sde.transition_mean(kernel, x, v) for two velocities v_p, v_q and the kernel's std
(so the velocity forms are checked against the sampler's own transition, at σ = 1 too).  Also: the
Eq. 21/22 coefficient `mean_velocity_coefficient` equals ∂μ/∂v by autograd, and μ is affine in v.
Deterministic float64; tolerance rtol 1e-9 (the forms differ only by rounding).
"""
from __future__ import annotations

import torch
from hypothesis import given
from hypothesis import strategies as st

from flowdppo import divergence, sde

RTOL = 1e-9

VELOCITY_KL = {"flow_sde": divergence.kl_flow_sde_velocity, "cps": divergence.kl_cps_velocity}


def _random(gen, *shape):
    return torch.randn(*shape, generator=gen, dtype=torch.float64)


@given(seed=st.integers(0, 2**31 - 1), eta=st.floats(0.05, 1.0), num_steps=st.integers(2, 25),
       shift=st.floats(1.0, 6.0), scale=st.floats(1e-4, 10.0))
def test_velocity_kl_equals_eq14_on_the_kernel_means(seed, eta, num_steps, shift, scale):
    """Eq. 15 (Flow-SDE) and Eq. 16 (CPS) = ‖μ(x, v_p) − μ(x, v_q)‖²/(2 std²), both reductions, at every step
    with positive std, scalar σ and per-sample σ [B]."""
    gen = torch.Generator().manual_seed(seed)
    grid = sde.shifted_sigmas(num_steps, shift)
    for kernel, kl_velocity in VELOCITY_KL.items():
        std_all = sde.transition_std(kernel, grid[:-1], grid[1:], eta)
        keep = std_all > 0
        sig, sig_n = grid[:-1][keep], grid[1:][keep]
        b = sig.shape[0]
        x, v_p = _random(gen, b, 3, 4), _random(gen, b, 3, 4)
        v_q = v_p + scale * _random(gen, b, 3, 4)
        std = sde.transition_std(kernel, sig, sig_n, eta).reshape(b, 1, 1)
        mean_p = sde.transition_mean(kernel, x, v_p, sig, sig_n, eta)
        mean_q = sde.transition_mean(kernel, x, v_q, sig, sig_n, eta)
        for reduction in divergence.REDUCTIONS:
            oracle = divergence.gaussian_kl(mean_p, mean_q, std, reduction)
            got = kl_velocity(v_p, v_q, sig, sig_n, eta, reduction)
            torch.testing.assert_close(got, oracle, rtol=RTOL, atol=0.0, msg=f"{kernel} {reduction}")
            for i in range(b):   # scalar σ (the trainer's usual call) gives the same per sample
                one = kl_velocity(v_p[i:i + 1], v_q[i:i + 1], float(sig[i]), float(sig_n[i]), eta, reduction)
                torch.testing.assert_close(one, oracle[i:i + 1], rtol=RTOL, atol=0.0)


@given(seed=st.integers(0, 2**31 - 1), eta=st.floats(0.0, 1.0), num_steps=st.integers(2, 25),
       shift=st.floats(1.0, 6.0))
def test_mean_velocity_coefficient_is_the_derivative_of_the_mean(seed, eta, num_steps, shift):
    """Eq. 21/22: μ(x, v) = μ(x, 0) + c(σ, σ')·v with c = mean_velocity_coefficient (autograd ∂μ/∂v and the
    affine identity at v and 2v), for all four kernels, every step including σ = 1 and σ' = 0."""
    gen = torch.Generator().manual_seed(seed)
    grid = sde.shifted_sigmas(num_steps, shift)
    for kernel in sde.KERNELS:
        for sigma, sigma_next in zip(grid[:-1].tolist(), grid[1:].tolist()):
            x = _random(gen, 2, 5)
            v = _random(gen, 2, 5).requires_grad_(True)
            mean = sde.transition_mean(kernel, x, v, sigma, sigma_next, eta)
            (grad,) = torch.autograd.grad(mean.sum(), v)
            coeff = float(sde.mean_velocity_coefficient(kernel, sigma, sigma_next, eta))
            torch.testing.assert_close(grad, torch.full_like(grad, coeff), rtol=1e-12, atol=1e-15)
            base = sde.transition_mean(kernel, x, torch.zeros_like(x), sigma, sigma_next, eta)
            twice = sde.transition_mean(kernel, x, 2 * v.detach(), sigma, sigma_next, eta)
            torch.testing.assert_close(twice - base, 2 * (mean.detach() - base), rtol=1e-9, atol=1e-12)
