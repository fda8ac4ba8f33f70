"""App. E: the divergence after one gradient step on the surrogate, and the predictive masks (Eq. 24–27).

With μ a free vector, x = μ_old + σε an action of π_old, d = μ − μ_old, g = x − μ = σε − d, D = ‖d‖²/(2σ²)
and L = Â·r, one ascent step μ_new = μ + η∇_μL gives (Eq. 24, exact because D is quadratic in μ)
  D_new = D + (ηÂr/σ⁴)·gᵀd + (η²Â²r²/(2σ⁶))·‖g‖²,    gᵀd = σ²(log r − D)
so the first-order change is (ηÂr/σ²)(log r − D), its sign sgn(Â(log r − D)) (Eq. 25), which for D ≪ 1
reduces to Eq. 23's sgn(Â(r − 1)).

Oracles: autograd for ∇_μL (never the paper's closed form), central finite differences in η for the
first-order term, a Monte-Carlo count for the sign-rule disagreement rate (binomial SE, 6 SE; 3 comparisons
→ false alarm ≤ 6e-9), and the loss's block decision against the post-step KL computed by autograd.
Float64 throughout; exact identities at rtol 1e-9.
"""
from __future__ import annotations

import math

import torch
from hypothesis import given
from hypothesis import strategies as st

from flowdppo import divergence, losses, sde
from proofs_check._common import assert_within_se, examples


def _surrogate_step(x, mean, old_mean, std, adv, eta, logp_reduction="sum"):
    """μ_new = μ + η·∇_μ Σ_i Â_i r_i by autograd; r from sde.gaussian_logp with the given reduction."""
    mean = mean.detach().clone().requires_grad_(True)
    reduce = (lambda t: t.flatten(1).sum(1)) if logp_reduction == "sum" else (lambda t: t.flatten(1).mean(1))
    log_r = reduce(sde.gaussian_logp(x, mean, std)) - reduce(sde.gaussian_logp(x, old_mean, std))
    (grad,) = torch.autograd.grad((adv * log_r.exp()).sum(), mean)
    return (mean + eta * grad).detach(), log_r.detach(), grad


def _problem(seed, dims, std, scale, batch=1):
    gen = torch.Generator().manual_seed(seed)
    old_mean = torch.randn(batch, dims, generator=gen, dtype=torch.float64)
    mean = old_mean + scale * std * torch.randn(batch, dims, generator=gen, dtype=torch.float64)
    x = old_mean + std * torch.randn(batch, dims, generator=gen, dtype=torch.float64)
    return x, mean, old_mean


@given(seed=st.integers(0, 2**31 - 1), dims=st.integers(1, 40), std=st.floats(0.05, 2.0),
       scale=st.floats(1e-3, 1.0), adv=st.floats(-3.0, 3.0), eta=st.floats(1e-6, 1.0))
def test_eq24_post_step_divergence_is_exact(seed, dims, std, scale, adv, eta):
    """Eq. 24 equals the KL after an autograd ascent step, for any step size; gᵀd = σ²(log r − D)."""
    x, mean, old_mean = _problem(seed, dims, std, scale / dims**0.5)
    s = torch.tensor(std, dtype=torch.float64)
    a = torch.tensor([adv], dtype=torch.float64)
    mean_new, log_r, grad = _surrogate_step(x, mean, old_mean, s, a, eta)
    d, g = mean - old_mean, x - mean
    kl = divergence.kl_sum(old_mean, mean, s)
    r = log_r.exp()
    torch.testing.assert_close((g * d).sum(1), std**2 * (log_r - kl), rtol=1e-9, atol=1e-12)
    eq24 = kl + eta * a * r / std**4 * (g * d).sum(1) + eta**2 * a**2 * r**2 / (2 * std**6) * (g**2).sum(1)
    torch.testing.assert_close(divergence.kl_sum(old_mean, mean_new, s), eq24, rtol=1e-9, atol=1e-12)


