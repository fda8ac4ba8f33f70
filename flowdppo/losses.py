"""Policy losses for one trained denoising step: pure, keyword-only functions of tensors.

Every policy loss shares one signature (so the trainer picks one from `POLICY_LOSSES`, not an if-chain):

    loss_fn(*, logp=None, old_logp=None, mean, old_mean, std, advantages, sample=None, **hyperparameters)
        -> (per_sample_loss [B] to MINIMISE, stats: dict[str, 0-d tensor])

  mean, old_mean  [B, *lat]  transition means μ_θ (differentiable) and μ_old (anchor, fp32)
  std             [B, 1, …]  the kernel's full transition std (from flowdppo.sde)
  advantages      [B]        Â per sample (trajectory-level, the same at each step of a trajectory)
  sample          [B, *lat]  the action x_next
  logp, old_logp  [B]        optional log π_θ(x_next|x) and the anchor's, with the SAME reduction
                             (`logp_reduction`: "per_dim" — the published codes' mean over dims — or "sum")

The log-ratio log r (Eq. 6) comes from one of two sources (`_log_ratio`):
  * logp/old_logp omitted (what the trainer does): log r = sde.log_ratio(sample, mean, old_mean, std),
    formed from the residuals without cancellation, so the mask's sign decision is exact in fp32 at the
    paper's δ = 1e-7 and D = 65 536 (docs/conventions.md, "Precision");
  * logp/old_logp given: log r = logp − old_logp, for callers that hold log-probs only.  In fp32 the
    O(1) terms of the two densities cancel only after the reduction (an error of 1e-8–1e-7 per dim).

Equation numbers are the paper's (arXiv 2606.11025).  Objective (Eq. 17), maximised:
  E[ M·r·Â − β·KL(π_θ‖π_ref) ];  here we return −M·r·Â per sample and add β·KL in `kl_to_reference`.
"""
from __future__ import annotations

from typing import Callable, Literal, Optional

import torch
from torch import Tensor

from . import sde
from .divergence import REDUCTIONS, Reduction, gaussian_kl, squared_distance
from .sde import LogpScale

# |log r| is clamped here before exp: r stays finite (≤ 4.9e8) so no inf·0 can arise, and gradients
# stay finite everywhere.  With per-dim log-probs |log r| is ~1e-3 in practice, so this never binds
# in a healthy run; `ratio_clamped` in the stats reports how often it did.
LOG_RATIO_MAX = 20.0

# Grids for the counterfactual firing rates logged at every optimizer step (trainer item 4).
CLIP_EPS_GRID: tuple[float, ...] = (1e-5, 1e-4, 1e-3, 1e-2)
DELTA_GRID: tuple[float, ...] = (1e-7, 1e-6, 1e-5, 1e-4, 1e-3)


def _check_reduction(name: str, value: str) -> None:
    if value not in REDUCTIONS:
        raise ValueError(f"{name}={value!r} is not a reduction; use one of {REDUCTIONS}")


def _raw_log_ratio(logp: Optional[Tensor], old_logp: Optional[Tensor], *, sample: Optional[Tensor],
                   mean: Tensor, old_mean: Tensor, std: Tensor, reduction: Reduction,
                   scale: LogpScale = "normalized") -> Tensor:
    """log r = log π_θ − log π_old (Eq. 6), [B], differentiable in μ_θ (or in logp when log-probs are given).

    Without log-probs: the exact residual form sde.log_ratio (in `scale`, `reduction`).  With them:
    logp − old_logp, which must then be in the normalized scale."""
    if (logp is None) != (old_logp is None):
        raise ValueError("give both logp and old_logp, or neither (then log r comes from sample and the means)")
    if logp is not None:
        if scale != "normalized":
            raise ValueError(f"logp_scale={scale!r} applies to the log-ratio formed from `sample`; "
                             "omit logp/old_logp and pass sample, mean, old_mean and std")
        return logp - old_logp.detach()
    if sample is None:
        raise ValueError("the log-ratio needs `sample` (the action x_next) when logp/old_logp are omitted")
    _check_reduction("logp_reduction", reduction)
    return sde.log_ratio(sample, mean, old_mean.detach(), std, reduction, scale)


def _log_ratio(logp, old_logp, **kw) -> tuple[Tensor, Tensor]:
    """`_raw_log_ratio` clamped to ±LOG_RATIO_MAX; also returns the clamp mask."""
    raw = _raw_log_ratio(logp, old_logp, **kw)
    clamped = raw.detach().abs() > LOG_RATIO_MAX
    return raw.clamp(-LOG_RATIO_MAX, LOG_RATIO_MAX), clamped


