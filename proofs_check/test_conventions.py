"""The convention switches (docs/conventions.md), each pinned to its formula, and the presets.

  * σ grid: "official" = shift(linspace(1, 1/K, K)) then 0 with shift(σ) = sσ/(1 + (s − 1)σ); pinned to
    its exact rational values at K = 10, s = 3 (1, 27/28, 12/13, 7/8, 9/11, 3/4, 2/3, 9/16, 3/7, 1/4, 0).
    (The SD3 pipeline grid, and the adapter's "official" grid, are pinned in tests/test_diffusers_policy.py.)
  * CPS log-prob scale: "unnormalized" log r = reduce[(x − μ_old)² − (x − μ_θ)²] = 2σ²·log r (Eq. 6), used
    by the surrogate and the clip; the mask's decisions are identical.
  * β units: "mean_sq" = reduce(μ_θ − μ_ref)² = 2σ²·KL(π_θ‖π_ref) (Eq. 14), with its gradient.
  * Advantage std: "bessel" = (R − mean)/(stdev + eps) (statistics.stdev, ddof 1), √((N−1)/N) = 0.968 of
    "population" (statistics.pstdev, floored at eps) at N = 16.
  * Tie at δ: a sample with KL exactly δ (exactly representable) is kept ("keep", Eq. 18's >) or blocked
    ("block", ≥) by each DPPO mask.
  * Presets: "paper" / "official" fill the unset fields, an explicit field wins, config.json keeps the
    resolved values.
Oracles are the formulas written out (float64, Python's statistics module); deterministic, rtol ≤ 1e-12.
"""
from __future__ import annotations

import math
import statistics
from fractions import Fraction

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from flowdppo import advantages, losses, sde
from flowdppo.config import CONVENTION_PRESETS, make_config

OFFICIAL_SD35_K10 = [Fraction(1), Fraction(27, 28), Fraction(12, 13), Fraction(7, 8), Fraction(9, 11), Fraction(3, 4),
                     Fraction(2, 3), Fraction(9, 16), Fraction(3, 7), Fraction(1, 4), Fraction(0)]


def test_official_grid_is_pinned_at_k10_shift3():
    """shift(linspace(1, 1/10, 10)) ∪ {0} at s = 3 equals the exact rationals 3t/(1 + 2t), t = 1, .9, …, .1, 0."""
    exact = [3 * Fraction(k, 10) / (1 + 2 * Fraction(k, 10)) for k in range(10, -1, -1)]
    assert exact == OFFICIAL_SD35_K10
    got = sde.shifted_sigmas(10, 3.0)
    torch.testing.assert_close(got, torch.tensor([float(v) for v in exact], dtype=torch.float64), rtol=1e-15, atol=0)


@given(num_steps=st.integers(1, 60), shift=st.floats(0.5, 8.0))
def test_official_grid_is_the_shift_of_linspace_1_to_1_over_k(num_steps, shift):
    """For any K and s: shifted_sigmas(K, s) = [sσ/(1 + (s−1)σ) for σ in linspace(1, 1/K, K)] + [0]."""
    lin = [1 - i / num_steps for i in range(num_steps)]           # linspace(1, 1/K, K) written out
    want = [shift * t / (1 + (shift - 1) * t) for t in lin] + [0.0]
    torch.testing.assert_close(sde.shifted_sigmas(num_steps, shift), torch.tensor(want, dtype=torch.float64),
                               rtol=1e-13, atol=1e-15)


def _batch(seed, std, b=12, dims=7, scale=0.05):
    gen = torch.Generator().manual_seed(seed)
    old_mean = torch.randn(b, dims, generator=gen, dtype=torch.float64)
    mean = old_mean + scale * torch.randn(b, dims, generator=gen, dtype=torch.float64)
    x = old_mean + std * torch.randn(b, dims, generator=gen, dtype=torch.float64)
    adv = torch.randn(b, generator=gen, dtype=torch.float64)
    return dict(mean=mean, old_mean=old_mean, std=torch.tensor(std, dtype=torch.float64), advantages=adv, sample=x)


@given(seed=st.integers(0, 2**31 - 1), std=st.floats(0.1, 1.2), reduction=st.sampled_from(["sum", "per_dim"]),
       delta=st.floats(1e-6, 1e-2))
