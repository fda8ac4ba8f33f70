"""Shared helpers for the proof checks: example budgets, Monte-Carlo tolerances, σ grids.

Statistical convention used by every Monte-Carlo check in this folder: an estimate is compared with
its exact value at Z_TOL = 6 standard errors.  For a Gaussian (or CLT-Gaussian) statistic the two-sided
false-alarm probability of one comparison is 2·(1 − Φ(6)) ≈ 2.0e-9; a test that makes m comparisons
per example and n examples has a false-alarm rate ≤ m·n·2e-9 (stated in each test).  Under the "ci"
hypothesis profile the examples and the seeds are derandomized, so a run is exactly reproducible.
"""
from __future__ import annotations

import math

import numpy as np
import torch
from hypothesis import settings
from hypothesis import strategies as st

from analysis.theory import toy_mdp
from flowdppo import sde

Z_TOL = 6.0
FALSE_ALARM_PER_CHECK = math.erfc(Z_TOL / math.sqrt(2.0))  # ≈ 1.97e-9


def examples(n_ci: int):
    """hypothesis settings with n_ci examples under the "ci" profile, scaled with the active profile.

    Expensive Monte-Carlo properties use fewer examples than the profile default; "dev" multiplies them."""
    scale = settings.default.max_examples / settings.get_profile("ci").max_examples
    return settings(max_examples=max(1, round(n_ci * scale)))


def assert_within_se(estimate, exact, se, *, what: str, z: float = Z_TOL) -> None:
    """|estimate − exact| ≤ z·se, element-wise; the message names the quantity and the z-score."""
    estimate, exact, se = (torch.as_tensor(t, dtype=torch.float64) for t in (estimate, exact, se))
    zscore = (estimate - exact).abs() / se
    worst = int(torch.argmax(zscore.reshape(-1)))
    assert bool(torch.all(zscore <= z)), (
        f"{what}: |estimate − exact| = {float((estimate - exact).reshape(-1)[worst]):.3e} is "
        f"{float(zscore.reshape(-1)[worst]):.2f} standard errors (se={float(se.reshape(-1)[worst]):.3e}); "
        f"tolerance {z} se")


def sde_step_pairs(kernel: str, num_steps: int, shift: float) -> list[tuple[float, float]]:
    """(σ, σ_next) for every step of the shifted grid at which `kernel` has a positive std.

    Always starts at σ = 1 (step 0, where the Flow-SDE σ = 1 rule applies).  CPS has std 0 at the
    last step (σ_next = 0), which is an ODE step; Flow-SDE and Dance-SDE keep a positive std there."""
    grid = sde.shifted_sigmas(num_steps, shift).tolist()
    pairs = []
    for s, sn in zip(grid[:-1], grid[1:]):
        if float(sde.transition_std(kernel, s, sn, 0.5)) > 0:
            pairs.append((s, sn))
    assert pairs[0][0] == 1.0
    return pairs


# Random tabular MDPs and policy pairs for Theorems 1–2 (per-step TV from 0 to ≈ 1).
mdp_params = st.fixed_dictionaries({
    "seed": st.integers(0, 2**31 - 1), "n_states": st.integers(1, 4), "n_actions": st.integers(1, 3),
    "horizon": st.integers(1, 5), "flow_like": st.booleans(), "scale": st.floats(0.0, 4.0),
    "concentration": st.sampled_from([0.3, 1.0, 5.0]),
})


def make_policy_pair(p):
    """(mdp, π_old, π_θ) from a draw of `mdp_params`."""
    rng = np.random.default_rng(p["seed"])
    n_states = max(p["n_states"], 2) if p["flow_like"] else p["n_states"]
    mdp = toy_mdp.random_mdp(rng, n_states=n_states, n_actions=p["n_actions"], horizon=p["horizon"],
                             flow_like=p["flow_like"])
    old = toy_mdp.random_policy(rng, mdp, concentration=p["concentration"])
    new = toy_mdp.perturb_policy(rng, old, p["scale"])
    return mdp, old, new


# Loss inputs with controlled Â, log r and KL (mask / clip / guard checks).
def make_batch(adv, log_ratio, mean_shift, *, std=1.0, dims=4, seed=0):
    """Inputs with a chosen Â, log r (logp is a leaf, so gradients are taken w.r.t. it) and per-dim mean
    shift |Δμ| (per-dim KL = shift²/(2σ²), exactly representable for the shifts used below)."""
    gen = torch.Generator().manual_seed(seed)
    adv = torch.as_tensor(adv, dtype=torch.float64)
    b = adv.shape[0]
    old_mean = torch.randn(b, dims, generator=gen, dtype=torch.float64)
    shift = torch.as_tensor(mean_shift, dtype=torch.float64).reshape(b, 1)
    sign = torch.where(torch.rand(b, dims, generator=gen) < 0.5, -1.0, 1.0).double()
    mean = old_mean + shift * sign
    old_logp = -3.0 * torch.rand(b, generator=gen, dtype=torch.float64)
    logp = (old_logp + torch.as_tensor(log_ratio, dtype=torch.float64)).detach().requires_grad_(True)
    sample = old_mean + std * torch.randn(b, dims, generator=gen, dtype=torch.float64)
    return dict(logp=logp, old_logp=old_logp, mean=mean, old_mean=old_mean,
                std=torch.tensor(std, dtype=torch.float64), advantages=adv, sample=sample)


def run(fn, batch, **kw):
    loss, stats = fn(**batch, **kw)
    batch["logp"].grad = None
    loss.sum().backward()
    return loss.detach(), stats, batch["logp"].grad.clone()


@st.composite
def random_batches(draw):
    b = draw(st.integers(1, 24))
    adv = draw(st.lists(st.one_of(st.just(0.0), st.floats(-5.0, 5.0)), min_size=b, max_size=b))
    lr = draw(st.lists(st.one_of(st.just(0.0), st.floats(-0.3, 0.3), st.sampled_from([-1e4, -50.0, 50.0, 1e4])),
                       min_size=b, max_size=b))
    shift = draw(st.lists(st.floats(0.0, 0.05), min_size=b, max_size=b))
    std = draw(st.floats(0.05, 1.0))
    return make_batch(adv, lr, shift, std=std, seed=draw(st.integers(0, 2**31 - 1)))


def delta_strategy():
    return st.floats(1e-8, 1e-2)
