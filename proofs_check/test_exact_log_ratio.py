"""Eq. 6 in fp32 at the paper's threshold: the log-ratio that decides the asymmetric mask (Eq. 18) is exact.

log r = (‖x' − μ_old‖² − ‖x' − μ_θ‖²)/(2σ²) (Eq. 6).  Forming it as mean(log π_θ) − mean(log π_old) in
fp32 lets the O(1) terms of the two densities cancel only after the reduction; `sde.log_ratio` forms the
residual difference element-wise as ((x' − μ_old) + (x' − μ_θ))·(μ_θ − μ_old) and reduces once.  The
losses use it whenever they are not handed log-probs, which is how the trainer calls them.

Setting (the paper's SD3.5 recipe): D = 65 536 latent dims, δ = 1e-7 per dim, fp32 inputs, the Flow-SDE
stds of SD3.5's trained steps 0–4 (η = 0.8, shift 3), per-dim KL uniform in [1.01δ, 2δ] (every sample is
past δ, so the mask's decision is the sign of Â·log r), N = 1024 samples, seed 20260612.  Oracle: the same
fp32 numbers in float64 (where the residual difference is exact to ~1e-16).

Measured with this seed: log r has sd 2.1e-6 and mean −2.1e-7; the old formula's error is 6.9e-8 RMS
(max 3.2e-7); its sign is wrong for 6 and exactly 0 for 13 of the 1024 samples (its resolution is an ulp
of the O(1) per-dim log-density, 6e-8), a sign agreement of 98.1 % (96.9–99.0 % per step, worst at the
largest std).  The exact form's error is 3.1e-13 RMS (max 1.2e-12), agreement 100 % (the unfactored
residual difference would be 2.4e-10 RMS).  With the loss switched back to the old formula, the mask
decides 8 of the 1024 samples wrongly and the mask assertion below fails (99.22 % < 99.99 %).
Deterministic computation: no false alarms; tolerances stated at each assertion.
"""
from __future__ import annotations

import math

import torch
from hypothesis import given
from hypothesis import strategies as st

from flowdppo import losses, sde

D, DELTA, N, CHUNK, SEED = 65_536, 1e-7, 1024, 64, 20260612
ETA = 0.8


def _sd35_trained_stds() -> list[float]:
    grid = sde.shifted_sigmas(10, 3.0)
    return [float(sde.transition_std("flow_sde", float(grid[k]), float(grid[k + 1]), ETA)) for k in range(5)]


