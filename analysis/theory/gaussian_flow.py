"""Rectified flow on Gaussian data: the exact velocity field and exact marginals of every kernel (pure).

Data x0 ~ N(m, diag(s²)) and x_σ = (1 − σ)x0 + σε.  The exact (posterior-mean) velocity
E[ε − x0 | x_σ = x] is affine in x, so each sde kernel step is affine-Gaussian and the marginal after
every step can be propagated exactly; `integrate_mc` samples the same chain through `sde.step`.
Used by proofs_check/test_marginals_gaussian_data.py and analysis/theory_tables.py.  Point-mass data is
s² = 0 (then the field is the exact per-sample velocity (x − x0)/σ).
"""
from __future__ import annotations

import torch

from flowdppo import sde


def posterior_velocity(x: torch.Tensor, sigma: float, m: torch.Tensor, s2: torch.Tensor) -> torch.Tensor:
    """E[ε − x0 | x_σ = x] for x0 ~ N(m, s²) per dim: with V = (1−σ)²s² + σ²,
    E[x0|x] = m + (1−σ)s²/V·(x − (1−σ)m) and E[ε|x] = σ/V·(x − (1−σ)m)."""
    var = (1.0 - sigma) ** 2 * s2 + sigma**2
    return (sigma - (1.0 - sigma) * s2) / var * (x - (1.0 - sigma) * m) - m


def propagate_exact(kernel: str, eta: float, m, s2, num_steps: int, *, init=(0.0, 1.0), grid=None):
    """Exact (mean, var) per dim after each step, starting from N(init) at grid[0] (σ = 1 unless a grid
    is given); list of len(grid) pairs."""
    grid = sde.shifted_sigmas(num_steps) if grid is None else grid
    mean, var = torch.zeros_like(m) + init[0], torch.zeros_like(m) + init[1]
    out = [(mean, var)]
    zero, one = torch.zeros(1, m.shape[0], dtype=m.dtype), torch.ones(1, m.shape[0], dtype=m.dtype)
    for sigma, sigma_next in zip(grid[:-1].tolist(), grid[1:].tolist()):
        c = sde.transition_mean(kernel, zero, posterior_velocity(zero, sigma, m, s2), sigma, sigma_next, eta)[0]
        a = sde.transition_mean(kernel, one, posterior_velocity(one, sigma, m, s2), sigma, sigma_next, eta)[0] - c
        std = sde.transition_std(kernel, sigma, sigma_next, eta)
        mean, var = a * mean + c, a**2 * var + std**2
        out.append((mean, var))
    return out


def integrate_mc(gen, kernel: str, eta: float, m, s2, num_steps: int, n: int, *, grid=None):
    """Samples after each step drawn through sde.step (a zero-std step is its deterministic mean); K + 1 tensors."""
    grid = sde.shifted_sigmas(num_steps) if grid is None else grid
    x = torch.randn(n, m.shape[0], generator=gen, dtype=torch.float64)
    out = [x]
    for sigma, sigma_next in zip(grid[:-1].tolist(), grid[1:].tolist()):
        v = posterior_velocity(x, sigma, m, s2)
        if kernel == "ode" or float(sde.transition_std(kernel, sigma, sigma_next, eta)) > 0.0:
            x = sde.step(kernel, x=x, v=v, sigma=sigma, sigma_next=sigma_next, eta=eta, generator=gen).x_next
        else:  # CPS's last step (σ' = 0) has std 0: it is deterministic
            x = sde.transition_mean(kernel, x, v, sigma, sigma_next, eta)
        out.append(x)
    return out
