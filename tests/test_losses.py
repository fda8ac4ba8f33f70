"""Unit checks of flowdppo.losses that the paper-claim checks in proofs_check/ do not cover:
the shared trust-region statistics and the fail-loudly argument checks.  (Mask logic, Eq. 5, the guard
ratio, App. E and KL-to-reference are in proofs_check/.)"""
from __future__ import annotations

import math

import pytest
import torch

from flowdppo import losses


def _batch(seed=0, b=6, dims=5, std=0.4):
    gen = torch.Generator().manual_seed(seed)
    old_mean = torch.randn(b, dims, generator=gen, dtype=torch.float64)
    mean = old_mean + 0.05 * torch.randn(b, dims, generator=gen, dtype=torch.float64)
    old_logp = torch.randn(b, generator=gen, dtype=torch.float64)
    logp = old_logp + 0.1 * torch.randn(b, generator=gen, dtype=torch.float64)
    return dict(logp=logp, old_logp=old_logp, mean=mean, old_mean=old_mean,
                std=torch.tensor(std, dtype=torch.float64), advantages=torch.randn(b, generator=gen, dtype=torch.float64),
                sample=old_mean.clone())


def test_trust_region_stats_against_direct_formulas():
    """ratio moments, |log r|, sum/per-dim KL (Eq. 14) and the k1 / k3 estimators, computed by hand."""
    b = _batch()
    lr = b["logp"] - b["old_logp"]
    stats = losses.trust_region_stats(log_ratio=lr, mean=b["mean"], old_mean=b["old_mean"], std=b["std"])
    r = lr.exp()
    kl = ((b["mean"] - b["old_mean"]) ** 2).sum(1) / (2 * 0.4**2)
    want = {"ratio_mean": r.mean(), "ratio_std": r.std(unbiased=False), "ratio_min": r.min(), "ratio_max": r.max(),
            "log_ratio_abs_mean": lr.abs().mean(), "kl_sum_mean": kl.mean(), "kl_sum_max": kl.max(),
            "kl_per_dim_mean": kl.mean() / 5, "kl_per_dim_max": kl.max() / 5,
            "k1": (-lr).mean(), "k3": (r - 1 - lr).mean()}
    assert set(want) <= set(stats)
    for key, value in want.items():
        assert float(stats[key]) == pytest.approx(float(value), rel=1e-12, abs=1e-15), key


def test_ratio_clamped_reports_the_clamp():
    b = _batch()
    b["logp"] = b["old_logp"] + torch.tensor([0.0, 25.0, -25.0, 0.1, 0.0, 0.0], dtype=torch.float64)
    for name, fn in losses.POLICY_LOSSES.items():
        if name == "grpo_guard":
            continue                      # the guard clamps its own (rescaled) log-ratio
        _, stats = fn(**b)
        assert float(stats["ratio_clamped"]) == pytest.approx(2 / 6, abs=1e-6), name
        assert float(stats["ratio_max"]) == pytest.approx(math.exp(losses.LOG_RATIO_MAX), rel=1e-6), name


@pytest.mark.parametrize("kwargs, match", [
    (dict(delta=-1.0), "delta"),
    (dict(kl_reduction="mean"), "kl_reduction"),
])
def test_dppo_losses_reject_bad_arguments(kwargs, match):
    for fn in (losses.flow_dppo, losses.flow_dppo_symmetric, losses.flow_dppo_predictive):
        with pytest.raises(ValueError, match=match):
            fn(**_batch(), **kwargs)


def test_full_predictive_mask_needs_a_sample_and_a_positive_step():
    b = _batch()
    with pytest.raises(ValueError, match="sample"):
        losses.flow_dppo_predictive(**dict(b, sample=None), step_size=0.1)
    with pytest.raises(ValueError, match="step_size"):
        losses.flow_dppo_predictive(**b, step_size=0.0)
    with pytest.raises(ValueError, match="logp_reduction"):
        losses.flow_dppo_predictive(**b, logp_reduction="mean")


def test_no_trust_region_is_the_plain_surrogate():
    """no_trust_region: loss = −Â·r with r = exp(logp − old_logp), gradient −Â·r·∂logp, nothing clipped or
    masked — the same per-sample loss and gradient as flow_dppo with δ = ∞ and flow_grpo with ε = ∞."""
    b = _batch(seed=3)
    for reference in (lambda **kw: losses.flow_dppo(**kw, delta=float("inf")),
                      lambda **kw: losses.flow_grpo_clip(**kw, clip_range=1e300)):
        logp_a = b["logp"].clone().requires_grad_(True)
        logp_b = b["logp"].clone().requires_grad_(True)
        loss_a, _ = losses.no_trust_region(**dict(b, logp=logp_a))
        loss_b, _ = reference(**dict(b, logp=logp_b))
        naive = -b["advantages"] * (b["logp"] - b["old_logp"]).exp()
        torch.testing.assert_close(loss_a.detach(), naive, rtol=1e-12, atol=0)
        torch.testing.assert_close(loss_a.detach(), loss_b.detach(), rtol=1e-12, atol=0)
        loss_a.sum().backward()
        loss_b.sum().backward()
        torch.testing.assert_close(logp_a.grad, naive, rtol=1e-12, atol=0)    # d(−Â·r)/dlogp = −Â·r
        torch.testing.assert_close(logp_a.grad, logp_b.grad, rtol=1e-12, atol=0)
    # the trainer's path: log r from the residuals (no log-probs given), gradient through μ_θ
    exact = dict(b, logp=None, old_logp=None, sample=b["old_mean"] + 0.3 * b["std"])
    mean_a, mean_b = b["mean"].clone().requires_grad_(True), b["mean"].clone().requires_grad_(True)
    loss_a, _ = losses.no_trust_region(**dict(exact, mean=mean_a))
    loss_b, _ = losses.flow_dppo(**dict(exact, mean=mean_b), delta=float("inf"))
    torch.testing.assert_close(loss_a.detach(), loss_b.detach(), rtol=1e-12, atol=0)
    loss_a.sum().backward()
    loss_b.sum().backward()
    torch.testing.assert_close(mean_a.grad, mean_b.grad, rtol=1e-12, atol=0)


def test_log_ratio_source_is_explicit():
    """Log-probs come as a pair or not at all; without them the action is needed (log r from the residuals)."""
    b = _batch()
    with pytest.raises(ValueError, match="both logp and old_logp"):
        losses.flow_dppo(**dict(b, old_logp=None))
    with pytest.raises(ValueError, match="sample"):
        losses.flow_dppo(**dict(b, logp=None, old_logp=None, sample=None))
    with pytest.raises(ValueError, match="logp_reduction"):
        losses.flow_grpo_clip(**dict(b, logp=None, old_logp=None), logp_reduction="mean")
