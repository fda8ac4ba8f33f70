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


def test_log_ratio_source_is_explicit():
    """Log-probs come as a pair or not at all; without them the action is needed (log r from the residuals)."""
    b = _batch()
    with pytest.raises(ValueError, match="both logp and old_logp"):
        losses.flow_dppo(**dict(b, old_logp=None))
    with pytest.raises(ValueError, match="sample"):
        losses.flow_dppo(**dict(b, logp=None, old_logp=None, sample=None))
    with pytest.raises(ValueError, match="logp_reduction"):
        losses.flow_grpo_clip(**dict(b, logp=None, old_logp=None), logp_reduction="mean")