def test_unnormalized_cps_scale_changes_the_surrogate_not_the_mask(seed, std, reduction, delta):
    """logp_scale="unnormalized": flow_dppo's kept loss is −Â·exp(2σ²·log r), flow_grpo clips exp(2σ²·log r)
    (Eq. 5 on the published ratio), and flow_dppo blocks exactly the same samples as with the normalized scale."""
    b = _batch(seed, std)
    x, mu, mo = b["sample"], b["mean"], b["old_mean"]
    red = (lambda t: t.sum(1)) if reduction == "sum" else (lambda t: t.mean(1))
    lr_theirs = red((x - mo) ** 2 - (x - mu) ** 2)                  # the published −(x−μ)² log-probs' ratio
    torch.testing.assert_close(lr_theirs, 2 * std**2 * sde.log_ratio(x, mu, mo, b["std"], reduction), rtol=1e-9,
                               atol=1e-13)
    kw = dict(delta=delta, kl_reduction="per_dim", logp_reduction=reduction)
    loss_n, stats_n = losses.flow_dppo(**b, **kw)
    loss_u, stats_u = losses.flow_dppo(**b, **kw, logp_scale="unnormalized")
    assert bool(torch.equal(loss_n == 0, loss_u == 0)) and float(stats_n["blocked"]) == float(stats_u["blocked"])
    kept = loss_u != 0
    torch.testing.assert_close(loss_u[kept], (-b["advantages"] * lr_theirs.exp())[kept], rtol=1e-12, atol=0)
    eps = 1e-3
    clip_u, _ = losses.flow_grpo_clip(**b, clip_range=eps, logp_reduction=reduction, logp_scale="unnormalized")
    r = lr_theirs.exp()
    a = b["advantages"]
    torch.testing.assert_close(clip_u, torch.maximum(-a * r, -a * r.clamp(1 - eps, 1 + eps)), rtol=1e-12, atol=0)


def test_unnormalized_scale_needs_the_sample_and_is_refused_where_undefined():
    b = _batch(0, 0.5)
    lp = torch.zeros(12, dtype=torch.float64)
    with pytest.raises(ValueError, match="logp_scale"):
        losses.flow_dppo(**b, logp=lp, old_logp=lp, logp_scale="unnormalized")
    with pytest.raises(ValueError, match="config.cps_logp"):
        make_config({}, ["kernel=cps", "eta=0.7", "cps_logp=unnormalized", "loss=grpo_guard"])
    with pytest.raises(ValueError, match="config.cps_logp"):
        make_config({}, ["kernel=cps", "eta=0.7", "conventions=official", "loss=flow_dppo_predictive"])
    # cps_logp concerns the CPS kernel only: Flow-SDE keeps its normalized Gaussian log-prob
    assert make_config({}, ["conventions=official"]).logp_scale == "normalized"
    assert make_config({}, ["conventions=official", "kernel=cps", "eta=0.7"]).logp_scale == "unnormalized"


@given(seed=st.integers(0, 2**31 - 1), std=st.floats(0.1, 1.2), reduction=st.sampled_from(["sum", "per_dim"]))
def test_beta_units_mean_sq_is_the_unnormalized_squared_distance(seed, std, reduction):
    """kl_to_reference(units="mean_sq") = reduce (μ_θ − μ_ref)² = 2σ²·kl_to_reference(units="exact_kl"), and both
    are differentiable in μ_θ with gradients 2(μ_θ − μ_ref)/D' and (μ_θ − μ_ref)/(σ²D')."""
    b = _batch(seed, std)
    mu = b["mean"].clone().requires_grad_(True)
    ref = b["old_mean"]
    n = 1 if reduction == "sum" else mu.shape[1]
    sq = losses.kl_to_reference(mean=mu, ref_mean=ref, std=b["std"], reduction=reduction, units="mean_sq")
    exact = losses.kl_to_reference(mean=mu, ref_mean=ref, std=b["std"], reduction=reduction, units="exact_kl")
    want = ((b["mean"] - ref) ** 2).sum(1) / n
    torch.testing.assert_close(sq, want, rtol=1e-12, atol=0)
    torch.testing.assert_close(sq, 2 * std**2 * exact, rtol=1e-12, atol=0)
    (g_sq,) = torch.autograd.grad(sq.sum(), mu, retain_graph=True)
    (g_ex,) = torch.autograd.grad(exact.sum(), mu)
    torch.testing.assert_close(g_sq, 2 * (b["mean"] - ref) / n, rtol=1e-12, atol=1e-15)
    torch.testing.assert_close(g_ex, (b["mean"] - ref) / (std**2 * n), rtol=1e-12, atol=1e-15)


@given(rewards=st.lists(st.lists(st.floats(-5, 5), min_size=4, max_size=4), min_size=3, max_size=3),
       eps=st.sampled_from([1e-8, 1e-6]))
