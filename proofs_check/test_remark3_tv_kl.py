"""Eq. 10, Remark 3 and Pinsker for two Gaussians with equal covariance σ²I.

  (Eq. 10)    D_TV = 2Φ(‖Δμ‖/(2σ)) − 1, and from the KL: D_TV = 2Φ(√(KL/2)) − 1
  (Remark 3)  D_TV ≤ δ_TV  ⇔  KL ≤ 2[Φ⁻¹((1 + δ_TV)/2)]²   (and the inverse map)
  (Pinsker)   D_TV ≤ √(KL/2)

Oracle for Eq. 10: TV is invariant under the isometry that maps Δμ onto the first axis, where the two
laws differ only in that coordinate, so D_TV = ½∫|φ_σ(t) − φ_σ(t − ‖Δμ‖)|dt — integrated numerically
with scipy.integrate.quad over scipy.stats.norm densities (abs tolerance 1e-9 on the integral; the
test allows 1e-7).  The other relations are exact identities checked at 1e-9.
"""
from __future__ import annotations

import math

import pytest
import torch
from hypothesis import assume, given
from hypothesis import strategies as st
from scipy import integrate, stats

from flowdppo import divergence


def tv_by_quadrature(distance: float, std: float) -> float:
    """½∫|N(t; 0, σ²) − N(t; ‖Δμ‖, σ²)| dt by adaptive quadrature (the 1-D projection along Δμ)."""
    f = lambda t: abs(stats.norm.pdf(t, 0.0, std) - stats.norm.pdf(t, distance, std))  # noqa: E731
    lo, hi = -12.0 * std, distance + 12.0 * std
    mid = distance / 2.0                                     # the densities cross here: split the integral
    a, _ = integrate.quad(f, lo, mid, epsabs=1e-11, epsrel=1e-11, limit=200)
    b, _ = integrate.quad(f, mid, hi, epsabs=1e-11, epsrel=1e-11, limit=200)
    return 0.5 * (a + b)


@given(seed=st.integers(0, 2**31 - 1), dims=st.integers(1, 50), std=st.floats(0.01, 3.0),
       log10_scale=st.floats(-4.0, 1.0))
def test_eq10_equals_numeric_tv(seed, dims, std, log10_scale):
    """Eq. 10 (gaussian_tv from the means, and tv_from_kl from Eq. 14's KL) = quadrature TV."""
    gen = torch.Generator().manual_seed(seed)
    mean_p = torch.randn(1, dims, generator=gen, dtype=torch.float64)
    mean_q = mean_p + 10.0**log10_scale * std * torch.randn(1, dims, generator=gen, dtype=torch.float64)
    s = torch.tensor(std, dtype=torch.float64)
    oracle = tv_by_quadrature(float((mean_p - mean_q).norm()), std)
    tv = float(divergence.gaussian_tv(mean_p, mean_q, s)[0])
    tv_kl = float(divergence.tv_from_kl(divergence.kl_sum(mean_p, mean_q, s))[0])
    assert tv == pytest.approx(oracle, abs=1e-7)
    assert tv_kl == pytest.approx(tv, rel=1e-9, abs=1e-12)


@given(delta_tv=st.floats(1e-6, 0.999))
def test_remark3_threshold_maps_are_inverse(delta_tv):
    """kl_threshold_from_tv and tv_threshold_from_kl invert each other; both match the closed form."""
    delta_kl = divergence.kl_threshold_from_tv(delta_tv)
    z = stats.norm.ppf((1.0 + delta_tv) / 2.0)
    assert delta_kl == pytest.approx(2.0 * z * z, rel=1e-9)
    assert divergence.tv_threshold_from_kl(delta_kl) == pytest.approx(delta_tv, rel=1e-9, abs=1e-12)


@given(seed=st.integers(0, 2**31 - 1), dims=st.integers(1, 30), std=st.floats(0.05, 2.0),
       log10_scale=st.floats(-3.0, 0.5), delta_tv=st.floats(0.001, 0.99))
def test_remark3_tv_ball_equals_kl_ball(seed, dims, std, log10_scale, delta_tv):
    """For a random Gaussian pair: D_TV ≤ δ_TV ⇔ KL ≤ 2[Φ⁻¹((1+δ_TV)/2)]² (pairs within 1e-9 of the boundary
    are skipped: the two sides are then equal up to rounding)."""
    gen = torch.Generator().manual_seed(seed)
    mean_p = torch.randn(1, dims, generator=gen, dtype=torch.float64)
    mean_q = mean_p + 10.0**log10_scale * std * torch.randn(1, dims, generator=gen, dtype=torch.float64)
    s = torch.tensor(std, dtype=torch.float64)
    tv = float(divergence.gaussian_tv(mean_p, mean_q, s)[0])
    kl = float(divergence.kl_sum(mean_p, mean_q, s)[0])
    delta_kl = divergence.kl_threshold_from_tv(delta_tv)
    assume(abs(tv - delta_tv) > 1e-9 and abs(kl - delta_kl) > 1e-9 * max(1.0, delta_kl))
    assert (tv <= delta_tv) == (kl <= delta_kl)


@given(kl=st.floats(0.0, 50.0))
def test_pinsker_for_equal_covariance_gaussians(kl):
    """Pinsker: Eq. 10's TV ≤ √(KL/2); for equal-covariance Gaussians the ratio TV/√(KL/2) → 2φ(0) = √(2/π)
    as KL → 0 (checked to 1e-3), so Pinsker is loose by ≈ 20% even for small steps."""
    k = torch.tensor([kl], dtype=torch.float64)
    tv = float(divergence.tv_from_kl(k)[0])
    bound = float(divergence.pinsker_tv_bound(k)[0])
    assert tv <= bound + 1e-15
    assert divergence.pinsker_tv_bound(kl) == pytest.approx(bound, rel=1e-12)   # float path == tensor path
    small = torch.tensor([1e-8], dtype=torch.float64)
    ratio = float(divergence.tv_from_kl(small)[0] / divergence.pinsker_tv_bound(small)[0])
    assert ratio == pytest.approx(math.sqrt(2.0 / math.pi), rel=1e-3)


def test_remark3_pinsker_radius_of_a_kl_trust_region():
    """Remark 3: per-step KL ≤ δ ⇒ D_TV^max ≤ √(δ/2) (the LaTeX reading; the plain dump's δ/2 is a typo)."""
    for delta in (1e-7, 1e-6, 1e-3, 0.1):
        assert divergence.tv_threshold_from_kl(delta) <= math.sqrt(delta / 2.0)
        assert divergence.tv_threshold_from_kl(delta) > delta / 2.0
