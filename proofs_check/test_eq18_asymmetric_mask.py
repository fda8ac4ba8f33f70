"""Eq. 17 / 18 / 23: the divergence mask — truth table, monotonicity, limits, gradients, accounting (mask accounting).

M = 0 ⇔ D_KL(π_old ‖ π_θ) > δ ∧ Â·(r − 1) > 0 (flow_dppo); the ablation `flow_dppo_symmetric` drops every
sample with D > δ; the predictive variants are Eq. 26/27 (App. E has their own exactness checks).
Oracles: a per-sample Python loop of Eq. 18, exactly representable KLs for the boundary (KL = δ is NOT
exceeded: the paper's strict >), autograd for gradients.  No randomness beyond hypothesis' draws; exact
comparisons except float32 stats (1e-6).
"""
from __future__ import annotations

import itertools
import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from flowdppo import losses
from proofs_check._common import delta_strategy, make_batch, random_batches, run

DPPO_FAMILY = {
    "flow_dppo": dict(fn=losses.flow_dppo, extra={}),
    "flow_dppo_symmetric": dict(fn=losses.flow_dppo_symmetric, extra={}),
    "flow_dppo_predictive_first_order": dict(fn=losses.flow_dppo_predictive, extra={}),
    "flow_dppo_predictive_full": dict(fn=losses.flow_dppo_predictive, extra={"step_size": 0.05}),
}


# ---------------------------------------------------------------------------------------------------
# Truth table, including r exactly 1, Â = 0 and KL exactly δ
# ---------------------------------------------------------------------------------------------------
ADVS, LOG_RATIOS, SHIFTS = (-1.0, 0.0, 1.0), (-0.1, 0.0, 0.1), (0.5, 1.0, 2.0)   # per-dim KL 0.125, 0.5, 2
DELTA = 0.5


def eq18_blocked(adv, lr, kl, delta):
    """Eq. 18 written out."""
    if kl > delta and adv > 0 and lr > 0:
        return True
    if kl > delta and adv < 0 and lr < 0:
        return True
    return False


def test_truth_table_flow_dppo_and_symmetric():
    """All 27 cells: flow_dppo blocks exactly Eq. 18's cells (r = 1, Â = 0 and KL = δ never blocked);
    the symmetric ablation blocks exactly KL > δ; kept cells have loss −Â·r and gradient −Â·r."""
    cells = list(itertools.product(ADVS, LOG_RATIOS, SHIFTS))
    adv, lr, shift = (list(c) for c in zip(*cells))
    for name, rule in (("flow_dppo", eq18_blocked), ("flow_dppo_symmetric", lambda a, r, k, d: k > d)):
        batch = make_batch(adv, lr, shift)
        loss, stats, grad = run(DPPO_FAMILY[name]["fn"], batch, delta=DELTA)
        for i, (a, r, s) in enumerate(cells):
            blocked = rule(a, r, s**2 / 2, DELTA)
            want = 0.0 if blocked else -a * math.exp(r)
            assert float(loss[i]) == pytest.approx(want, rel=1e-15, abs=0.0), (name, a, r, s)
            assert float(grad[i]) == pytest.approx(want, rel=1e-15, abs=0.0), (name, a, r, s)
        n_blocked = sum(rule(a, r, s**2 / 2, DELTA) for a, r, s in cells)
        assert float(stats["blocked"]) == pytest.approx(n_blocked / len(cells), abs=1e-6)
        assert float(stats["kl_exceeded"]) == pytest.approx(sum(s**2 / 2 > DELTA for s in shift) / len(cells),
                                                            abs=1e-6)


# ---------------------------------------------------------------------------------------------------
# Properties on random batches
# ---------------------------------------------------------------------------------------------------
@given(batch=random_batches(), delta=delta_strategy())
def test_flow_dppo_matches_a_per_sample_loop(batch, delta):
    """flow_dppo's loss = 0 where Eq. 18 blocks and −Â·exp(clamp(log r)) elsewhere (per-sample loop)."""
    loss, _, _ = run(losses.flow_dppo, batch, delta=delta)
    for i in range(loss.shape[0]):
        kl = float(((batch["mean"][i] - batch["old_mean"][i]) ** 2).mean() / (2 * float(batch["std"]) ** 2))
        lr = float(batch["logp"][i].detach() - batch["old_logp"][i])
        a = float(batch["advantages"][i])
        clamped = max(-losses.LOG_RATIO_MAX, min(losses.LOG_RATIO_MAX, lr))
        want = 0.0 if eq18_blocked(a, lr, kl, delta) else -a * math.exp(clamped)
        assert float(loss[i]) == pytest.approx(want, rel=1e-12, abs=0.0)


@pytest.mark.parametrize("name", list(DPPO_FAMILY))
@given(batch=random_batches(), delta=delta_strategy())
def test_blocked_samples_have_exactly_zero_gradient_and_all_gradients_are_finite(name, batch, delta):
    """Where blocked (loss exactly 0 with Â ≠ 0) the gradient is exactly 0, and gradients are finite
    everywhere, also for log-ratios of ±1e4 (clamped before exp, no inf·0)."""
    loss, _, grad = run(DPPO_FAMILY[name]["fn"], batch, delta=delta, **DPPO_FAMILY[name]["extra"])
    assert bool(torch.isfinite(loss).all()) and bool(torch.isfinite(grad).all())
    blocked = (loss == 0) & (batch["advantages"] != 0)
    assert bool(torch.all(grad[blocked] == 0))


