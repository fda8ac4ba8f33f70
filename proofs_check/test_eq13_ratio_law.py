"""Eq. 13, Eq. 11 / Eq. 10 and App. D: the exact law of the likelihood ratio of one Gaussian step.

With x' = μ_old + σε drawn by the sampler and d = μ_θ − μ_old:
  (Eq. 13, per sample, exact)  log r = εᵀd/σ − KL,                KL = ‖d‖²/(2σ²) (Eq. 14)
  (App. D)                      E[log r] = −KL,  Var[log r] = 2·KL,  E[r] = 1
  (Eq. 11 = Eq. 10)             ½·E|r − 1| = D_TV = 2Φ(‖d‖/(2σ)) − 1
  (mean-reduced log-probs)      log r̄ = log r / D,  E[r̄] = exp(−KL/D + KL/D²) < 1   (docs/failure_modes.md: reduced-log-prob ratio)
Samples are drawn through sde.step for every SDE kernel, at σ = 1 and at one other step of the grid.

Tolerances: the per-sample identity at rtol 1e-9 (float64 rounding); the moments at 6 sample standard
errors (N = 40 000; r is log-normal with Var = e^{2KL} − 1 ≤ 1.8 for KL ≤ 0.5, so the CLT holds well).
5 comparisons × 3 kernels × 2 steps × 6 ci examples at 2e-9 → false-alarm rate ≤ 3.6e-7.
"""
from __future__ import annotations

import torch
from hypothesis import given
from hypothesis import strategies as st

from flowdppo import divergence, sde
from proofs_check._common import assert_within_se, examples, sde_step_pairs

N_SAMPLES = 40_000
LATENT = 6


def _ratio_samples(gen, kernel, sigma, sigma_next, eta, kl_target, n):
    """Draw n actions of π_old through sde.step with explicit noise, replay under π_θ.

    Returns (noise ε [n, D], d = μ_θ − μ_old [1, D], std, exact KL_sum, old Step, new Step)."""
    x = torch.randn(1, LATENT, generator=gen, dtype=torch.float64)
    v_old = torch.randn(1, LATENT, generator=gen, dtype=torch.float64)
    dv = torch.randn(1, LATENT, generator=gen, dtype=torch.float64)
    std = sde.transition_std(kernel, sigma, sigma_next, eta)
    m0 = sde.transition_mean(kernel, x, v_old, sigma, sigma_next, eta)
    kl_unit = divergence.gaussian_kl(m0, sde.transition_mean(kernel, x, v_old + dv, sigma, sigma_next, eta), std)
    v_new = v_old + dv * (kl_target / kl_unit).sqrt()
    noise = torch.randn(n, LATENT, generator=gen, dtype=torch.float64)
    xs = x.expand(n, -1)
    old = sde.step(kernel, x=xs, v=v_old.expand(n, -1), sigma=sigma, sigma_next=sigma_next, eta=eta, noise=noise)
    new = sde.step(kernel, x=xs, v=v_new.expand(n, -1), sigma=sigma, sigma_next=sigma_next, eta=eta,
                   x_next=old.x_next)
    d = (new.mean - old.mean)[:1]
    kl = divergence.gaussian_kl(old.mean[:1], new.mean[:1], old.std, "sum")[0]
    return noise, d, old.std, kl, old, new


@given(seed=st.integers(0, 2**31 - 1), eta=st.floats(0.1, 1.0), num_steps=st.integers(2, 20),
       shift=st.floats(1.0, 5.0), kl_target=st.floats(1e-6, 10.0))
def test_eq13_log_ratio_identity_per_sample(seed, eta, num_steps, shift, kl_target):
    """Eq. 13 holds per sample at every step: log r = εᵀd/σ − KL (sum) and log r̄ = (εᵀd/σ − KL)/D (per-dim)."""
    gen = torch.Generator().manual_seed(seed)
    for kernel in sde.SDE_KERNELS:
        for sigma, sigma_next in sde_step_pairs(kernel, num_steps, shift):
            noise, d, std, kl, old, new = _ratio_samples(gen, kernel, sigma, sigma_next, eta, kl_target, 64)
            log_r = new.logp_sum - old.logp_sum
            eq13 = (noise * d).sum(1) / std.reshape(-1) - kl
            scale = float(kl + (2 * kl).sqrt())  # size of the terms, for the absolute part of the tolerance
            torch.testing.assert_close(log_r, eq13, rtol=1e-9, atol=1e-9 * scale + 1e-12)
            torch.testing.assert_close(new.logp_per_dim - old.logp_per_dim, eq13 / LATENT,
                                       rtol=1e-9, atol=1e-9 * scale + 1e-12)


@examples(6)
@given(seed=st.integers(0, 2**31 - 1), eta=st.floats(0.3, 1.0), num_steps=st.integers(3, 12),
       shift=st.floats(1.0, 4.0), kl_target=st.floats(0.02, 0.5), step_pick=st.floats(0.0, 1.0))
def test_app_d_moments_and_eq11_tv(seed, eta, num_steps, shift, kl_target, step_pick):
    """App. D: E[log r] = −KL, Var[log r] = 2KL, E[r] = 1; Eq. 11: ½E|r − 1| = Eq. 10's TV; and the
    per-dim ratio's mean exp(−KL/D + KL/D²), by Monte-Carlo through each sampler (σ = 1 and one more step)."""
    gen = torch.Generator().manual_seed(seed)
    for kernel in sde.SDE_KERNELS:
        pairs = sde_step_pairs(kernel, num_steps, shift)
        for sigma, sigma_next in (pairs[0], pairs[min(len(pairs) - 1, int(step_pick * len(pairs)))]):
            _, _, _, kl, old, new = _ratio_samples(gen, kernel, sigma, sigma_next, eta, kl_target, N_SAMPLES)
            where = f"{kernel} σ={sigma:.3f} KL={float(kl):.3g}"
            log_r = new.logp_sum - old.logp_sum
            r = log_r.exp()
            n = N_SAMPLES
            assert_within_se(log_r.mean(), -kl, log_r.std() / n**0.5, what=f"E[log r] {where}")
            assert_within_se(log_r.var(), 2 * kl, 2 * kl * (2.0 / (n - 1)) ** 0.5, what=f"Var[log r] {where}")
            assert_within_se(r.mean(), 1.0, r.std() / n**0.5, what=f"E[r] {where}")
            tv = divergence.gaussian_tv(old.mean[:1], new.mean[:1], old.std)[0]
            half_abs = 0.5 * (r - 1.0).abs()
            assert_within_se(half_abs.mean(), tv, half_abs.std() / n**0.5, what=f"½E|r−1| vs TV {where}")
            r_bar = (new.logp_per_dim - old.logp_per_dim).exp()
            expected = torch.exp(-kl / LATENT + kl / LATENT**2)
            assert_within_se(r_bar.mean(), expected, r_bar.std() / n**0.5, what=f"E[r̄] {where}")
            assert float(expected) < 1.0
