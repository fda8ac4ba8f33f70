"""Exact divergences between two per-step Gaussian policies with equal covariance std²·I.

Reductions are explicit (STYLE property 3):
  * "sum"     — the paper's Eq. 14: ‖Δμ‖²/(2σ²), summed over the D latent dims;
  * "per_dim" — the same divided by D: the convention of every published implementation, and the
                scale on which the published thresholds δ = 1e-7 / 1e-6 / 1e-5 are stated.
TV and the Remark-3 conversions are functions of the full-norm (sum) KL only.

No transition formula lives here: velocity-space forms take their coefficients from `flowdppo.sde`.
"""
from __future__ import annotations

import math
from typing import Literal

import torch
from torch import Tensor

from . import sde

Reduction = Literal["sum", "per_dim"]
REDUCTIONS: tuple[str, ...] = ("sum", "per_dim")


_reduce = sde.reduce_dims   # [B, *latent] → [B] by sum or per-dim mean


def gaussian_kl(mean_p: Tensor, mean_q: Tensor, std: Tensor, reduction: Reduction = "sum") -> Tensor:
    """Eq. 14: KL(N(μ_p, σ²I) ‖ N(μ_q, σ²I)) = ‖μ_p − μ_q‖²/(2σ²), shape [B].

    Symmetric in the means (App. C.1, Eq. 20).  std broadcasts against the means ([B, 1, …] or scalar).
    Differentiable in both means; callers that use it only as a gate detach it themselves.
    """
    diff = mean_p - mean_q
    return _reduce(diff**2 / (2.0 * std.to(diff.dtype) ** 2), reduction)


def squared_distance(mean_p: Tensor, mean_q: Tensor, reduction: Reduction = "per_dim") -> Tensor:
    """‖μ_p − μ_q‖² (sum) or its per-dim mean, shape [B]: Eq. 14 without the 1/(2σ²), i.e. 2σ²·KL.

    The x-space penalty some published codes use for KL-to-reference (config.beta_units="mean_sq")."""
    return _reduce((mean_p - mean_q) ** 2, reduction)


def kl_sum(mean_p: Tensor, mean_q: Tensor, std: Tensor) -> Tensor:
    """Eq. 14 summed over latent dims (nats per step)."""
    return gaussian_kl(mean_p, mean_q, std, "sum")


def kl_per_dim(mean_p: Tensor, mean_q: Tensor, std: Tensor) -> Tensor:
    """Eq. 14 divided by the latent dimensionality D (the published thresholds' scale)."""
    return gaussian_kl(mean_p, mean_q, std, "per_dim")


def _velocity_kl(kernel: sde.Kernel, v_p: Tensor, v_q: Tensor, sigma, sigma_next, eta: float,
                 reduction: Reduction) -> Tensor:
    """Eq. 14 on means that differ only through the velocity: μ_p − μ_q = c·(v_p − v_q) with c = ∂μ/∂v, so
    KL = c²‖v_p − v_q‖²/(2σ_step²).  c and σ_step come from flowdppo.sde, per sample ([B] or scalar σ)."""
    sig = torch.as_tensor(sigma, dtype=v_p.dtype, device=v_p.device)
    sig_n = torch.as_tensor(sigma_next, dtype=v_p.dtype, device=v_p.device)
    c = sde.mean_velocity_coefficient(kernel, sig, sig_n, eta)
    std = sde.transition_std(kernel, sig, sig_n, eta)
    coeff = c**2 / (2.0 * std**2)
    coeff = coeff.reshape(-1) if coeff.ndim else coeff
    return coeff * _reduce((v_p - v_q) ** 2, reduction)


def kl_flow_sde_velocity(v_p: Tensor, v_q: Tensor, sigma, sigma_next, eta: float,
                         reduction: Reduction = "sum") -> Tensor:
    """Eq. 15 (= Eq. 21): D_KL^SDE = (−dt/2)·(s_t(1−σ)/(2σ) + 1/s_t)²·‖v_p − v_q‖² for Flow-SDE."""
    return _velocity_kl("flow_sde", v_p, v_q, sigma, sigma_next, eta, reduction)


