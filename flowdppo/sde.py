"""Per-step Gaussian transitions of flow-matching samplers — the ONLY home of transition math.

Conventions (paper §2, Eq. 2–4):
  * σ-space: σ = 1 is pure noise, σ = 0 is data; x_σ = (1 − σ)·x0 + σ·ε and the model predicts the
    velocity v = ε − x0.  A reverse step goes from σ to σ_next < σ, so dt = σ_next − σ < 0.
  * Every kernel is a Gaussian policy π(x_next | x) = N(mean, std² I) (Eq. 4).  `std` returned here is
    the FULL transition std (for Flow-SDE that is η·√(σ/(1−σ))·√(−dt), not the pre-factor), so losses,
    KLs and figures never recompute it (docs/failure_modes.md: step-0 σ).
  * The σ = 1 rule (Flow-SDE only): the pre-factor √(σ/(1−σ)) diverges at σ = 1, so at σ = 1 the
    denominator 1 − σ is replaced by 1 − σ_next (the next grid point).  flow_grpo, UniRL's kernel,
    Flow-Factory and verl-omni all substitute `sigmas[1]` there, which is σ_next at step 0.  This
    rule is applied in `flow_sde_noise_scale` and nowhere else.

All functions are pure and stateless: no step counters, no host syncs.  σ arguments are Python floats or
tensors of shape [B] (one σ per sample); they broadcast over the latent dims.  Math runs in fp32
(or fp64 if the inputs are fp64); the caller keeps anchors in fp32 (docs/failure_modes.md: low-precision anchors).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal, Optional, Union

import torch
from torch import Tensor

Kernel = Literal["flow_sde", "cps", "dance_sde", "ode"]
KERNELS: tuple[str, ...] = ("flow_sde", "cps", "dance_sde", "ode")
SDE_KERNELS: tuple[str, ...] = ("flow_sde", "cps", "dance_sde")

SigmaLike = Union[float, Tensor]
_LOG_2PI = math.log(2.0 * math.pi)


def _as_batch(s: SigmaLike, x: Tensor) -> Tensor:
    """σ as a tensor broadcastable against x of shape [B, *latent] (→ [B, 1, …, 1] or a 0-d tensor)."""
    dtype = x.dtype if x.dtype in (torch.float32, torch.float64) else torch.float32
    s = torch.as_tensor(s, dtype=dtype, device=x.device)
    if s.ndim == 0:
        return s
    return s.reshape(s.shape[0], *([1] * (x.ndim - 1)))


# ----------------------------------------------------------------------------------------------------
# Noise schedules of each kernel
# ----------------------------------------------------------------------------------------------------
def flow_sde_noise_scale(sigma: SigmaLike, sigma_next: SigmaLike, eta: float) -> Tensor:
    """Flow-SDE diffusion pre-factor s_t = η·√(σ/(1−σ̃)) (paper Eq. 2), with the σ = 1 rule σ̃ = σ_next.

    Away from σ = 1, σ̃ = σ.  Shapes follow broadcasting of sigma / sigma_next.
    """
    sigma = torch.as_tensor(sigma, dtype=torch.float64 if isinstance(sigma, float) else None)
    sigma_next = torch.as_tensor(sigma_next, dtype=sigma.dtype, device=sigma.device)
    sigma_tilde = torch.where(sigma >= 1.0, sigma_next, sigma)  # the σ = 1 rule
    return eta * torch.sqrt(sigma / (1.0 - sigma_tilde))


def cps_mixing(eta: float) -> tuple[float, float]:
    """(cos(ηπ/2), sin(ηπ/2)): how CPS splits the next-σ noise between predicted and fresh noise (Eq. 3)."""
    angle = eta * math.pi / 2.0
    return math.cos(angle), math.sin(angle)


def transition_std(kernel: Kernel, sigma: SigmaLike, sigma_next: SigmaLike, eta: float) -> Tensor:
    """The full per-step std of each kernel (a tensor shaped like sigma).

    flow_sde:  s_t·√(−dt)            (Eq. 2; σ²(t) = s_t²·|dt|, paper Eq. 2)
    dance_sde: η·√(−dt)              (DanceGRPO: constant diffusion pre-factor)
    cps:       σ_next·sin(ηπ/2)      (Eq. 3; no √(−dt), docs/failure_modes.md: CPS scale)
    ode:       0
    """
    sigma = torch.as_tensor(sigma, dtype=torch.float64 if isinstance(sigma, float) else None)
    sigma_next = torch.as_tensor(sigma_next, dtype=sigma.dtype, device=sigma.device)
    neg_dt = sigma - sigma_next
    if kernel == "flow_sde":
        return flow_sde_noise_scale(sigma, sigma_next, eta) * torch.sqrt(neg_dt)
    if kernel == "dance_sde":
        return eta * torch.sqrt(neg_dt)
    if kernel == "cps":
        return sigma_next * cps_mixing(eta)[1]
    if kernel == "ode":
        return torch.zeros_like(sigma_next)
    raise ValueError(f"unknown kernel {kernel!r}; choose one of {KERNELS}")


# ----------------------------------------------------------------------------------------------------
# Means
# ----------------------------------------------------------------------------------------------------
def _reverse_sde_mean(x: Tensor, v: Tensor, sigma: Tensor, dt: Tensor, s: Tensor) -> Tensor:
    """Euler–Maruyama mean of the reverse SDE with diffusion s (Eq. 2, dt < 0):
    μ = x + [v + s²/(2σ)·(x + (1−σ)v)]·dt = x·(1 + s²dt/(2σ)) + v·(1 + s²(1−σ)/(2σ))·dt.
    x + (1−σ)v is the predicted noise x̂1, so the extra drift is −½s²·score with score = −x̂1/σ."""
    return x * (1.0 + s**2 * dt / (2.0 * sigma)) + v * (1.0 + s**2 * (1.0 - sigma) / (2.0 * sigma)) * dt


def transition_mean(kernel: Kernel, x: Tensor, v: Tensor, sigma: SigmaLike, sigma_next: SigmaLike,
                    eta: float) -> Tensor:
    """Mean μ(x, σ) of the kernel's Gaussian step, shape of x."""
    s_b, sn_b = _as_batch(sigma, x), _as_batch(sigma_next, x)
    dt = sn_b - s_b
    x32, v32 = x.to(s_b.dtype), v.to(s_b.dtype)
    if kernel == "ode":
        return x32 + v32 * dt
    if kernel == "flow_sde":
        return _reverse_sde_mean(x32, v32, s_b, dt, flow_sde_noise_scale(s_b, sn_b, eta))
    if kernel == "dance_sde":
        return _reverse_sde_mean(x32, v32, s_b, dt, torch.full_like(s_b, eta))
    if kernel == "cps":
        cos_, _ = cps_mixing(eta)
        x0_hat = x32 - s_b * v32           # predicted data
        x1_hat = x32 + (1.0 - s_b) * v32   # predicted noise
        return (1.0 - sn_b) * x0_hat + sn_b * cos_ * x1_hat
    raise ValueError(f"unknown kernel {kernel!r}; choose one of {KERNELS}")