@pytest.mark.parametrize("name", list(DPPO_FAMILY))
@given(batch=random_batches(), delta=delta_strategy())
def test_mask_accounting_invariants(name, batch, delta):
    """mask accounting: blocked = blocked_pos + blocked_neg, blocked + kept = 1, blocked ≤ kl_exceeded (not for the full
    predictive mask, which may block a sample still inside δ), blocked_pos ≤ frac(Â > 0)."""
    _, stats, _ = run(DPPO_FAMILY[name]["fn"], batch, delta=delta, **DPPO_FAMILY[name]["extra"])
    f = {k: float(v) for k, v in stats.items()}
    assert f["blocked"] == pytest.approx(f["blocked_pos"] + f["blocked_neg"], abs=1e-6)
    assert f["blocked"] + f["kept"] == pytest.approx(1.0, abs=1e-6)
    if name != "flow_dppo_predictive_full":
        assert f["blocked"] <= f["kl_exceeded"] + 1e-6
    assert f["blocked_pos"] <= float((batch["advantages"] > 0).double().mean()) + 1e-6


@given(batch=random_batches(), delta=delta_strategy())
def test_corrective_updates_are_never_blocked(batch, delta):
    """Eq. 18's asymmetry: Â·(r − 1) ≤ 0 (corrective, r = 1 and Â = 0 included) ⇒ kept, loss = −Â·r."""
    loss, _, grad = run(losses.flow_dppo, batch, delta=delta)
    lr = (batch["logp"] - batch["old_logp"]).detach()
    corrective = batch["advantages"] * lr <= 0
    r = lr.clamp(-losses.LOG_RATIO_MAX, losses.LOG_RATIO_MAX).exp()
    torch.testing.assert_close(loss[corrective], (-batch["advantages"] * r)[corrective], rtol=1e-15, atol=0.0)


@pytest.mark.parametrize("name", list(DPPO_FAMILY))
@given(batch=random_batches(), deltas=st.lists(delta_strategy(), min_size=2, max_size=2))
def test_raising_delta_never_blocks_more(name, batch, deltas):
    """Monotone in δ: the samples blocked at the larger δ are a subset of those blocked at the smaller one."""
    lo, hi = sorted(deltas)
    extra = DPPO_FAMILY[name]["extra"]
    nz = batch["advantages"] != 0
    loss_lo, _, _ = run(DPPO_FAMILY[name]["fn"], batch, delta=lo, **extra)
    loss_hi, _, _ = run(DPPO_FAMILY[name]["fn"], batch, delta=hi, **extra)
    blocked_lo, blocked_hi = (loss_lo == 0) & nz, (loss_hi == 0) & nz
    assert bool(torch.all(blocked_lo | ~blocked_hi))


@pytest.mark.parametrize("name", list(DPPO_FAMILY))
@given(batch=random_batches())
def test_infinite_delta_recovers_the_plain_surrogate(name, batch):
    """δ → ∞: nothing is blocked and loss = −Â·r with gradient −Â·r (d r / d log π = r), r = exp(clamped log r);
    δ = 0 with zero KL (on-policy, μ_θ = μ_old) blocks nothing either (KL > 0 is false)."""
    loss, stats, grad = run(DPPO_FAMILY[name]["fn"], batch, delta=math.inf, **DPPO_FAMILY[name]["extra"])
    lr = (batch["logp"] - batch["old_logp"]).detach()
    r = lr.clamp(-losses.LOG_RATIO_MAX, losses.LOG_RATIO_MAX).exp()
    torch.testing.assert_close(loss, -batch["advantages"] * r, rtol=1e-15, atol=0.0)
    inside = lr.abs() < losses.LOG_RATIO_MAX
    torch.testing.assert_close(grad[inside], (-batch["advantages"] * r)[inside], rtol=1e-15, atol=0.0)
    assert float(stats["blocked"]) == 0.0
    on_policy = dict(batch, mean=batch["old_mean"].clone())
    _, stats0, _ = run(DPPO_FAMILY[name]["fn"], on_policy, delta=0.0, **DPPO_FAMILY[name]["extra"])
    if name != "flow_dppo_predictive_full":        # the full mask looks one step ahead: it may block at δ = 0
        assert float(stats0["blocked"]) == 0.0


@pytest.mark.parametrize("name", list(losses.POLICY_LOSSES))
@given(batch=random_batches())
def test_every_policy_loss_shares_the_signature_and_stays_finite(name, batch):
    """Every POLICY_LOSSES entry accepts the shared keyword-only inputs (with its defaults), returns a [B]
    loss and 0-d stats, and has finite loss and gradient for log-ratios up to ±1e4."""
    fn = losses.POLICY_LOSSES[name]
    loss, stats, grad = run(fn, batch)
    assert loss.shape == batch["advantages"].shape
    assert all(v.ndim == 0 for v in stats.values())
    assert bool(torch.isfinite(loss).all()) and bool(torch.isfinite(grad).all())
    with pytest.raises(TypeError):
        fn(batch["logp"], batch["old_logp"])      # keyword-only