@torch.no_grad()
def trust_region_stats(*, log_ratio: Tensor, mean: Tensor, old_mean: Tensor, std: Tensor) -> dict[str, Tensor]:
    """Ratio and exact-KL statistics shared by every loss (all 0-d tensors, no host sync).

    k1 = −log r and k3 = (r − 1) − log r are the sample estimators of KL(π_old‖π_θ) from the log-ratio
    (unbiased under π_old in the sum reduction); compare them with the exact `kl_*` values.
    """
    r = log_ratio.exp()
    kl_s = gaussian_kl(old_mean, mean.detach(), std, "sum")
    kl_d = kl_s / old_mean[0].numel()
    return {
        "ratio_mean": r.mean(), "ratio_std": r.std(unbiased=False), "ratio_min": r.min(), "ratio_max": r.max(),
        "log_ratio_abs_mean": log_ratio.abs().mean(),
        "kl_sum_mean": kl_s.mean(), "kl_sum_max": kl_s.max(),
        "kl_per_dim_mean": kl_d.mean(), "kl_per_dim_max": kl_d.max(),
        "k1": (-log_ratio).mean(), "k3": ((r - 1.0) - log_ratio).mean(),
    }


def _mask_stats(kl_exceeded: Tensor, blocked_pos: Tensor, blocked_neg: Tensor) -> dict[str, Tensor]:
    """Fractions of the batch (mask accounting: blocked = blocked_pos + blocked_neg ≤ kl_exceeded; blocked + kept = 1)."""
    blocked = blocked_pos | blocked_neg
    f = lambda m: m.float().mean()  # noqa: E731
    return {"kl_exceeded": f(kl_exceeded), "blocked_pos": f(blocked_pos), "blocked_neg": f(blocked_neg),
            "blocked": f(blocked), "kept": f(~blocked)}


def _masked_surrogate(log_ratio: Tensor, advantages: Tensor, blocked: Tensor) -> Tensor:
    """−Â·r where kept, exactly 0 (with exactly zero gradient) where blocked.

    The ratio of a blocked sample is computed from a detached zero log-ratio, so no inf·0 reaches the
    backward pass (the torch.where NaN-gradient trap)."""
    safe = torch.where(blocked, torch.zeros_like(log_ratio).detach(), log_ratio)
    return torch.where(blocked, torch.zeros_like(safe), -advantages * safe.exp())


KlTie = Literal["keep", "block"]


def _exceeds(kl: Tensor, delta: float, kl_tie: KlTie) -> Tensor:
    """KL > δ (Eq. 18's strict inequality, kl_tie="keep") or KL ≥ δ (the published codes, "block")."""
    if kl_tie == "keep":
        return kl > delta
    if kl_tie == "block":
        return kl >= delta
    raise ValueError(f"kl_tie={kl_tie!r}; choose 'keep' (Eq. 18: KL = δ is inside) or 'block'")


def _divergence_mask_parts(*, logp, old_logp, sample, mean, old_mean, std, advantages, delta, kl_reduction,
                           logp_reduction, logp_scale="normalized", kl_tie="keep"):
    if delta < 0:
        raise ValueError(f"delta={delta} must be >= 0 (it is a KL threshold)")
    _check_reduction("kl_reduction", kl_reduction)
    log_ratio, clamped = _log_ratio(logp, old_logp, sample=sample, mean=mean, old_mean=old_mean, std=std,
                                    reduction=logp_reduction, scale=logp_scale)
    with torch.no_grad():  # the mask is a stop-gradient gate (Eq. 18)
        kl = gaussian_kl(old_mean, mean.detach(), std, kl_reduction)
        kl_exceeded = _exceeds(kl, delta, kl_tie)
    return log_ratio, clamped, kl_exceeded