def mean_velocity_coefficient(kernel: Kernel, sigma: SigmaLike, sigma_next: SigmaLike, eta: float) -> Tensor:
    """∂μ/∂v, the scalar by which a velocity change moves the mean (μ is affine in v for every kernel).

    Flow-SDE/Dance: (1 + s²(1−σ)/(2σ))·dt (Eq. 21);  CPS: −(1−σ')σ + σ'(1−σ)cos(ηπ/2) (Eq. 22);  ODE: dt.
    """
    sigma = torch.as_tensor(sigma, dtype=torch.float64 if isinstance(sigma, float) else None)
    sigma_next = torch.as_tensor(sigma_next, dtype=sigma.dtype, device=sigma.device)
    dt = sigma_next - sigma
    if kernel == "ode":
        return dt
    if kernel in ("flow_sde", "dance_sde"):
        s = flow_sde_noise_scale(sigma, sigma_next, eta) if kernel == "flow_sde" else torch.full_like(sigma, eta)
        return (1.0 + s**2 * (1.0 - sigma) / (2.0 * sigma)) * dt
    if kernel == "cps":
        return -(1.0 - sigma_next) * sigma + sigma_next * (1.0 - sigma) * cps_mixing(eta)[0]
    raise ValueError(f"unknown kernel {kernel!r}; choose one of {KERNELS}")


# ----------------------------------------------------------------------------------------------------
# Log-density and the one step function (sampling == replay)
# ----------------------------------------------------------------------------------------------------
def gaussian_logp(x_next: Tensor, mean: Tensor, std: Tensor) -> Tensor:
    """Element-wise log N(x_next; mean, std²), same shape as x_next (Eq. 4).  std must be > 0."""
    std = std.to(mean.dtype)
    return -((x_next.to(mean.dtype) - mean) ** 2) / (2.0 * std**2) - torch.log(std) - 0.5 * _LOG_2PI


LogpScale = Literal["normalized", "unnormalized"]
LOGP_SCALES: tuple[str, ...] = ("normalized", "unnormalized")


