"""Small MDPs on which the paper's Theorems 1 and 2 can be evaluated exactly (pure functions).

Two worlds, both with the structure of the paper's flow MDP (§2.1): a fixed horizon of H = K − 1
decisions, deterministic transitions, and a reward paid once at the end.

* `TabularMDP` — finite states and actions.  s_{k+1} = next_state[k, s_k, a_k]; with
  `flow_like=True` the action IS the next state (a_k = x_{t_{k+1}}), exactly the flow MDP.  Every
  quantity of Theorems 1–2 (J, L′, Δ, D_TV^max, E[Σ_k D_TV,k], both bounds) is computed by
  enumerating all trajectories.
* `LinearGaussianMDP` — x_{k+1} ~ N(A_k x_k + b_k, σ_k² I), x_0 ~ N(0, I), reward cos(wᵀx_H + c).
  J is closed form (affine-Gaussian moment propagation), so Monte-Carlo estimates of L′ − Δ can be
  checked against an exact J_θ − J_old.

Policies of the tabular world are arrays [H, S, A] of probabilities π_k(a | s).  Everything here
is numpy float64 except the Gaussian log-densities, which come from `flowdppo.sde.gaussian_logp`.
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np
import torch

from flowdppo import sde


# ----------------------------------------------------------------------------------------------------
# Tabular world
# ----------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class TabularMDP:
    """init [S] initial distribution; next_state [H, S, A] ints; reward [S] terminal reward R(s_H)."""
    init: np.ndarray
    next_state: np.ndarray
    reward: np.ndarray

    @property
    def horizon(self) -> int:
        """H = K − 1, the number of decisions."""
        return self.next_state.shape[0]

    @property
    def n_states(self) -> int:
        return self.next_state.shape[1]

    @property
    def n_actions(self) -> int:
        return self.next_state.shape[2]

    @property
    def xi(self) -> float:
        """ξ = max |R| (Theorem 2)."""
        return float(np.abs(self.reward).max())


def random_mdp(rng: np.random.Generator, *, n_states: int, n_actions: int, horizon: int,
               flow_like: bool = False, reward_scale: float = 1.0) -> TabularMDP:
    """A random MDP; flow_like=True forces n_actions = n_states and s_{k+1} = a_k (the flow MDP)."""
    init = rng.dirichlet(np.ones(n_states))
    if flow_like:
        n_actions = n_states
        next_state = np.broadcast_to(np.arange(n_states), (horizon, n_states, n_states)).copy()
    else:
        next_state = rng.integers(0, n_states, size=(horizon, n_states, n_actions))
    reward = reward_scale * rng.uniform(-1.0, 1.0, size=n_states)
    return TabularMDP(init=init, next_state=next_state, reward=reward)


def random_policy(rng: np.random.Generator, mdp: TabularMDP, *, concentration: float = 1.0,
                  floor: float = 1e-3) -> np.ndarray:
    """Full-support policy [H, S, A] (a Dirichlet draw mixed with `floor` of the uniform policy, so every
    likelihood ratio of Theorem 1 is finite)."""
    p = rng.dirichlet(concentration * np.ones(mdp.n_actions), size=(mdp.horizon, mdp.n_states))
    return (1.0 - floor) * p + floor / mdp.n_actions


def perturb_policy(rng: np.random.Generator, policy: np.ndarray, scale: float) -> np.ndarray:
    """softmax(log π + scale·N(0, 1)): a nearby policy; scale sets the per-step TV."""
    logits = np.log(policy) + scale * rng.standard_normal(policy.shape)
    logits -= logits.max(axis=-1, keepdims=True)
    p = np.exp(logits)
    return p / p.sum(axis=-1, keepdims=True)


def enumerate_trajectories(mdp: TabularMDP) -> tuple[np.ndarray, np.ndarray]:
    """All trajectories: states [T, H + 1] (s_0 … s_H) and actions [T, H], T = S·A^H."""
    states, actions = [], []
    for s0 in range(mdp.n_states):
        for acts in itertools.product(range(mdp.n_actions), repeat=mdp.horizon):
            s = [s0]
            for k, a in enumerate(acts):
                s.append(int(mdp.next_state[k, s[-1], a]))
            states.append(s)
            actions.append(acts)
    return np.asarray(states, dtype=np.int64).reshape(-1, mdp.horizon + 1), \
        np.asarray(actions, dtype=np.int64).reshape(-1, mdp.horizon)


def step_probs(policy: np.ndarray, states: np.ndarray, actions: np.ndarray) -> np.ndarray:
    """π_k(a_k | s_k) along each trajectory, [T, H]."""
    h = actions.shape[1]
    return policy[np.arange(h)[None, :], states[:, :h], actions]


def trajectory_probs(mdp: TabularMDP, policy: np.ndarray, states: np.ndarray, actions: np.ndarray) -> np.ndarray:
    """p_π(τ) = p(s_0)·Π_k π_k(a_k | s_k), [T]."""
    return mdp.init[states[:, 0]] * step_probs(policy, states, actions).prod(axis=1)


def J(mdp: TabularMDP, policy: np.ndarray) -> float:
    """J(π) = E_τ∼π[R(s_H)] by enumeration."""
    states, actions = enumerate_trajectories(mdp)
    return float((trajectory_probs(mdp, policy, states, actions) * mdp.reward[states[:, -1]]).sum())


def tv_per_state(old: np.ndarray, new: np.ndarray) -> np.ndarray:
    """D_TV(π_old(·|s) ‖ π_θ(·|s)) = ½ Σ_a |π_old − π_θ|, [H, S]."""
    return 0.5 * np.abs(old - new).sum(axis=-1)


def theorem_terms(mdp: TabularMDP, old: np.ndarray, new: np.ndarray) -> dict[str, float]:
    """Every quantity of Theorems 1–2 for the policy pair (π_old, π_θ), by enumeration.

    improvement  J(π_θ) − J(π_old)
    L_prime      Eq. 7: E_old[R Σ_k (ρ_k − 1)]
    Delta        Theorem 1's error: E_old[R Σ_k (ρ_k − 1)(1 − Π_{j>k} ρ_j)]
    tv_max       max over steps and over states visited by π_old of D_TV(π_old ‖ π_θ)
    tv_sum_mean  E_old[Σ_k D_TV(π_old(·|s_k) ‖ π_θ(·|s_k))]
    bound_quadratic  Eq. 8: L′ − 2ξ(K−1)(K−2)·tv_max²     (K − 1 = H)
    bound_linear     App. B.3: L′ − 4ξ·tv_sum_mean
    """
    states, actions = enumerate_trajectories(mdp)
    p_old = trajectory_probs(mdp, old, states, actions)
    rho = step_probs(new, states, actions) / step_probs(old, states, actions)       # [T, H]
    reward = mdp.reward[states[:, -1]]
    h = mdp.horizon
    # future products Π_{j>k} ρ_j, [T, H]; the empty product at k = H − 1 is 1
    future = np.ones_like(rho)
    for k in range(h - 2, -1, -1):
        future[:, k] = future[:, k + 1] * rho[:, k + 1]
    l_prime = float((p_old * reward * (rho - 1.0).sum(axis=1)).sum())
    delta = float((p_old * reward * ((rho - 1.0) * (1.0 - future)).sum(axis=1)).sum())
    tv = tv_per_state(old, new)                                                       # [H, S]
    tv_along = tv[np.arange(h)[None, :], states[:, :h]]                               # [T, H]
    visited = p_old > 0
    tv_max = float(tv_along[visited].max())
    tv_sum_mean = float((p_old * tv_along.sum(axis=1)).sum())
    xi = mdp.xi
    j_old = float((p_old * reward).sum())
    j_new = float((trajectory_probs(mdp, new, states, actions) * reward).sum())
    return {
        "J_old": j_old, "J_new": j_new, "improvement": j_new - j_old,
        "L_prime": l_prime, "Delta": delta, "xi": xi, "tv_max": tv_max, "tv_sum_mean": tv_sum_mean,
        "penalty_quadratic": 2.0 * xi * h * (h - 1) * tv_max**2,
        "penalty_linear": 4.0 * xi * tv_sum_mean,
        "bound_quadratic": l_prime - 2.0 * xi * h * (h - 1) * tv_max**2,
        "bound_linear": l_prime - 4.0 * xi * tv_sum_mean,
    }


def adversarial_example(horizon: int, p_old: float, p_new: float,
                        xi: float = 1.0) -> tuple[TabularMDP, np.ndarray, np.ndarray]:
    """Binary decisions with the reward chosen to make Theorem 1's error term Δ as large as possible.

    Both policies ignore the state and pick action 1 with probability p_old / p_new (so D_TV = |p_new − p_old|
    at every step); the state remembers the whole action history (s_{k+1} = 2·s_k + a_k, start 0), and the
    terminal reward is R = ξ·sgn(Q(τ)) with Q = Σ_k (ρ_k − 1)(1 − Π_{j>k} ρ_j), which gives Δ = ξ·E_old|Q|.

    * horizon 2, p_old = ½, p_new = ½ + tv attains Theorem 2 (Eq. 8) with EQUALITY: Q = (ρ_1 − 1)(1 − ρ_2),
      Δ = ξ·(2tv)² = 2ξ(K−1)(K−2)·tv².
    * horizon 2, p_old → 0, p_new → 1 gives Δ → ½ of App. B.3's linear penalty 4ξ·E[Σ_k D_TV,k], the
      largest fraction found (the last decision's TV enters the penalty but cannot enter Δ)."""
    if not (0.0 < p_old < 1.0 and 0.0 < p_new < 1.0):
        raise ValueError(f"p_old and p_new must lie in (0, 1), got {p_old}, {p_new}")
    n_states = 2**horizon
    states = np.arange(n_states)
    next_state = np.stack([np.stack([(2 * states) % n_states, (2 * states + 1) % n_states], axis=1)] * horizon)
    init = np.zeros(n_states)
    init[0] = 1.0
    old = np.broadcast_to(np.array([1.0 - p_old, p_old]), (horizon, n_states, 2)).copy()
    new = np.broadcast_to(np.array([1.0 - p_new, p_new]), (horizon, n_states, 2)).copy()
    rho_of = {0: (1.0 - p_new) / (1.0 - p_old), 1: p_new / p_old}
    reward = np.zeros(n_states)
    for actions in itertools.product((0, 1), repeat=horizon):
        rho = [rho_of[a] for a in actions]
        q = sum((rho[k] - 1.0) * (1.0 - float(np.prod(rho[k + 1:]))) for k in range(horizon))
        final = int("".join(map(str, actions)), 2)
        reward[final] = xi * float(np.sign(q))
    return TabularMDP(init=init, next_state=next_state, reward=reward), old, new


def tight_two_step_example(tv: float, xi: float = 1.0) -> tuple[TabularMDP, np.ndarray, np.ndarray]:
    """Theorem 2 attained with equality: two decisions, D_TV = tv at every state (0 < tv < ½),
    J_θ − J_old = L′ − 2ξ(K−1)(K−2)·tv² exactly (see `adversarial_example`)."""
    if not 0.0 < tv < 0.5:
        raise ValueError(f"tv must lie in (0, 0.5), got {tv}")
    return adversarial_example(2, 0.5, 0.5 + tv, xi)


# ----------------------------------------------------------------------------------------------------
# Linear-Gaussian world
# ----------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class LinearGaussianPolicy:
    """π_k(x' | x) = N(A_k x + b_k, σ_k² I): A [H, d, d], b [H, d], std [H] (float64 tensors)."""
    A: torch.Tensor
    b: torch.Tensor
    std: torch.Tensor

    @property
    def horizon(self) -> int:
        return self.A.shape[0]

    def mean(self, k: int, x: torch.Tensor) -> torch.Tensor:
        return x @ self.A[k].T + self.b[k]


@dataclass(frozen=True)
class CosineReward:
    """R(x) = cos(wᵀx + c): bounded (ξ = 1) and with a closed-form Gaussian expectation."""
    w: torch.Tensor
    c: float

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cos(x @ self.w + self.c)

    def expectation(self, mean: torch.Tensor, cov: torch.Tensor) -> float:
        """E[cos(wᵀx + c)] for x ~ N(mean, cov) = cos(wᵀm + c)·exp(−wᵀΣw/2)."""
        return float(torch.cos(self.w @ mean + self.c) * torch.exp(-0.5 * self.w @ cov @ self.w))


def random_linear_gaussian_policy(gen: torch.Generator, *, dim: int, horizon: int,
                                  std_range: tuple[float, float] = (0.3, 0.8)) -> LinearGaussianPolicy:
    A = torch.eye(dim, dtype=torch.float64) + 0.3 * torch.randn(horizon, dim, dim, generator=gen, dtype=torch.float64)
    b = 0.5 * torch.randn(horizon, dim, generator=gen, dtype=torch.float64)
    lo, hi = std_range
    std = lo + (hi - lo) * torch.rand(horizon, generator=gen, dtype=torch.float64)
    return LinearGaussianPolicy(A=A, b=b, std=std)


def perturb_linear_gaussian_policy(gen: torch.Generator, policy: LinearGaussianPolicy,
                                   scale: float) -> LinearGaussianPolicy:
    """Same std (the flow setting: π_θ and π_old share σ(t)); A and b moved by `scale`·N(0, 1)."""
    return LinearGaussianPolicy(
        A=policy.A + scale * torch.randn(policy.A.shape, generator=gen, dtype=torch.float64),
        b=policy.b + scale * torch.randn(policy.b.shape, generator=gen, dtype=torch.float64),
        std=policy.std.clone())


def linear_gaussian_J(policy: LinearGaussianPolicy, reward: CosineReward) -> float:
    """Exact J = E[R(x_H)] with x_0 ~ N(0, I): propagate (m, Σ) → (A m + b, A Σ Aᵀ + σ² I)."""
    d = policy.A.shape[1]
    m = torch.zeros(d, dtype=torch.float64)
    cov = torch.eye(d, dtype=torch.float64)
    for k in range(policy.horizon):
        m = policy.A[k] @ m + policy.b[k]
        cov = policy.A[k] @ cov @ policy.A[k].T + policy.std[k] ** 2 * torch.eye(d, dtype=torch.float64)
    return reward.expectation(m, cov)


def sample_linear_gaussian(gen: torch.Generator, old: LinearGaussianPolicy, new: LinearGaussianPolicy,
                           n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """n trajectories of π_old; returns (x_H [n, d], per-step ratios ρ_k = π_θ/π_old [n, H])."""
    d = old.A.shape[1]
    x = torch.randn(n, d, generator=gen, dtype=torch.float64)
    log_rho = []
    for k in range(old.horizon):
        std = old.std[k]
        mean_old, mean_new = old.mean(k, x), new.mean(k, x)
        x_next = mean_old + std * torch.randn(n, d, generator=gen, dtype=torch.float64)
        log_rho.append((sde.gaussian_logp(x_next, mean_new, std) - sde.gaussian_logp(x_next, mean_old, std)).sum(1))
        x = x_next
    return x, torch.stack(log_rho, dim=1).exp()


def surrogate_and_error_mc(reward_values: torch.Tensor, rho: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-trajectory terms of Theorem 1 under π_old: (R Σ_k (ρ_k − 1), R Σ_k (ρ_k − 1)(1 − Π_{j>k} ρ_j))."""
    future = torch.ones_like(rho)
    for k in range(rho.shape[1] - 2, -1, -1):
        future[:, k] = future[:, k + 1] * rho[:, k + 1]
    l_terms = reward_values * (rho - 1.0).sum(1)
    d_terms = reward_values * ((rho - 1.0) * (1.0 - future)).sum(1)
    return l_terms, d_terms