def test_bessel_and_population_advantage_std(rewards, eps):
    """Group scope, P = 3 × G = 4: "bessel" = (R − mean)/(statistics.stdev + eps), "population" =
    (R − mean)/max(statistics.pstdev, eps); the same for the global scope over all 12 rewards.
    Tolerance rel 1e-9, plus the centring's rounding (1e-13) over the divisor."""
    r = torch.tensor(rewards, dtype=torch.float64)
    for scope in ("group", "global"):
        got_b = advantages.group_advantages(r, std_scope=scope, eps=eps, std_estimator="bessel")
        got_p = advantages.group_advantages(r, std_scope=scope, eps=eps, std_estimator="population")
        flat = [v for row in rewards for v in row]
        for i, row in enumerate(rewards):
            pool = row if scope == "group" else flat
            for j, v in enumerate(row):
                centred = v - statistics.fmean(row)        # exact to ~1e-14 (rewards are at most 5)
                for got, denom in ((got_b, statistics.stdev(pool) + eps), (got_p, max(statistics.pstdev(pool), eps))):
                    assert float(got[i, j]) == pytest.approx(centred / denom, rel=1e-9, abs=1e-13 / denom)


def test_bessel_factor_at_group_size_16_and_gdpo():
    """With a non-degenerate group of 16 (eps negligible) Bessel advantages are √(15/16) = 0.968 of the
    population ones; GDPO applies the same estimator at both of its normalisations."""
    r = torch.linspace(0, 1, 16, dtype=torch.float64).reshape(1, 16) ** 2
    ratio = advantages.group_advantages(r, std_scope="group", eps=1e-12, std_estimator="bessel") / \
        advantages.group_advantages(r, std_scope="group", eps=1e-12, std_estimator="population")
    torch.testing.assert_close(ratio, torch.full_like(ratio, math.sqrt(15 / 16)), rtol=1e-10, atol=0)
    assert round(math.sqrt(15 / 16), 3) == 0.968
    multi = torch.stack([r, r.flip(1) * 3], dim=2).repeat(2, 1, 1)     # [P=2, G=16, K=2]
    got = advantages.gdpo_advantages(multi, eps=1e-12, std_estimator="bessel")
    per = (multi - multi.mean(1, keepdim=True)) / multi.std(1, keepdim=True, unbiased=True)
    s = per.sum(2)
    torch.testing.assert_close(got, (s - s.mean()) / s.std(unbiased=True), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("name", ["flow_dppo", "flow_dppo_symmetric", "flow_dppo_predictive"])
def test_kl_exactly_delta_is_kept_or_blocked_by_kl_tie(name):
    """Per-dim KL = 0.5²/2 = 0.125 exactly (|Δμ| = 0.5 per dim, σ = 1) with δ = 0.125, Â = 1 and log r > 0:
    kl_tie="keep" keeps it (Eq. 18's >), "block" blocks it (the published ≥); KL just above δ is blocked by both."""
    old_mean = torch.zeros(2, 4, dtype=torch.float64)
    mean = old_mean + 0.5
    x = torch.full((2, 4), 1.0, dtype=torch.float64)          # x − μ_old = 1 > x − μ_θ = 0.5 ⇒ log r > 0
    kw = dict(mean=mean, old_mean=old_mean, std=torch.tensor(1.0, dtype=torch.float64),
              advantages=torch.ones(2, dtype=torch.float64), sample=x)
    assert float(sde.log_ratio(x, mean, old_mean, kw["std"])[0]) > 0
    fn = losses.POLICY_LOSSES[name]
    loss_keep, s_keep = fn(**kw, delta=0.125, kl_tie="keep")
    loss_block, s_block = fn(**kw, delta=0.125, kl_tie="block")
    assert float(s_keep["kl_exceeded"]) == 0.0 and bool(torch.all(loss_keep != 0))
    assert float(s_block["kl_exceeded"]) == 1.0 and bool(torch.all(loss_block == 0))
    for tie in ("keep", "block"):
        loss_lo, _ = fn(**kw, delta=0.1249, kl_tie=tie)
        assert bool(torch.all(loss_lo == 0))
    with pytest.raises(ValueError, match="kl_tie"):
        fn(**kw, delta=0.125, kl_tie="maybe")


def test_presets_fill_unset_fields_and_explicit_fields_win(tmp_path):
    """conventions=paper is the default; conventions=official sets its six values; a field given explicitly
    overrides the preset; config.json of a run holds the resolved values, and loading it back is identical."""
    paper, official = make_config({}), make_config({}, ["conventions=official"])
    for cfg, preset in ((paper, "paper"), (official, "official")):
        assert cfg.conventions == preset
        assert {k: getattr(cfg, k) for k in CONVENTION_PRESETS[preset]} == CONVENTION_PRESETS[preset]
    assert CONVENTION_PRESETS["official"] == dict(sigma_grid="official", cps_logp="unnormalized",
                                                  beta_units="mean_sq", adv_std="bessel", adv_eps=1e-8,
                                                  kl_tie="block")
    mixed = make_config({"conventions": "official", "kl_tie": "keep"}, ["adv_eps=1e-6"])
    assert (mixed.kl_tie, mixed.adv_eps, mixed.adv_std) == ("keep", 1e-6, "bessel")
    again = make_config(official.to_dict())
    assert again == official
    with pytest.raises(ValueError, match="config.conventions"):
        make_config({}, ["conventions=unirl"])
