"""docs/failure_modes.md: low-precision anchors, rollout/replay parity: the mask's KL must be computed from fp32 means; bf16 storage is noise at δ.

At SD3.5's D = 65 536 and a true per-dim KL of 1e-6 (= the published δ), rounding both means to bf16
(8 significant bits) adds ≈ D·Var(rounding error)/(2σ²) of spurious KL — the same order as δ — while fp32
storage is exact to < 1% of δ.  The numbers are a seeded deterministic computation (seed 0; values
~N(0, 1), σ ∈ {0.74, 0.53, 0.39} as in low-precision anchors), so the thresholds below are properties of rounding, not MC
tolerances: bf16 error ≥ 0.5·δ at every σ (measured 2–6×δ), fp32 error ≤ 1e-2·δ (measured ~1e-5·δ).

The anchor path keeps fp32: sde.step on fp32 (or bf16 storage) inputs returns fp32 means, std and
log-probs, fp64 stays fp64; the sampled x' is rounded to the storage dtype BEFORE it is scored, so
replaying the stored x' reproduces the rollout's log-prob bit for bit.
"""
from __future__ import annotations

import pytest
import torch

from flowdppo import divergence, sde

D = 65_536
DELTA = 1e-6


@pytest.mark.parametrize("std", [0.74, 0.53, 0.39])
def test_bf16_means_put_kl_noise_of_order_delta(std):
    gen = torch.Generator().manual_seed(0)
    old = torch.randn(1, D, generator=gen, dtype=torch.float32)
    direction = torch.randn(1, D, generator=gen, dtype=torch.float32)
    # ‖d‖²/(2σ²D) = δ exactly (up to fp32): the sample sits right at the published threshold
    new = old + direction * (2 * std**2 * D * DELTA) ** 0.5 / direction.norm()
    s = torch.tensor(std)
    exact = float(divergence.kl_per_dim(old.double(), new.double(), s.double()))
    assert exact == pytest.approx(DELTA, rel=1e-3)
    kl_fp32 = float(divergence.kl_per_dim(old, new, s))
    kl_bf16 = float(divergence.kl_per_dim(old.bfloat16().float(), new.bfloat16().float(), s))
    assert abs(kl_fp32 - exact) < 1e-2 * DELTA
    assert abs(kl_bf16 - exact) > 0.5 * DELTA, (kl_bf16, exact)


@pytest.mark.parametrize("kernel", sde.SDE_KERNELS)
def test_step_keeps_the_anchor_path_in_fp32(kernel):
    gen = torch.Generator().manual_seed(1)
    x32 = torch.randn(4, 3, 8, generator=gen)
    v32 = torch.randn(4, 3, 8, generator=gen)
    for x, v, want in ((x32, v32, torch.float32), (x32.bfloat16(), v32.bfloat16(), torch.float32),
                       (x32.double(), v32.double(), torch.float64)):
        out = sde.step(kernel, x=x, v=v, sigma=0.8, sigma_next=0.7, eta=0.7, generator=gen)
        assert out.mean.dtype == want and out.std.dtype == want
        assert out.logp_sum.dtype == want and out.logp_per_dim.dtype == want
        assert out.x_next.dtype == x.dtype                                   # stored in the storage dtype
        replay = sde.step(kernel, x=x, v=v, sigma=0.8, sigma_next=0.7, eta=0.7, x_next=out.x_next)
        assert torch.equal(replay.logp_sum, out.logp_sum)                    # rollout == replay, bitwise
        assert torch.equal(replay.mean, out.mean)
    # the fp32 mean is the fp64 mean rounded once, not a bf16 computation
    m32 = sde.transition_mean(kernel, x32, v32, 0.8, 0.7, 0.7)
    m64 = sde.transition_mean(kernel, x32.double(), v32.double(), 0.8, 0.7, 0.7)
    torch.testing.assert_close(m32.double(), m64, rtol=1e-6, atol=1e-6)