def log_ratio(x_next: Tensor, mean: Tensor, old_mean: Tensor, std: Tensor,
              reduction: Literal["sum", "per_dim"] = "per_dim", scale: LogpScale = "normalized") -> Tensor:
    """Eq. 6 without cancellation: log π_θ(x'|x) − log π_old(x'|x) = (‖x' − μ_old‖² − ‖x' − μ_θ‖²)/(2σ²), [B].

    Subtracting two log-densities (each O(1) per dim: −½ε² − log σ − ½log 2π) leaves a log-ratio of order
    √(2·KL/D) ≈ 1.7e-6 at δ = 1e-7 per dim and D = 65 536 after the O(1) terms cancel, so in fp32 the
    rounding of the two densities (≈ 1e-8–1e-7) flips the sign of log r for a few % of samples near the
    threshold.  Here the element-wise residual difference is formed with no O(1) term at all,
        (x' − μ_old)² − (x' − μ_θ)² = ((x' − μ_old) + (x' − μ_θ))·(μ_θ − μ_old),
    where μ_θ − μ_old is an exact fp32 subtraction of nearby numbers, and reduced once (sum over the
    latent dims, or their mean for "per_dim").  The gradient in μ_θ is (x' − μ_θ)/σ² (÷D per-dim), that of
    the log-density difference.  scale="unnormalized" is the log-ratio of the published CPS codes, whose
    log-prob is −(x' − μ)² (no 1/(2σ²), no constants): the same without the division, i.e. 2σ² times the
    normalized one.  Shapes: x_next/mean/old_mean [B, *latent]; std broadcastable ([B, 1, …] or 0-d).
    """
    x = x_next.to(mean.dtype)
    old = old_mean.to(mean.dtype)
    residual_diff = ((x - old) + (x - mean)) * (mean - old)
    if scale == "normalized":
        residual_diff = residual_diff / (2.0 * std.to(mean.dtype) ** 2)
    elif scale != "unnormalized":
        raise ValueError(f"unknown log-prob scale {scale!r}; choose one of {LOGP_SCALES}")
    return reduce_dims(residual_diff, reduction)


def reduce_dims(values: Tensor, reduction: str) -> Tensor:
    """[B, *latent] → [B]: the sum over latent dims ("sum") or their mean ("per_dim")."""
    flat = values.flatten(1)
    if reduction == "sum":
        return flat.sum(1)
    if reduction == "per_dim":
        return flat.mean(1)
    raise ValueError(f"unknown reduction {reduction!r}; choose 'sum' or 'per_dim'")


@dataclass
class Step:
    """One transition.  Shapes: x_next/mean [B, *latent]; std [B, 1, …] (broadcastable);
    logp_sum / logp_per_dim [B] — the log-density summed over latent dims (the paper's log π) and its
    per-dim mean (the convention of every published code, so ratios are geometric means, docs/failure_modes.md: reduced-log-prob ratio)."""
    x_next: Tensor
    mean: Tensor
    std: Tensor
    logp_sum: Optional[Tensor]
    logp_per_dim: Optional[Tensor]


def step(kernel: Kernel, *, x: Tensor, v: Tensor, sigma: SigmaLike, sigma_next: SigmaLike, eta: float,
         x_next: Optional[Tensor] = None, noise: Optional[Tensor] = None,
         generator: Optional[torch.Generator] = None) -> Step:
    """Take (x_next=None) or score (x_next given) one reverse step of `kernel`.

    Sampling draws x_next = mean + std·noise (noise from `noise`, else `generator`).  Replay scores the
    given x_next under the same Gaussian — one function, so rollout and replay cannot disagree (rollout/replay parity).
    The ODE kernel has std 0 and no log-density (logp fields are None).
    """
    mean = transition_mean(kernel, x, v, sigma, sigma_next, eta)
    std = _as_batch(transition_std(kernel, sigma, sigma_next, eta), x).to(mean.dtype)
    if x_next is None:
        if kernel == "ode":
            x_next = mean
        else:
            if noise is None:
                noise = torch.randn(mean.shape, generator=generator, device=mean.device, dtype=mean.dtype)
            x_next = mean + std * noise.to(mean.dtype)
        x_next = x_next.to(x.dtype)  # storage-dtype round trip before scoring (rollout == replay bits)
    if kernel == "ode":
        return Step(x_next=x_next, mean=mean, std=std, logp_sum=None, logp_per_dim=None)
    if not bool(torch.all(std > 0)):  # host sync: a zero-std SDE step is a config error, never a NaN
        raise ValueError(f"{kernel} step has std 0 (sigma_next = 0?): use the ODE kernel for the last step")
    lp = gaussian_logp(x_next, mean, std).flatten(1)
    return Step(x_next=x_next, mean=mean, std=std, logp_sum=lp.sum(1), logp_per_dim=lp.mean(1))


# ----------------------------------------------------------------------------------------------------
# σ grids
# ----------------------------------------------------------------------------------------------------
def shifted_sigmas(num_steps: int, shift: float = 1.0) -> Tensor:
    """The σ grid [σ_0 = 1, …, σ_K = 0] (num_steps + 1 points, fp64) of SD3-style schedulers:
    linspace(1, 0) mapped through σ ↦ shift·σ / (1 + (shift − 1)·σ) (diffusers' static shift).

    This is also the "official" grid of config.sigma_grid, shift(linspace(1, 1/K, K)) with 0 appended:
    linspace(1, 0, K + 1) is those K points followed by 0, and the shift maps 0 to 0.  (SD3's diffusers
    scheduler differs: it spaces its timesteps between the shifted σ_max and σ_min and shifts again.)"""
    if num_steps < 1:
        raise ValueError(f"num_steps must be >= 1, got {num_steps}")
    s = torch.linspace(1.0, 0.0, num_steps + 1, dtype=torch.float64)
    return shift * s / (1.0 + (shift - 1.0) * s)
