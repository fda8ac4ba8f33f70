"""Counterfactual firing rates agree with the rules they describe (Eq. 5 and Eq. 18 / 23).

`counterfactual_rates` reports, for any batch, what ratio clipping at ε and the asymmetric mask at
per-dim δ would do.  Oracle: the rules themselves — clip_fire@ε equals flow_grpo_clip's
clip_frac_gradient at the same ε, mask_fire@δ equals flow_dppo's `blocked` at the same per-dim δ, and
sign_rule is the fraction with Â·log r > 0 (= Â·(r − 1) > 0).  Exact up to float32 stats (1e-6).
"""
from __future__ import annotations

import pytest
from hypothesis import given

from flowdppo import divergence, losses
from proofs_check._common import random_batches, run


@given(batch=random_batches())
def test_counterfactual_rates_equal_the_rules(batch):
    lr = (batch["logp"] - batch["old_logp"]).detach()
    lr = lr.clamp(-losses.LOG_RATIO_MAX, losses.LOG_RATIO_MAX)
    kl = divergence.kl_per_dim(batch["old_mean"], batch["mean"], batch["std"])
    rates = losses.counterfactual_rates(log_ratio=lr, kl_per_dim=kl, advantages=batch["advantages"])
    for eps in losses.CLIP_EPS_GRID:
        _, stats, _ = run(losses.flow_grpo_clip, batch, clip_range=eps)
        assert float(rates[f"clip_fire@{eps:g}"]) == pytest.approx(float(stats["clip_frac_gradient"]), abs=1e-6)
    for delta in losses.DELTA_GRID:
        _, stats, _ = run(losses.flow_dppo, batch, delta=delta, kl_reduction="per_dim")
        assert float(rates[f"mask_fire@{delta:g}"]) == pytest.approx(float(stats["blocked"]), abs=1e-6)
    push = (batch["advantages"] * lr > 0).double().mean()      # sgn(r − 1) = sgn(log r)
    assert float(rates["sign_rule"]) == pytest.approx(float(push), abs=1e-6)
