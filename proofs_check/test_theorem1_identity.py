"""Theorem 1 (Eq. 7): J(π_θ) − J(π_old) = L′_old(π_θ) − Δ(π_old, π_θ), exactly.

L′ = E_old[R Σ_k (ρ_k − 1)] and Δ = E_old[R Σ_k (ρ_k − 1)(1 − Π_{j>k} ρ_j)] over the K − 1 decisions of a
finite-horizon MDP with deterministic transitions and a terminal reward (the paper's flow MDP, §2.1).

* Tabular MDPs: every quantity by enumerating all S·A^H trajectories (analysis.theory.toy_mdp); J is also
  computed by an independent backward recursion here.  Exact up to float64 rounding (atol 1e-12).
* A linear-Gaussian flow MDP, π(x'|x) = N(A_k x + b_k, σ_k² I), reward cos(wᵀx_H + c): J_θ − J_old is
  closed form (Gaussian moment propagation); L′ − Δ is estimated from π_old trajectories with ratios
  from sde.gaussian_logp.  6 sample SEs (N = 40 000), plus the per-trajectory telescoping identity
  Σ_k (ρ_k − 1)Π_{j>k}ρ_j = Πρ − 1 at rtol 1e-9.  2 MC comparisons × 8 ci examples → false alarm ≤ 3.2e-8.
"""
from __future__ import annotations

import numpy as np
import torch
from hypothesis import given
from hypothesis import strategies as st

from analysis.theory import toy_mdp
from proofs_check._common import assert_within_se, examples, make_policy_pair, mdp_params

def value_by_backward_recursion(mdp: toy_mdp.TabularMDP, policy: np.ndarray) -> float:
    """Independent oracle for J: V_H(s) = R(s); V_k(s) = Σ_a π_k(a|s)·V_{k+1}(next(k, s, a))."""
    value = mdp.reward.astype(np.float64).copy()
    for k in range(mdp.horizon - 1, -1, -1):
        value = np.array([sum(policy[k, s, a] * value[mdp.next_state[k, s, a]] for a in range(mdp.n_actions))
                          for s in range(mdp.n_states)])
    return float(mdp.init @ value)


@examples(200)
@given(params=mdp_params)
def test_theorem1_exact_on_tabular_mdps(params):
    """J(π_θ) − J(π_old) = L′ − Δ by enumeration, for random MDPs and random policy pairs (tiny to large
    changes, flow-like and general deterministic transitions); J also matches backward recursion."""
    mdp, old, new = make_policy_pair(params)
    t = toy_mdp.theorem_terms(mdp, old, new)
    assert abs(t["J_old"] - value_by_backward_recursion(mdp, old)) < 1e-12
    assert abs(t["J_new"] - value_by_backward_recursion(mdp, new)) < 1e-12
    assert abs(t["improvement"] - (t["L_prime"] - t["Delta"])) < 1e-12, t
    if mdp.horizon == 1:                       # one decision: no future product, Δ = 0 and L′ is exact
        assert abs(t["Delta"]) < 1e-15


@examples(8)
@given(seed=st.integers(0, 2**31 - 1), horizon=st.integers(1, 4), dim=st.integers(1, 3),
       scale=st.floats(0.005, 0.06))
def test_theorem1_by_monte_carlo_on_a_linear_gaussian_flow_mdp(seed, horizon, dim, scale):
    """Exact J_θ − J_old (closed form) = E_old[R Σ_k(ρ_k−1)] − E_old[R Σ_k(ρ_k−1)(1−Π_{j>k}ρ_j)] (MC, 6 SE),
    and E_old[R] = J_old (MC, 6 SE)."""
    n = 40_000
    gen = torch.Generator().manual_seed(seed)
    old = toy_mdp.random_linear_gaussian_policy(gen, dim=dim, horizon=horizon)
    new = toy_mdp.perturb_linear_gaussian_policy(gen, old, scale)
    reward = toy_mdp.CosineReward(w=torch.randn(dim, generator=gen, dtype=torch.float64), c=0.3)
    x_final, rho = toy_mdp.sample_linear_gaussian(gen, old, new, n)
    r = reward(x_final)
    l_terms, d_terms = toy_mdp.surrogate_and_error_mc(r, rho)
    torch.testing.assert_close(l_terms - d_terms, r * (rho.prod(1) - 1.0), rtol=1e-9, atol=1e-12)
    exact_gain = toy_mdp.linear_gaussian_J(new, reward) - toy_mdp.linear_gaussian_J(old, reward)
    est = l_terms - d_terms
    assert_within_se(est.mean(), exact_gain, est.std() / n**0.5, what="L′ − Δ vs J_θ − J_old")
    assert_within_se(r.mean(), toy_mdp.linear_gaussian_J(old, reward), r.std() / n**0.5, what="E_old[R] vs J_old")