def flow_dppo(*, mean: Tensor, old_mean: Tensor, std: Tensor, advantages: Tensor,
              sample: Optional[Tensor] = None, logp: Optional[Tensor] = None, old_logp: Optional[Tensor] = None,
              delta: float = 1e-6, kl_reduction: Reduction = "per_dim", logp_reduction: Reduction = "per_dim",
              logp_scale: LogpScale = "normalized", kl_tie: KlTie = "keep"):
    """Flow-DPPO with the asymmetric divergence mask (Eq. 17, 18; compact form Eq. 23).

    M = 0  ⇔  D_KL(π_old‖π_θ) > δ  ∧  Â·(r − 1) > 0   (the update pushes further away);
    corrective updates (Â > 0, r < 1 or Â < 0, r > 1), r = 1 exactly and Â = 0 are never blocked.
    `kl_reduction` chooses which KL δ is stated on (per_dim = the published thresholds).  Conventions
    (docs/conventions.md): logp_scale="unnormalized" uses the published CPS codes' ratio r^(2σ²) in the
    surrogate (the mask's sign decision is the same); kl_tie="block" counts KL = δ as exceeded.
    """
    log_ratio, clamped, kl_exceeded = _divergence_mask_parts(
        logp=logp, old_logp=old_logp, sample=sample, mean=mean, old_mean=old_mean, std=std,
        advantages=advantages, delta=delta, kl_reduction=kl_reduction, logp_reduction=logp_reduction,
        logp_scale=logp_scale, kl_tie=kl_tie)
    log_r = log_ratio.detach()
    blocked_pos = kl_exceeded & (advantages > 0) & (log_r > 0)
    blocked_neg = kl_exceeded & (advantages < 0) & (log_r < 0)
    loss = _masked_surrogate(log_ratio, advantages, blocked_pos | blocked_neg)
    stats = trust_region_stats(log_ratio=log_r, mean=mean, old_mean=old_mean, std=std)
    stats.update(_mask_stats(kl_exceeded, blocked_pos, blocked_neg), ratio_clamped=clamped.float().mean())
    return loss, stats


def flow_dppo_symmetric(*, mean: Tensor, old_mean: Tensor, std: Tensor, advantages: Tensor,
                        sample: Optional[Tensor] = None, logp: Optional[Tensor] = None,
                        old_logp: Optional[Tensor] = None, delta: float = 1e-6,
                        kl_reduction: Reduction = "per_dim", logp_reduction: Reduction = "per_dim",
                        logp_scale: LogpScale = "normalized", kl_tie: KlTie = "keep"):
    """The "w/o asymmetry" ablation (Fig 3): drop every sample whose KL exceeds δ, whatever its direction.

    For accounting, blocked samples count as blocked_pos when Â > 0 and blocked_neg otherwise."""
    log_ratio, clamped, kl_exceeded = _divergence_mask_parts(
        logp=logp, old_logp=old_logp, sample=sample, mean=mean, old_mean=old_mean, std=std,
        advantages=advantages, delta=delta, kl_reduction=kl_reduction, logp_reduction=logp_reduction,
        logp_scale=logp_scale, kl_tie=kl_tie)
    log_r = log_ratio.detach()
    blocked_pos = kl_exceeded & (advantages > 0)
    blocked_neg = kl_exceeded & ~(advantages > 0)
    loss = _masked_surrogate(log_ratio, advantages, kl_exceeded)
    stats = trust_region_stats(log_ratio=log_r, mean=mean, old_mean=old_mean, std=std)
    stats.update(_mask_stats(kl_exceeded, blocked_pos, blocked_neg), ratio_clamped=clamped.float().mean())
    return loss, stats


def flow_dppo_predictive(*, mean: Tensor, old_mean: Tensor, std: Tensor, advantages: Tensor,
                         sample: Optional[Tensor] = None, logp: Optional[Tensor] = None,
                         old_logp: Optional[Tensor] = None, delta: float = 1e-6,
                         kl_reduction: Reduction = "per_dim", logp_reduction: Reduction = "per_dim",
                         step_size: Optional[float] = None, kl_tie: KlTie = "keep"):
    """Predictive divergence masks (App. E).

    step_size=None — first-order mask (Eq. 26): M = 0 ⇔ D_t > δ ∧ Â·(log r − D_t) > 0, where log r and
      D_t use the same reduction (`logp_reduction`), so the sign is exactly that of Eq. 25.
    step_size=η   — full predictive mask (Eq. 27): M = 0 ⇔ D_new > δ, where D_new is the KL after one
      gradient-ascent step of size η on the surrogate Â·r with μ treated as a free vector (Eq. 24;
      exact, since D is quadratic in μ).  Needs `sample` (the action x_next).
    Defined on normalized log-probs only (no logp_scale).  kl_tie applies to both gates.
    """
    _check_reduction("logp_reduction", logp_reduction)
    log_ratio, clamped, kl_exceeded = _divergence_mask_parts(
        logp=logp, old_logp=old_logp, sample=sample, mean=mean, old_mean=old_mean, std=std,
        advantages=advantages, delta=delta, kl_reduction=kl_reduction, logp_reduction=logp_reduction,
        kl_tie=kl_tie)
    log_r = log_ratio.detach()
    with torch.no_grad():
        if step_size is None:
            d_same = gaussian_kl(old_mean, mean.detach(), std, logp_reduction)
            blocked = kl_exceeded & (advantages * (log_r - d_same) > 0)
        else:
            if sample is None:
                raise ValueError("flow_dppo_predictive with step_size needs `sample` (the action x_next)")
            if step_size <= 0:
                raise ValueError(f"step_size={step_size} must be > 0")
            # ∇_μ(Â·r) = Â·r·(x − μ)/σ² for the summed log-prob; per-dim log-probs divide it by D.
            n_dims = mean[0].numel() if logp_reduction == "per_dim" else 1
            g = (sample.to(mean.dtype) - mean.detach())
            scale = (advantages * log_r.exp() / n_dims).reshape(-1, *([1] * (mean.ndim - 1)))
            mean_new = mean.detach() + step_size * scale * g / std**2
            blocked = _exceeds(gaussian_kl(old_mean, mean_new, std, kl_reduction), delta, kl_tie)
        # accounting by the sign of Â.  The full predictive mask can block a sample whose current KL is
        # still ≤ δ, so blocked ≤ kl_exceeded holds for the first-order mask only.
        blocked_pos = blocked & (advantages > 0)
        blocked_neg = blocked & ~(advantages > 0)
    loss = _masked_surrogate(log_ratio, advantages, blocked)
    stats = trust_region_stats(log_ratio=log_r, mean=mean, old_mean=old_mean, std=std)
    stats.update(_mask_stats(kl_exceeded, blocked_pos, blocked_neg), ratio_clamped=clamped.float().mean())
    return loss, stats


