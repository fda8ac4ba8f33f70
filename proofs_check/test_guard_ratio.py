"""§3.2 / App. D (inferred form): GRPO-Guard's re-normalised ratio is exp(εᵀd/D) for per-dim log-probs.

log r_guard = (log π̄_θ − log π̄_old)·σ + mean_d(Δμ²)/(2σ) with π̄ the per-dim-mean log-density, which by
Eq. 13 equals εᵀd/D (the −KL bias removed, the noise scaled by σ).  Oracle: the noise ε that produced x'
in sde.step and d = μ_θ − μ_old, with samples from the Flow-SDE kernel at every step (σ = 1 included)
and per-sample σ.  r_guard is read from the loss with a clip window so wide it never binds and Â = −1
(then loss = r_guard).  Deterministic identity, rtol 1e-9.
"""
from __future__ import annotations

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from flowdppo import losses, sde


@given(seed=st.integers(0, 2**31 - 1), eta=st.floats(0.2, 1.0), num_steps=st.integers(2, 15),
       shift=st.floats(1.0, 4.0), scale=st.floats(1e-4, 0.3))
def test_guard_log_ratio_is_eps_dot_d_over_dims(seed, eta, num_steps, shift, scale):
    gen = torch.Generator().manual_seed(seed)
    grid = sde.shifted_sigmas(num_steps, shift)
    sig, sig_n = grid[:-1], grid[1:]
    b = sig.shape[0]
    x = torch.randn(b, 2, 5, generator=gen, dtype=torch.float64)
    v_old = torch.randn(b, 2, 5, generator=gen, dtype=torch.float64)
    v_new = v_old + scale * torch.randn(b, 2, 5, generator=gen, dtype=torch.float64)
    noise = torch.randn(b, 2, 5, generator=gen, dtype=torch.float64)
    old = sde.step("flow_sde", x=x, v=v_old, sigma=sig, sigma_next=sig_n, eta=eta, noise=noise)
    new = sde.step("flow_sde", x=x, v=v_new, sigma=sig, sigma_next=sig_n, eta=eta, x_next=old.x_next)
    loss, _ = losses.grpo_guard(logp=new.logp_per_dim, old_logp=old.logp_per_dim, mean=new.mean,
                                old_mean=old.mean, std=old.std, advantages=-torch.ones(b, dtype=torch.float64),
                                clip_range=1e12)
    d = new.mean - old.mean
    expected = (noise * d).flatten(1).sum(1) / 10
    torch.testing.assert_close(loss.log(), expected, rtol=1e-9, atol=1e-12)


def test_guard_refuses_summed_log_probs():
    z = torch.zeros(2, 3, dtype=torch.float64)
    with pytest.raises(ValueError, match="per_dim"):
        losses.grpo_guard(logp=z[:, 0], old_logp=z[:, 0], mean=z, old_mean=z, std=torch.tensor(1.0),
                          advantages=z[:, 0], logp_reduction="sum")