@given(seed=st.integers(0, 2**31 - 1), dims=st.integers(1, 40), std=st.floats(0.1, 2.0),
       scale=st.floats(1e-2, 1.0), adv=st.floats(0.1, 3.0), sign=st.sampled_from([-1.0, 1.0]))
def test_first_order_term_by_finite_differences(seed, dims, std, scale, adv, sign):
    """d D_new/dη at η = 0, by central differences of the autograd step, = (Âr/σ²)(log r − D)  (rtol 1e-5)."""
    x, mean, old_mean = _problem(seed, dims, std, scale / dims**0.5)
    s = torch.tensor(std, dtype=torch.float64)
    a = torch.tensor([sign * adv], dtype=torch.float64)
    kl = divergence.kl_sum(old_mean, mean, s)
    _, log_r, grad = _surrogate_step(x, mean, old_mean, s, a, 0.0)
    h = 1e-4 * float(kl.sqrt()) * std / float(grad.norm())          # moves μ by ~1e-4 of ‖d‖
    d_plus = divergence.kl_sum(old_mean, mean + h * grad, s)
    d_minus = divergence.kl_sum(old_mean, mean - h * grad, s)
    fd = (d_plus - d_minus) / (2 * h)
    first_order = a * log_r.exp() / std**2 * (log_r - kl)
    torch.testing.assert_close(fd, first_order, rtol=1e-5, atol=1e-9 * float(first_order.abs()))


@examples(5)
@given(seed=st.integers(0, 2**31 - 1))
def test_sign_rule_reduces_to_eq23_for_small_divergence(seed):
    """sgn(Â(log r − D)) ≠ sgn(Â(r − 1)) exactly when 0 < log r < D, whose probability under π_old is
    Φ(√(2D)) − Φ(√(D/2)) → 0 as D → 0 (log r ~ N(−D, 2D)): MC counts match it (6 binomial SE) for
    D ∈ {1e-6, 1e-3, 0.1}, and the rate falls with D."""
    gen = torch.Generator().manual_seed(seed)
    n, dims, std = 200_000, 4, 0.5
    rates = []
    for kl in (1e-6, 1e-3, 0.1):
        d = torch.randn(dims, generator=gen, dtype=torch.float64)
        d = d * (2 * kl) ** 0.5 * std / d.norm()                       # ‖d‖²/(2σ²) = kl
        eps = torch.randn(n, dims, generator=gen, dtype=torch.float64)
        log_r = eps @ d / std - kl                                     # Eq. 13
        adv = torch.randn(n, generator=gen, dtype=torch.float64)
        eq25 = torch.sign(adv * (log_r - kl))
        eq23 = torch.sign(adv * (log_r.exp() - 1.0))
        differ = (eq25 != eq23).double()
        outside = (log_r <= 0) | (log_r >= kl)
        assert bool(torch.all(differ[outside] == 0))
        p = 0.5 * (math.erf(math.sqrt(2 * kl) / math.sqrt(2)) - math.erf(math.sqrt(kl / 2) / math.sqrt(2)))
        assert_within_se(differ.mean(), p, max((p * (1 - p) / n) ** 0.5, 1.0 / n), what=f"disagreement at D={kl}")
        rates.append(p)
    assert rates[0] < rates[1] < rates[2] and rates[0] < 3e-4


@given(seed=st.integers(0, 2**31 - 1), std=st.floats(0.05, 1.0), scale=st.floats(1e-3, 0.3),
       log10_eta=st.floats(-4.0, 0.0), kl_reduction=st.sampled_from(["sum", "per_dim"]),
       logp_reduction=st.sampled_from(["sum", "per_dim"]))
