"""η = 0 limits (Eq. 2 and Eq. 3 at zero noise) and the "ode" kernel equal diffusers' Euler step.

Oracle: diffusers' FlowMatchEulerDiscreteScheduler.step (prev = sample + (σ_next − σ)·model_output), driven
through set_timesteps(sigmas=…) on the SAME σ grid (the scheduler appends the terminal σ = 0 itself), for
every step of a multi-step trajectory of a fixed nonlinear velocity field.  Also: sde.shifted_sigmas equals the
scheduler's own static shift σ ↦ sσ/(1 + (s − 1)σ).  The scheduler computes in float32, so the
comparison is in float32 at rtol = atol = 1e-6 (it agrees to a few ulps).
"""
from __future__ import annotations

import torch
from diffusers import FlowMatchEulerDiscreteScheduler
from hypothesis import given
from hypothesis import strategies as st

from flowdppo import sde

TOL = 1e-6


def _velocity(x: torch.Tensor, sigma: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """A fixed nonlinear stand-in for v_θ(x, σ), float32."""
    return torch.tanh(x @ w) * (1.0 + sigma) - 0.5 * x


def _diffusers_trajectory(sigmas_without_zero, x, w):
    scheduler = FlowMatchEulerDiscreteScheduler(shift=1.0)
    scheduler.set_timesteps(sigmas=sigmas_without_zero)
    out = [x]
    for i, t in enumerate(scheduler.timesteps):
        x = scheduler.step(_velocity(x, scheduler.sigmas[i], w), t, x).prev_sample
        out.append(x)
    return scheduler.sigmas, out


@given(seed=st.integers(0, 2**31 - 1), num_steps=st.integers(1, 30), shift=st.floats(1.0, 6.0))
def test_ode_and_zero_noise_kernels_equal_diffusers_euler(seed, num_steps, shift):
    """Every step, from the scheduler's own state: ode, flow_sde(η=0), dance_sde(η=0) and cps(η=0) means equal
    the scheduler's Euler update, and the η = 0 stds are exactly 0.  The ode, flow_sde and dance_sde chains
    also follow the scheduler's whole trajectory on their own (CPS(η=0) is the same map written as
    (1−σ')x̂0 + σ'x̂1, so it agrees per step to a few float32 ulps but drifts by rounding over a long chain)."""
    gen = torch.Generator().manual_seed(seed)
    grid = sde.shifted_sigmas(num_steps, shift)
    x0 = torch.randn(3, 6, generator=gen)
    w = torch.randn(6, 6, generator=gen) / 6**0.5
    sched_sigmas, reference = _diffusers_trajectory(grid[:-1].tolist(), x0, w)
    assert sched_sigmas.shape[0] == num_steps + 1 and float(sched_sigmas[-1]) == 0.0
    torch.testing.assert_close(sched_sigmas, grid.float(), rtol=0.0, atol=1e-7)

    def kernel_step(kernel, x, i):
        sigma, sigma_next = sched_sigmas[i], sched_sigmas[i + 1]          # the scheduler's own float32 grid
        v = _velocity(x, sigma, w)
        if kernel == "ode":
            return sde.step("ode", x=x, v=v, sigma=sigma, sigma_next=sigma_next, eta=0.0).x_next
        assert float(sde.transition_std(kernel, sigma, sigma_next, 0.0)) == 0.0
        return sde.transition_mean(kernel, x, v, sigma, sigma_next, 0.0)

    for kernel in sde.KERNELS:
        x = x0
        for i in range(num_steps):
            one = kernel_step(kernel, reference[i], i)
            assert one.dtype == torch.float32
            torch.testing.assert_close(one, reference[i + 1], rtol=TOL, atol=TOL, msg=f"{kernel} step {i}")
            if kernel != "cps":
                x = kernel_step(kernel, x, i)
                torch.testing.assert_close(x, reference[i + 1], rtol=TOL, atol=TOL, msg=f"{kernel} chain {i}")


@given(num_steps=st.integers(1, 50), shift=st.floats(1.0, 8.0))
def test_shifted_sigmas_equal_the_schedulers_static_shift(num_steps, shift):
    """sde.shifted_sigmas(K, s) = the scheduler's shift applied to linspace(1, 0, K + 1) (float32 grid)."""
    scheduler = FlowMatchEulerDiscreteScheduler(shift=shift)
    scheduler.set_timesteps(sigmas=torch.linspace(1.0, 0.0, num_steps + 1)[:-1].tolist())
    torch.testing.assert_close(sde.shifted_sigmas(num_steps, shift).float(), scheduler.sigmas, rtol=1e-6, atol=1e-7)
