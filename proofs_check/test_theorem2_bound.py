"""Theorem 2 (Eq. 8) and the linear bound of App. B.3, on random tabular MDPs (exact enumeration).

  J_θ − J_old ≥ L′ − 2ξ(K−1)(K−2)·(D_TV^max)²          (Eq. 8, K − 1 = H decisions, ξ = max|R|)
  J_θ − J_old ≥ L′ − 4ξ·E_old[Σ_k D_TV,k]               (App. B.3)
Both follow from |Δ| ≤ penalty, which is checked on both sides.  Exact arithmetic up to 1e-12.

The quadratic constant is sharp: `analysis.theory.toy_mdp.adversarial_example` attains Eq. 8 with equality
(H = 2), so a bound with a smaller constant (a dropped 2, (K−1)(K−2)/2, …) fails here.  The linear
bound is not sharp: the largest |Δ| found is 0.499 of 4ξ·E[Σ_k D_TV,k] (random MDPs reach 0.41), so its
validity check alone could not tell 4ξ from 2ξ; its constant is pinned by the closed-form values on the
adversarial example instead.  The chain of
Remark 3 / Pinsker is also checked: per-step KL ≤ δ ⇒ J_θ − J_old ≥ L′ − ξ(K−1)(K−2)·δ.
"""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from analysis.theory import toy_mdp
from flowdppo import divergence
from proofs_check._common import examples, make_policy_pair, mdp_params

ATOL = 1e-12


@examples(200)
@given(params=mdp_params)
def test_theorem2_and_linear_bound_never_violated(params):
    """For random MDPs and policy pairs (per-step TV from 0 to ≈ 1): both lower bounds hold, and |Δ| ≤ each
    penalty (the proof's statement, which also gives the matching upper bounds)."""
    mdp, old, new = make_policy_pair(params)
    t = toy_mdp.theorem_terms(mdp, old, new)
    assert t["improvement"] >= t["bound_quadratic"] - ATOL, t
    assert t["improvement"] >= t["bound_linear"] - ATOL, t
    assert abs(t["Delta"]) <= t["penalty_quadratic"] + ATOL, t
    assert abs(t["Delta"]) <= t["penalty_linear"] + ATOL, t


@pytest.mark.parametrize("tv", [0.01, 0.1, 0.25, 0.45])
@pytest.mark.parametrize("xi", [0.5, 1.0, 3.0])
def test_theorem2_is_attained_with_equality(tv, xi):
    """On the two-decision example J_θ − J_old = L′ − 2ξ(K−1)(K−2)·tv² exactly: the constant cannot shrink."""
    mdp, old, new = toy_mdp.adversarial_example(2, 0.5, 0.5 + tv, xi)
    t = toy_mdp.theorem_terms(mdp, old, new)
    assert t["tv_max"] == pytest.approx(tv, rel=1e-12)
    assert t["xi"] == pytest.approx(xi, rel=1e-12)
    assert t["improvement"] == pytest.approx(t["bound_quadratic"], rel=1e-12, abs=1e-15)
    assert t["penalty_quadratic"] == pytest.approx(4 * xi * tv**2, rel=1e-12)


@given(params=mdp_params, log10_delta=st.floats(-6.0, 0.0))
def test_kl_trust_region_implies_the_bound(params, log10_delta):
    """Remark 3 + Pinsker: if every per-step KL(π_old ‖ π_θ) ≤ δ then D_TV^max ≤ √(δ/2) and
    J_θ − J_old ≥ L′ − ξ(K−1)(K−2)·δ.  The policy change is shrunk (mixture toward π_old) until it is
    inside the KL ball, then the bound is checked."""
    mdp, old, new = make_policy_pair(params)
    delta = 10.0**log10_delta

    def max_kl(p):   # KL ≥ 0; clip the −1e-17 that rounding gives for p = old
        return max(0.0, float((old * (np.log(old) - np.log(p))).sum(-1).max()))

    lam = 1.0
    while max_kl((1 - lam) * old + lam * new) > delta and lam > 1e-12:
        lam /= 2
    new = (1 - lam) * old + lam * new
    t = toy_mdp.theorem_terms(mdp, old, new)
    assert t["tv_max"] <= float(divergence.pinsker_tv_bound(max_kl(new))) + ATOL
    h = mdp.horizon
    assert t["improvement"] >= t["L_prime"] - t["xi"] * h * (h - 1) * delta - ATOL


@pytest.mark.parametrize("p_old,p_new", [(0.001, 0.999), (0.5, 0.9), (0.3, 0.2)])
def test_linear_bound_on_the_adversarial_example(p_old, p_new):
    """App. B.3 on the two-decision adversarial example, in closed form: with TV = |p_new − p_old| at every
    step, Δ = ξ·E|ρ_1 − 1|·E|1 − ρ_2| = 4ξ·TV² and the linear penalty is 4ξ·E[Σ_k D_TV,k] = 8ξ·TV, so
    |Δ| / penalty = TV/2 (0.499 at the extreme): the bound holds, pinned to its exact value (which also
    pins the constant 4ξ), and no example has been found with |Δ| above half the penalty."""
    xi = 1.5
    mdp, old, new = toy_mdp.adversarial_example(2, p_old, p_new, xi)
    t = toy_mdp.theorem_terms(mdp, old, new)
    tv = abs(p_new - p_old)
    assert t["improvement"] >= t["bound_linear"] - ATOL
    assert t["Delta"] == pytest.approx(4 * xi * tv**2, rel=1e-9)
    assert t["penalty_linear"] == pytest.approx(8 * xi * tv, rel=1e-9)


def test_linear_bound_beats_quadratic_for_large_changes():
    """App. B.3's remark: the linear penalty is the smaller one for large updates on long horizons."""
    rng = np.random.default_rng(0)
    mdp = toy_mdp.random_mdp(rng, n_states=3, n_actions=3, horizon=6)
    old = toy_mdp.random_policy(rng, mdp)
    t_small = toy_mdp.theorem_terms(mdp, old, toy_mdp.perturb_policy(np.random.default_rng(1), old, 0.01))
    t_large = toy_mdp.theorem_terms(mdp, old, toy_mdp.perturb_policy(np.random.default_rng(1), old, 3.0))
    assert t_small["penalty_quadratic"] < t_small["penalty_linear"]
    assert t_large["penalty_linear"] < t_large["penalty_quadratic"]
