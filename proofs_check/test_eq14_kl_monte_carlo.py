"""Eq. 14 (and Eq. 4): the exact per-step KL ‖μ_old − μ_θ‖²/(2σ²) is the KL of the sampler's own Gaussians.

Oracles: (1) a Monte-Carlo estimate of E_{x'∼π_old}[log π_old(x') − log π_θ(x')] where x' is DRAWN BY
`sde.step` (the real sampler, at every step index of a grid that starts at σ = 1) and both log-densities
are scored by `sde.step` replay; (2) torch.distributions' Normal/Independent KL and log_prob.  The KL is
evaluated with the std that `step()` returns, so a loss that used any other σ (UniRL's 0.99 clamp at
step 0, docs/failure_modes.md: step-0 σ; a CPS std with √(−dt), CPS scale) disagrees with the sampler and fails here.

Tolerances: MC at 6 standard errors (sample SE of the log-ratio), float64; the deterministic comparisons
at rtol 1e-10.  Per example: 3 kernels × ≤ 12 steps × 4 MC comparisons ≤ 144 checks at ≈ 2e-9 each,
10 examples under "ci" → false-alarm rate ≤ 3e-6 (and the ci examples are derandomized).
"""
from __future__ import annotations

import torch
from hypothesis import given
from hypothesis import strategies as st
from torch.distributions import Independent, Normal, kl_divergence

from flowdppo import divergence, losses, sde
from proofs_check._common import assert_within_se, examples, sde_step_pairs

N_SAMPLES = 20_000
LATENT = 8


def _velocity_pair(gen, kernel, x, sigma, sigma_next, eta, kl_target):
    """v_old and v_new = v_old + Δv with Δv scaled so that the exact Eq. 14 KL equals kl_target.

    μ is affine in v for every kernel, so the KL is quadratic in the scale of Δv."""
    v_old = torch.randn(x.shape, generator=gen, dtype=torch.float64)
    dv = torch.randn(x.shape, generator=gen, dtype=torch.float64)
    m0 = sde.transition_mean(kernel, x, v_old, sigma, sigma_next, eta)
    m1 = sde.transition_mean(kernel, x, v_old + dv, sigma, sigma_next, eta)
    std = sde.transition_std(kernel, sigma, sigma_next, eta)
    kl = divergence.gaussian_kl(m0, m1, std, "sum")
    return v_old, v_old + dv * (kl_target / kl).sqrt().reshape(-1, 1)


def _sample_and_replay(gen, kernel, x, v_old, v_new, sigma, sigma_next, eta):
    xs = x.expand(N_SAMPLES, -1)
    old = sde.step(kernel, x=xs, v=v_old.expand(N_SAMPLES, -1), sigma=sigma, sigma_next=sigma_next, eta=eta,
                   generator=gen)
    new = sde.step(kernel, x=xs, v=v_new.expand(N_SAMPLES, -1), sigma=sigma, sigma_next=sigma_next, eta=eta,
                   x_next=old.x_next)
    return old, new


@examples(10)
@given(seed=st.integers(0, 2**31 - 1), eta=st.floats(0.3, 1.0), num_steps=st.integers(3, 12),
       shift=st.floats(1.0, 4.0), kl_target=st.floats(0.5, 4.0))
def test_eq14_equals_monte_carlo_through_each_sampler(seed, eta, num_steps, shift, kl_target):
    """Eq. 14 = E_old[log π_old − log π_θ] (sum and per-dim reductions), samples drawn by sde.step, at every
    step with positive std (σ = 1 included), for flow_sde, cps, dance_sde; and the sampler's noise has
    exactly the std the step reports (mean of z² = 1, z = (x' − μ_old)/std)."""
    gen = torch.Generator().manual_seed(seed)
    for kernel in sde.SDE_KERNELS:
        for sigma, sigma_next in sde_step_pairs(kernel, num_steps, shift):
            x = torch.randn(1, LATENT, generator=gen, dtype=torch.float64)
            v_old, v_new = _velocity_pair(gen, kernel, x, sigma, sigma_next, eta, kl_target)
            old, new = _sample_and_replay(gen, kernel, x, v_old, v_new, sigma, sigma_next, eta)
            where = f"{kernel} σ={sigma:.4f}→{sigma_next:.4f} η={eta:.3f}"
            for reduction, lp_old, lp_new in (("sum", old.logp_sum, new.logp_sum),
                                              ("per_dim", old.logp_per_dim, new.logp_per_dim)):
                exact = divergence.gaussian_kl(old.mean[:1], new.mean[:1], old.std, reduction)
                diff = lp_old - lp_new
                assert_within_se(diff.mean(), exact, diff.std() / N_SAMPLES**0.5, what=f"KL[{reduction}] {where}")
            z = (old.x_next - old.mean) / old.std
            n_el = z.numel()
            assert_within_se(z.mean(), 0.0, 1.0 / n_el**0.5, what=f"noise mean {where}")
            assert_within_se((z**2).mean(), 1.0, (2.0 / n_el) ** 0.5, what=f"noise variance {where}")