def kl_cps_velocity(v_p: Tensor, v_q: Tensor, sigma, sigma_next, eta: float,
                    reduction: Reduction = "sum") -> Tensor:
    """Eq. 16 (= Eq. 22): D_KL^CPS = c(t)²‖v_p − v_q‖² / (2 σ'² sin²(ηπ/2)),
    c(t) = −(1 − σ')σ + σ'(1 − σ)cos(ηπ/2), σ' = σ_next."""
    return _velocity_kl("cps", v_p, v_q, sigma, sigma_next, eta, reduction)


# ----------------------------------------------------------------------------------------------------
# TV, Pinsker and Remark 3 (functions of the full-norm KL)
# ----------------------------------------------------------------------------------------------------
def tv_from_kl(kl_total: Tensor) -> Tensor:
    """Eq. 10: D_TV = 2Φ(‖Δμ‖/(2σ)) − 1, written with ‖Δμ‖/σ = √(2·KL_sum): D_TV = 2Φ(√(KL/2)) − 1."""
    return 2.0 * torch.special.ndtr(torch.sqrt(kl_total / 2.0)) - 1.0


def gaussian_tv(mean_p: Tensor, mean_q: Tensor, std: Tensor) -> Tensor:
    """Eq. 10 from the means directly, shape [B]."""
    dist = (mean_p - mean_q).flatten(1).norm(dim=1) / std.reshape(-1).to(mean_p.dtype).expand(mean_p.shape[0])
    return 2.0 * torch.special.ndtr(dist / 2.0) - 1.0


def pinsker_tv_bound(kl_total):
    """Pinsker: D_TV ≤ √(KL/2) (paper Remark 3, App. B.4).  Works on floats and tensors."""
    if isinstance(kl_total, Tensor):
        return torch.sqrt(kl_total.clamp_min(0.0) / 2.0)
    return math.sqrt(max(kl_total, 0.0) / 2.0)


def kl_threshold_from_tv(delta_tv: float) -> float:
    """Remark 3: D_TV ≤ δ_TV  ⇔  D_KL ≤ 2[Φ⁻¹((1 + δ_TV)/2)]² (exact for equal-covariance Gaussians)."""
    if not 0.0 <= delta_tv < 1.0:
        raise ValueError(f"delta_tv must lie in [0, 1), got {delta_tv}")
    z = float(torch.special.ndtri(torch.tensor((1.0 + delta_tv) / 2.0, dtype=torch.float64)))
    return 2.0 * z * z


def tv_threshold_from_kl(delta_kl: float) -> float:
    """Inverse of `kl_threshold_from_tv`: the TV radius implied by a full-norm KL radius δ_KL."""
    if delta_kl < 0:
        raise ValueError(f"delta_kl must be >= 0, got {delta_kl}")
    return float(tv_from_kl(torch.tensor(delta_kl, dtype=torch.float64)))


def delta_per_dim(delta: float, kl_reduction: str, latent_dim: int) -> float:
    """A threshold δ stated in `kl_reduction` units as a per-dim KL: δ itself for "per_dim", δ / D for "sum"
    (Eq. 14 summed over the D latent dims)."""
    return delta if kl_reduction == "per_dim" else delta / latent_dim


def matched_clip_eps(delta_per_dim: float, latent_dim: int) -> float:
    """The clip ε that selects like the KL mask at a per-dim δ: for per-dim log-probs the ratio's noise under
    π_old is sd(log r) ≈ √(2·KL_per_dim/D) (Eq. 13 with Eq. 14), so the clip fires at |log r| > ε about where the
    mask fires at KL_per_dim > δ when ε = √(2δ/D)."""
    return (2 * delta_per_dim / latent_dim) ** 0.5