def test_full_predictive_mask_blocks_exactly_when_post_step_kl_exceeds_delta(
        seed, std, scale, log10_eta, kl_reduction, logp_reduction):
    """Eq. 27: flow_dppo_predictive(step_size=η) blocks a sample ⇔ the KL after the autograd ascent step of
    size η on Â·r (with the loss's own log-prob reduction) exceeds δ; δ is set to the batch median of the
    post-step KL so both outcomes occur.  Blocked samples have loss and gradient exactly 0."""
    batch, shape = 48, (3, 4)
    gen = torch.Generator().manual_seed(seed)
    old_mean = torch.randn(batch, *shape, generator=gen, dtype=torch.float64)
    mean = (old_mean + scale * std * torch.rand(batch, 1, 1, generator=gen, dtype=torch.float64)
            * torch.randn(batch, *shape, generator=gen, dtype=torch.float64)).requires_grad_(True)
    x = old_mean + std * torch.randn(batch, *shape, generator=gen, dtype=torch.float64)
    adv = torch.randn(batch, generator=gen, dtype=torch.float64)
    s = torch.tensor(std, dtype=torch.float64).reshape(1, 1, 1)
    eta = 10.0**log10_eta
    mean_new, _, _ = _surrogate_step(x, mean, old_mean, s, adv, eta, logp_reduction)
    post = divergence.gaussian_kl(old_mean, mean_new, s, kl_reduction)
    delta = float(post.median())
    reduce = (lambda t: t.flatten(1).sum(1)) if logp_reduction == "sum" else (lambda t: t.flatten(1).mean(1))
    logp = reduce(sde.gaussian_logp(x, mean, s))
    old_logp = reduce(sde.gaussian_logp(x, old_mean, s))
    loss, stats = losses.flow_dppo_predictive(
        logp=logp, old_logp=old_logp, mean=mean, old_mean=old_mean, std=s, advantages=adv, sample=x,
        delta=delta, kl_reduction=kl_reduction, logp_reduction=logp_reduction, step_size=eta)
    blocked = loss.detach() == 0
    clear = (post - delta).abs() > 1e-9 * max(delta, 1e-300)
    assert bool(torch.all(blocked[clear] == (post > delta)[clear]))
    loss.sum().backward()
    assert bool(torch.all(mean.grad[blocked] == 0)) and bool(torch.isfinite(mean.grad).all())
    assert abs(float(stats["blocked"]) - float(blocked.double().mean())) < 1e-6   # stats are float32


@given(seed=st.integers(0, 2**31 - 1), std=st.floats(0.05, 1.0), scale=st.floats(1e-3, 0.5),
       log10_delta=st.floats(-8.0, 0.0), logp_reduction=st.sampled_from(["sum", "per_dim"]))
def test_first_order_predictive_mask_is_eq26(seed, std, scale, log10_delta, logp_reduction):
    """Eq. 26: flow_dppo_predictive(step_size=None) blocks ⇔ D_t > δ ∧ Â·(log r − D_t) > 0, with log r and D_t
    in the same reduction; against a per-sample loop."""
    batch, dims = 32, 6
    gen = torch.Generator().manual_seed(seed)
    old_mean = torch.randn(batch, dims, generator=gen, dtype=torch.float64)
    mean = old_mean + scale * std * torch.randn(batch, dims, generator=gen, dtype=torch.float64)
    x = old_mean + std * torch.randn(batch, dims, generator=gen, dtype=torch.float64)
    adv = torch.randn(batch, generator=gen, dtype=torch.float64)
    s = torch.tensor(std, dtype=torch.float64)
    div = 1 if logp_reduction == "sum" else dims
    logp = sde.gaussian_logp(x, mean, s).sum(1) / div
    old_logp = sde.gaussian_logp(x, old_mean, s).sum(1) / div
    delta = 10.0**log10_delta
    loss, _ = losses.flow_dppo_predictive(
        logp=logp, old_logp=old_logp, mean=mean, old_mean=old_mean, std=s, advantages=adv,
        delta=delta, kl_reduction="per_dim", logp_reduction=logp_reduction)
    for i in range(batch):
        d_gate = float(((mean[i] - old_mean[i]) ** 2).sum() / (2 * std**2)) / dims     # per-dim gate
        d_same = float(((mean[i] - old_mean[i]) ** 2).sum() / (2 * std**2)) / div
        lr = float(logp[i] - old_logp[i])
        expect_blocked = d_gate > delta and float(adv[i]) * (lr - d_same) > 0
        assert (float(loss[i]) == 0.0) == expect_blocked, i