def test_monte_carlo_rejects_a_sigma_that_is_not_the_samplers():
    """Power of the check above: the same MC estimate rejects the KL computed with a std that is 10% too
    large (KL 17% low) and with UniRL's step-0 σ (1.89× the kernel's, KL 3.57× low, docs/failure_modes.md: step-0 σ)."""
    gen = torch.Generator().manual_seed(1234)
    sigma, sigma_next, eta = 1.0, 27 / 28, 0.7          # step 0 of the SD3 grid
    x = torch.randn(1, LATENT, generator=gen, dtype=torch.float64)
    v_old, v_new = _velocity_pair(gen, "flow_sde", x, sigma, sigma_next, eta, 1.0)
    old, new = _sample_and_replay(gen, "flow_sde", x, v_old, v_new, sigma, sigma_next, eta)
    diff = old.logp_sum - new.logp_sum
    se = diff.std() / N_SAMPLES**0.5
    for factor in (1.1, 1.3229 / 0.7):
        wrong = divergence.gaussian_kl(old.mean[:1], new.mean[:1], old.std * factor, "sum")
        assert float((diff.mean() - wrong).abs() / se) > 6.0, factor


@examples(10)
@given(seed=st.integers(0, 2**31 - 1), eta=st.floats(0.1, 1.0), num_steps=st.integers(2, 15),
       shift=st.floats(1.0, 5.0), batch=st.integers(1, 5))
def test_eq14_and_eq4_equal_torch_distributions(seed, eta, num_steps, shift, batch):
    """Eq. 14 = torch.distributions KL(Independent(Normal)) and Eq. 4's log-density (step's logp_sum, and
    logp_per_dim = logp_sum / D) = Independent(Normal).log_prob, at every step, with per-sample σ (a batch
    whose samples sit at different steps, σ = 1 included).  rtol 1e-10."""
    gen = torch.Generator().manual_seed(seed)
    for kernel in sde.SDE_KERNELS:
        pairs = sde_step_pairs(kernel, num_steps, shift)
        idx = torch.randint(0, len(pairs), (batch,), generator=gen)
        idx[0] = 0                                                    # σ = 1 is always in the batch
        sig = torch.tensor([pairs[i][0] for i in idx], dtype=torch.float64)
        sig_n = torch.tensor([pairs[i][1] for i in idx], dtype=torch.float64)
        x = torch.randn(batch, 2, 3, generator=gen, dtype=torch.float64)
        v_old, v_new = (torch.randn(batch, 2, 3, generator=gen, dtype=torch.float64) for _ in range(2))
        old = sde.step(kernel, x=x, v=v_old, sigma=sig, sigma_next=sig_n, eta=eta, generator=gen)
        new = sde.step(kernel, x=x, v=v_new, sigma=sig, sigma_next=sig_n, eta=eta, x_next=old.x_next)
        p_old = Independent(Normal(old.mean, old.std.expand_as(old.mean)), 2)
        p_new = Independent(Normal(new.mean, new.std.expand_as(new.mean)), 2)
        torch.testing.assert_close(divergence.gaussian_kl(old.mean, new.mean, old.std, "sum"),
                                   kl_divergence(p_old, p_new), rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(divergence.gaussian_kl(new.mean, old.mean, old.std, "sum"),
                                   kl_divergence(p_new, p_old), rtol=1e-10, atol=1e-12)   # App. C.1 symmetry
        torch.testing.assert_close(old.logp_sum, p_old.log_prob(old.x_next), rtol=1e-10, atol=1e-10)
        torch.testing.assert_close(new.logp_sum, p_new.log_prob(old.x_next), rtol=1e-10, atol=1e-10)
        torch.testing.assert_close(old.logp_per_dim, old.logp_sum / 6, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(divergence.kl_per_dim(old.mean, new.mean, old.std),
                                   divergence.kl_sum(old.mean, new.mean, old.std) / 6, rtol=1e-12, atol=0.0)


@given(seed=st.integers(0, 2**31 - 1), std=st.floats(0.05, 2.0))
def test_kl_to_reference_is_eq14_in_the_forward_direction_and_differentiable(seed, std):
    """Eq. 17's β-term (docs/failure_modes.md: detached reference KL): kl_to_reference = KL(π_θ ‖ π_ref) with the kernel std, per-dim and
    sum, equal to torch.distributions; its gradient w.r.t. μ_θ is (μ_θ − μ_ref)/(σ²·D) (per-dim) — it is
    not computed under no_grad (Flow-Factory #122)."""
    gen = torch.Generator().manual_seed(seed)
    mean = torch.randn(3, 4, 5, generator=gen, dtype=torch.float64).requires_grad_(True)
    ref = torch.randn(3, 4, 5, generator=gen, dtype=torch.float64)
    s = torch.tensor(std, dtype=torch.float64)
    kl = losses.kl_to_reference(mean=mean, ref_mean=ref, std=s, reduction="per_dim")
    oracle = kl_divergence(Independent(Normal(mean, s.expand_as(mean)), 2),
                           Independent(Normal(ref, s.expand_as(ref)), 2)) / 20
    torch.testing.assert_close(kl, oracle, rtol=1e-10, atol=1e-12)
    kl.sum().backward()
    torch.testing.assert_close(mean.grad, (mean - ref).detach() / (std**2 * 20), rtol=1e-10, atol=1e-12)
