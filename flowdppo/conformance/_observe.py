"""Black-box observation of a canonical loss (see adapters.py): what it blocks, how it normalises, and the
KL its mask compares with δ — read off its gradients, never off its stats (whose names vary by code).

* A sample with Â ≠ 0 is BLOCKED iff ∂L/∂log π_i is exactly 0: a kept sample's surrogate −Â·r/N has
  derivative −Â·r/N ≠ 0 with respect to its own log-prob (r = exp(log π − log π_old), ∂r/∂log π = r).
* The normaliser N of a kept sample is −Â_i·r_i / (∂L/∂log π_i).
* The mask's KL for a state is the δ at which the decision of a probe sample flips: bisection on log δ
  until the bracket is 1e-9 wide (relative).  The probe sits in a batch with a filler sample (Â = 1,
  r < 1, KL = 0) that any mask keeps, so a loss that averages over the kept samples never divides by 0.

logp and mean are separate leaves: log-probs are varied independently of the means, so the ratio and the
KL of a synthetic sample can be set apart (exactly as the truth table of Eq. 18 needs).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Optional, Sequence

import torch
from torch import Tensor

LR_PROBE = 0.125   # |log r| of a probe sample (dyadic, so r is computed identically by any code)


@dataclass
class Batch:
    """Inputs of one canonical loss call.  logp/old_logp/advantages [B]; mean/old_mean [B, *latent]."""
    logp: Tensor
    old_logp: Tensor
    mean: Tensor
    old_mean: Tensor
    std: Tensor
    advantages: Tensor
    sigma: float
    sigma_next: float
    eta: float

    def __len__(self) -> int:
        return self.logp.shape[0]


@dataclass
class Observation:
    loss: float
    g_logp: Tensor      # [B]  ∂L/∂log π_i
    g_mean: Tensor      # [B, *latent]  ∂L/∂μ_θ (zeros when the loss does not use μ_θ)
    error: Optional[str] = None

    def blocked(self, advantages: Tensor) -> Tensor:
        """[B] bool: blocked (zero own-gradient) samples among those with Â ≠ 0."""
        return (self.g_logp == 0) & (advantages != 0)


def observe(loss_fn: Callable[..., Tensor], batch: Batch, delta: float) -> Observation:
    """Call the loss once and take ∂L/∂log π and ∂L/∂μ_θ by autograd.  A raised exception is recorded."""
    logp = batch.logp.detach().clone().requires_grad_(True)
    mean = batch.mean.detach().clone().requires_grad_(True)
    try:
        loss = loss_fn(logp=logp, old_logp=batch.old_logp.detach(), mean=mean, old_mean=batch.old_mean.detach(),
                       std=batch.std, sigma=batch.sigma, sigma_next=batch.sigma_next, eta=batch.eta,
                       advantages=batch.advantages, delta=delta)
        if loss.requires_grad:
            g_lp, g_mu = torch.autograd.grad(loss, [logp, mean], allow_unused=True)
        else:                                   # a constant loss (everything masked) has zero gradient
            g_lp, g_mu = None, None
    except Exception as e:                      # noqa: BLE001 — the report must say what the call did
        nan = torch.full_like(logp, math.nan)
        return Observation(math.nan, nan, torch.full_like(mean, math.nan), error=f"{type(e).__name__}: {e}")
    g_lp = torch.zeros_like(logp) if g_lp is None else g_lp.detach()
    g_mu = torch.zeros_like(mean) if g_mu is None else g_mu.detach()
    return Observation(float(loss.detach()), g_lp, g_mu)


def cells(adv: Sequence[float], log_ratio: Sequence[float], shift: Sequence[float], *, std: float,
          sigma: float, sigma_next: float, eta: float, dims: int = 4, dtype=torch.float32) -> Batch:
    """Synthetic samples with chosen Â, log r and per-dim mean shift |Δμ| (per-dim KL = shift²/(2σ²)).

    Means, log-probs, shifts and the std are dyadic rationals, so every code that writes Eq. 14 as
    (Δμ)²/(2σ²) — in whatever order — computes the same KL to the last bit (the tie cells need that)."""
    b = len(adv)
    idx = torch.arange(b * dims, dtype=torch.float64).reshape(b, dims)
    old_mean = ((idx * 5) % 13 - 6) / 8                        # values in {−6/8 … 6/8}
    sign = torch.where(idx % 2 == 0, 1.0, -1.0).double()
    mean = old_mean + torch.as_tensor(shift, dtype=torch.float64).reshape(b, 1) * sign
    old_logp = -1.0 - (torch.arange(b, dtype=torch.float64) % 5) / 4
    logp = old_logp + torch.as_tensor(log_ratio, dtype=torch.float64)
    cast = lambda t: t.to(dtype)  # noqa: E731
    return Batch(logp=cast(logp), old_logp=cast(old_logp), mean=cast(mean), old_mean=cast(old_mean),
                 std=torch.tensor(std, dtype=dtype), advantages=cast(torch.as_tensor(adv, dtype=torch.float64)),
                 sigma=sigma, sigma_next=sigma_next, eta=eta)


# ----------------------------------------------------------------------------------------------------
# The KL the mask uses, by bisection on δ
# ----------------------------------------------------------------------------------------------------
# (sign Â, sign log r): the two pushing quadrants first (Eq. 18 blocks those), then the corrective ones
QUADRANTS: tuple[tuple[float, float], ...] = ((1.0, 1.0), (-1.0, -1.0), (1.0, -1.0), (-1.0, 1.0))


@dataclass
class MaskKL:
    value: float          # the δ at which the probe's decision flips (= the KL the mask compares with δ)
    blocked_below: bool   # True: blocked for δ < value (Eq. 18's direction); False: inverted comparison
    quadrant: tuple[float, float]
    calls: int


def _probe_batch(mean: Tensor, old_mean: Tensor, std: Tensor, quadrant, *, sigma, sigma_next, eta) -> Batch:
    """[probe, filler]: the probe has the state's means and the quadrant's signs; the filler (Â = 1, r < 1,
    KL = 0) is kept by any mask."""
    dtype = mean.dtype
    a, s = quadrant
    two = lambda t: torch.cat([t, t])  # noqa: E731
    old_logp = torch.tensor([-1.0, -1.0], dtype=dtype)
    logp = old_logp + torch.tensor([s * LR_PROBE, -LR_PROBE], dtype=dtype)
    if std.ndim > 0 and std.shape[0] == 1:
        std = two(std)
    return Batch(logp=logp, old_logp=old_logp, mean=torch.cat([mean, old_mean]), old_mean=two(old_mean), std=std,
                 advantages=torch.tensor([a, 1.0], dtype=dtype), sigma=sigma, sigma_next=sigma_next, eta=eta)


def _decision(loss_fn, batch: Batch, delta: float) -> Optional[bool]:
    obs = observe(loss_fn, batch, delta)
    g = obs.g_logp[0]
    if not bool(torch.isfinite(g)):
        return None
    return bool(g == 0)


def mask_kl(loss_fn, *, mean: Tensor, old_mean: Tensor, std: Tensor, sigma: float, sigma_next: float, eta: float,
            kl_guess: float, rel_tol: float = 1e-9, span: float = 1e12) -> Optional[MaskKL]:
    """The KL the loss's mask uses for one state ([1, *latent] means), or None if no δ in
    [kl_guess/span, kl_guess·span] changes the decision of a probe in any of the four sign quadrants."""
    calls = 0
    for quadrant in QUADRANTS:
        batch = _probe_batch(mean, old_mean, std, quadrant, sigma=sigma, sigma_next=sigma_next, eta=eta)
        lo, hi = kl_guess / span, kl_guess * span
        d_lo, d_hi = _decision(loss_fn, batch, lo), _decision(loss_fn, batch, hi)
        calls += 2
        if d_lo is None or d_hi is None or d_lo == d_hi:
            continue
        for _ in range(200):
            if hi / lo - 1.0 < rel_tol:
                break
            mid = math.sqrt(lo * hi)
            d_mid = _decision(loss_fn, batch, mid)
            calls += 1
            if d_mid is None:
                return None
            if d_mid == d_lo:
                lo = mid
            else:
                hi = mid
        return MaskKL(value=math.sqrt(lo * hi), blocked_below=d_lo, quadrant=quadrant, calls=calls)
    return None