def _near_threshold_chunks():
    """fp32 (x', μ_θ, μ_old, σ) with per-dim KL(π_old‖π_θ) uniform in [1.01δ, 2δ]; x' ~ π_old."""
    gen = torch.Generator().manual_seed(SEED)
    stds = _sd35_trained_stds()
    for c in range(N // CHUNK):
        s = stds[c % len(stds)]
        old_mean = torch.randn(CHUNK, D, generator=gen)
        direction = torch.randn(CHUNK, D, generator=gen, dtype=torch.float64)
        kl = DELTA * (1.01 + 0.99 * torch.rand(CHUNK, 1, generator=gen, dtype=torch.float64))
        d = direction / direction.norm(dim=1, keepdim=True) * torch.sqrt(2.0 * s * s * D * kl)  # ‖d‖²/(2σ²D) = kl
        mean = old_mean + d.float()
        x = old_mean + s * torch.randn(CHUNK, D, generator=gen)
        yield x, mean, old_mean, torch.tensor(s)


def _float64_log_ratio(x, mean, old_mean, s):
    x, mean, old_mean = x.double(), mean.double(), old_mean.double()
    return (((x - old_mean) + (x - mean)) * (mean - old_mean)).mean(1) / (2.0 * float(s) ** 2)


def test_sign_of_log_ratio_and_the_mask_agree_with_float64_at_the_papers_threshold():
    """flow_dppo called as the trainer calls it (no log-probs) blocks exactly the samples float64 says it
    should on ≥ 99.99 % of near-threshold samples (measured: 100 %), and sde.log_ratio's sign agrees as
    often; the old formula, mean(log π_θ) − mean(log π_old) in fp32, agrees on ≤ 99.9 % (measured 98.1 %),
    so the test can tell them apart.  The exact form's largest error is ≤ 1e-10 (measured 1.2e-12), which
    bounds its sign-flip rate by 2·1e-10·max density of log r ≈ 2e-10/(√(2π)·1.7e-6) < 1e-4."""
    mask_agree = new_agree = old_agree = 0
    max_err_new, sq_err_old, count, exceeded_min = 0.0, 0.0, 0, math.inf
    for x, mean, old_mean, s in _near_threshold_chunks():
        ref = _float64_log_ratio(x, mean, old_mean, s)
        adv = torch.where(torch.arange(CHUNK) % 2 == 0, 1.0, -1.0)
        loss, stats = losses.flow_dppo(mean=mean, old_mean=old_mean, std=s, advantages=adv, sample=x, delta=DELTA)
        blocked = loss == 0                       # Â = ±1: a kept sample's loss −Â·r is never 0
        mask_agree += int((blocked == (adv.double() * ref > 0)).sum())
        new = sde.log_ratio(x, mean, old_mean, s, "per_dim")
        old = sde.gaussian_logp(x, mean, s).mean(1) - sde.gaussian_logp(x, old_mean, s).mean(1)
        new_agree += int((torch.sign(new.double()) == torch.sign(ref)).sum())
        old_agree += int((torch.sign(old.double()) == torch.sign(ref)).sum())
        max_err_new = max(max_err_new, float((new.double() - ref).abs().max()))
        sq_err_old += float(((old.double() - ref) ** 2).sum())
        count += CHUNK
        exceeded_min = min(exceeded_min, float(stats["kl_exceeded"]))
    assert exceeded_min == 1.0                    # every sample is past δ: the mask decides by sign alone
    assert mask_agree / count >= 0.9999, f"mask agreement {mask_agree / count:.5f}"
    assert new_agree / count >= 0.9999, f"sign agreement of sde.log_ratio {new_agree / count:.5f}"
    assert max_err_new <= 1e-10, f"largest error of the exact form {max_err_new:.3e}"
    assert old_agree / count <= 0.999, f"old formula agreement {old_agree / count:.5f}: the test lost its power"
    assert math.sqrt(sq_err_old / count) > 1e-8   # the old formula's RMS error (measured 7.1e-8)


def test_gradient_equals_the_log_density_gradient_in_fp32():
    """∂ log r/∂μ_θ through the exact form equals that through the log-density difference (the standard
    formula) and both equal float64's, at D = 65 536, per-dim and summed log-probs; so does the gradient of
    the flow_dppo loss (δ = ∞, all kept) through the exact form.  Tolerance: rtol 1e-5 with atol
    1e-6·max|grad|.  Measured, relative to max|grad|: 1.6e-7 (exact) and 1.0e-7 (standard) for ∂ log r/∂μ_θ.
    The VALUE of the summed log-ratio is where the standard formula fails: its fp32 error reaches 7e-3
    (the O(1)·D terms cancel after the sum), so its r — and the loss gradient −Â·r·∂ log r — is off by
    up to 0.7 %; the exact form's summed log r is off by 4e-8."""
    x, mean, old_mean, s = next(_near_threshold_chunks())
    x, mean, old_mean = x[:8], mean[:8], old_mean[:8]
    adv = torch.tensor([1.0, -1.0, 0.5, -2.0, 1.5, -0.5, 3.0, -3.0])
    for reduction in ("per_dim", "sum"):
        reduce = (lambda t: t.mean(1)) if reduction == "per_dim" else (lambda t: t.sum(1))
        lr_grad, loss_grad = {}, {}
        for name, dtype in (("exact32", torch.float32), ("standard32", torch.float32), ("exact64", torch.float64)):
            mu = mean.to(dtype).clone().requires_grad_(True)
            if name == "standard32":
                lr = reduce(sde.gaussian_logp(x, mu, s)) - reduce(sde.gaussian_logp(x, old_mean, s))
            else:
                lr = sde.log_ratio(x.to(dtype), mu, old_mean.to(dtype), s.to(dtype), reduction)
            (lr_grad[name],) = torch.autograd.grad(lr.sum(), mu)
            if name != "standard32":
                loss, _ = losses.flow_dppo(mean=mu, old_mean=old_mean.to(dtype), std=s.to(dtype),
                                           advantages=adv.to(dtype), sample=x.to(dtype), delta=math.inf,
                                           logp_reduction=reduction)
                (loss_grad[name],) = torch.autograd.grad(loss.sum(), mu)
        for grads, names in ((lr_grad, ("exact32", "standard32")), (loss_grad, ("exact32",))):
            ref = grads["exact64"]
            atol = 1e-6 * float(ref.abs().max())
            for name in names:
                torch.testing.assert_close(grads[name].double(), ref, rtol=1e-5, atol=atol,
                                           msg=lambda m: f"{name} vs float64 ({reduction}): {m}")


@given(seed=st.integers(0, 2**31 - 1), std=st.floats(0.05, 2.0), scale=st.floats(1e-6, 1.0),
       reduction=st.sampled_from(["sum", "per_dim"]))
def test_log_ratio_is_eq6_and_eq13_and_its_unnormalized_scale_is_the_published_one(seed, std, scale, reduction):
    """In float64: sde.log_ratio = the log-density difference (Eq. 6) = εᵀd/σ − ‖d‖²/(2σ²) (Eq. 13), per
    sample; scale="unnormalized" = the published CPS codes' reduce[(x − μ_old)² − (x − μ_θ)²] (their log-prob
    −(x − μ)²) = 2σ² × the normalized one.  rtol 1e-9 (atol 1e-12 for values near 0)."""
    gen = torch.Generator().manual_seed(seed)
    old_mean = torch.randn(6, 3, 5, generator=gen, dtype=torch.float64)
    mean = old_mean + scale * torch.randn(6, 3, 5, generator=gen, dtype=torch.float64)
    eps = torch.randn(6, 3, 5, generator=gen, dtype=torch.float64)
    x = old_mean + std * eps
    s = torch.tensor(std, dtype=torch.float64)
    red = (lambda t: t.flatten(1).sum(1)) if reduction == "sum" else (lambda t: t.flatten(1).mean(1))
    got = sde.log_ratio(x, mean, old_mean, s, reduction)
    density_diff = red(sde.gaussian_logp(x, mean, s)) - red(sde.gaussian_logp(x, old_mean, s))
    d = mean - old_mean
    eq13 = red(eps * d / std - d**2 / (2 * std**2))
    published = red(-((x - mean) ** 2)) - red(-((x - old_mean) ** 2))
    tol = dict(rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(got, density_diff, **tol)
    torch.testing.assert_close(got, eq13, **tol)
    unnorm = sde.log_ratio(x, mean, old_mean, s, reduction, "unnormalized")
    torch.testing.assert_close(unnorm, published, **tol)
    torch.testing.assert_close(unnorm, 2 * std**2 * got, **tol)