def flow_grpo_clip(*, mean: Tensor, old_mean: Tensor, std: Tensor, advantages: Tensor,
                   sample: Optional[Tensor] = None, logp: Optional[Tensor] = None, old_logp: Optional[Tensor] = None,
                   clip_range: float = 1e-4, logp_reduction: Reduction = "per_dim",
                   logp_scale: LogpScale = "normalized"):
    """Flow-GRPO ratio clipping (Eq. 5): loss = max(−Â·r, −Â·clip(r, 1−ε, 1+ε)).

    logp_scale="unnormalized" clips the published CPS codes' ratio r^(2σ²) (docs/conventions.md)."""
    if clip_range <= 0:
        raise ValueError(f"clip_range={clip_range} must be > 0")
    log_ratio, clamped = _log_ratio(logp, old_logp, sample=sample, mean=mean, old_mean=old_mean, std=std,
                                    reduction=logp_reduction, scale=logp_scale)
    r = log_ratio.exp()
    loss = torch.maximum(-advantages * r, -advantages * r.clamp(1.0 - clip_range, 1.0 + clip_range))
    log_r = log_ratio.detach()
    stats = trust_region_stats(log_ratio=log_r, mean=mean, old_mean=old_mean, std=std)
    rd = r.detach()
    stats.update(clip_frac=((rd - 1.0).abs() > clip_range).float().mean(),
                 clip_frac_gradient=(((rd > 1 + clip_range) & (advantages > 0)) |
                                     ((rd < 1 - clip_range) & (advantages < 0))).float().mean(),
                 ratio_clamped=clamped.float().mean())
    return loss, stats


def grpo_guard(*, mean: Tensor, old_mean: Tensor, std: Tensor, advantages: Tensor,
               sample: Optional[Tensor] = None, logp: Optional[Tensor] = None, old_logp: Optional[Tensor] = None,
               clip_range: float = 4e-6, logp_reduction: Reduction = "per_dim"):
    """GRPO-Guard ratio re-normalisation (paper §3.2, App. D), per-sample form (as Flow-Factory):

    log r_guard = (log π_θ − log π_old)·s + mse/(2s),  s = std, mse = mean_dims(μ_θ − μ_old)²,
    which for per-dim log-probs equals εᵀd/D: the −KL bias of the log-ratio removed and its noise
    rescaled by σ.  Then PPO clipping at ε.  The original's batch-averaged σ and 1/mean(√dt)² gradient
    reweight are not reproduced (the reweight is a per-step loss scale under AdamW).
    """
    if clip_range <= 0:
        raise ValueError(f"clip_range={clip_range} must be > 0")
    if logp_reduction != "per_dim":
        raise ValueError("grpo_guard is defined for per-dim log-probs; set logp_reduction='per_dim'")
    s = std.reshape(std.shape[0], -1)[:, 0] if std.ndim else std.expand(advantages.shape[0])
    mse = ((mean - old_mean.detach()) ** 2).flatten(1).mean(1)
    raw_lr = _raw_log_ratio(logp, old_logp, sample=sample, mean=mean, old_mean=old_mean, std=std,
                            reduction=logp_reduction)
    guard_lr = raw_lr * s + mse / (2.0 * s)
    clamped = guard_lr.detach().abs() > LOG_RATIO_MAX
    r = guard_lr.clamp(-LOG_RATIO_MAX, LOG_RATIO_MAX).exp()
    loss = torch.maximum(-advantages * r, -advantages * r.clamp(1.0 - clip_range, 1.0 + clip_range))
    plain_lr = raw_lr.detach().clamp(-LOG_RATIO_MAX, LOG_RATIO_MAX)
    stats = trust_region_stats(log_ratio=plain_lr, mean=mean, old_mean=old_mean, std=std)
    rd = r.detach()
    stats.update(guard_ratio_mean=rd.mean(), clip_frac=((rd - 1.0).abs() > clip_range).float().mean(),
                 ratio_clamped=clamped.float().mean())
    return loss, stats


def no_trust_region(*, mean: Tensor, old_mean: Tensor, std: Tensor, advantages: Tensor,
                    sample: Optional[Tensor] = None, logp: Optional[Tensor] = None,
                    old_logp: Optional[Tensor] = None, logp_reduction: Reduction = "per_dim",
                    logp_scale: LogpScale = "normalized"):
    """The control with no trust region: the plain importance-weighted surrogate −Â·r (the objective of
    Eq. 5 and Eq. 17 with nothing clipped and nothing masked, M ≡ 1).  Only the first minibatch after a
    rollout is on-policy; later minibatches move as far as the optimizer takes them."""
    log_ratio, clamped = _log_ratio(logp, old_logp, sample=sample, mean=mean, old_mean=old_mean, std=std,
                                    reduction=logp_reduction, scale=logp_scale)
    loss = -advantages * log_ratio.exp()
    stats = trust_region_stats(log_ratio=log_ratio.detach(), mean=mean, old_mean=old_mean, std=std)
    stats.update(ratio_clamped=clamped.float().mean())
    return loss, stats


BetaUnits = Literal["exact_kl", "mean_sq"]


def kl_to_reference(*, mean: Tensor, ref_mean: Tensor, std: Tensor, reduction: Reduction = "per_dim",
                    units: BetaUnits = "exact_kl") -> Tensor:
    """The β-penalised divergence to π_ref at one step (Eq. 17's β term), shape [B], in `units`:

    exact_kl — KL(π_θ‖π_ref) = ‖μ_θ − μ_ref‖²/(2σ²), exact Gaussian with the kernel's std (Eq. 14);
    mean_sq  — ‖μ_θ − μ_ref‖² without the 1/(2σ²) (Flow-Factory's penalty), so a β given in these units
               equals β_exact / (2σ²) at each step (docs/conventions.md).
    Differentiable in `mean`; ref_mean is the frozen base's mean at the same state."""
    if units == "exact_kl":
        return gaussian_kl(mean, ref_mean.detach(), std, reduction)
    if units == "mean_sq":
        return squared_distance(mean, ref_mean.detach(), reduction)
    raise ValueError(f"units={units!r}; choose 'exact_kl' or 'mean_sq'")


PolicyLoss = Callable[..., tuple[Tensor, dict[str, Tensor]]]
POLICY_LOSSES: dict[str, PolicyLoss] = {
    "flow_dppo": flow_dppo,
    "flow_dppo_symmetric": flow_dppo_symmetric,
    "flow_dppo_predictive": flow_dppo_predictive,
    "flow_grpo": flow_grpo_clip,
    "grpo_guard": grpo_guard,
    "no_trust_region": no_trust_region,
}


@torch.no_grad()
def counterfactual_rates(*, log_ratio: Tensor, kl_per_dim: Tensor, advantages: Tensor,
                         clip_eps: tuple[float, ...] = CLIP_EPS_GRID,
                         deltas: tuple[float, ...] = DELTA_GRID) -> dict[str, Tensor]:
    """What each rule would have done on this batch, whatever loss is active (trainer item 4).

    clip_fire@ε: fraction whose ratio clipping zeroes the gradient (Â>0 ∧ r>1+ε or Â<0 ∧ r<1−ε);
    mask_fire@δ: fraction the asymmetric mask blocks at per-dim threshold δ;  sign_rule: Â·(r−1) > 0.
    """
    r = log_ratio.exp()
    push = ((advantages > 0) & (log_ratio > 0)) | ((advantages < 0) & (log_ratio < 0))
    out = {"sign_rule": push.float().mean()}
    for eps in clip_eps:
        fire = ((advantages > 0) & (r > 1 + eps)) | ((advantages < 0) & (r < 1 - eps))
        out[f"clip_fire@{eps:.2g}"] = fire.float().mean()
    for d in deltas:
        out[f"mask_fire@{d:.2g}"] = (push & (kl_per_dim > d)).float().mean()
    return out
