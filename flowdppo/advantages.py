"""Group-relative advantages (paper §2.1, Eq. 5) and GDPO for several rewards.

Rewards are laid out [P, G]: P prompts (groups) × G samples per prompt; GDPO takes [P, G, K] for K
rewards.  Conventions are explicit arguments (docs/failure_modes.md: advantage conventions):
  * the group mean is always per prompt;
  * `std_scope="group"` divides by each group's own std, `"global"` by ONE std of the raw rewards over
    the whole batch (the paper's recipe; in distributed runs pass the already-gathered batch);
  * `std_estimator="population"` (default) divides by the population std (ddof 0) floored at `eps`, so a
    constant group gives exactly 0, never NaN; `"bessel"` divides by the Bessel std (ddof 1) plus `eps`
    (UniRL's convention; its advantages are √((N−1)/N) times smaller, 0.968 for N = 16);
  * `clip` (e.g. 5.0 as flow_grpo / Flow-Factory) clips advantages to [−clip, clip] when set.
"""
from __future__ import annotations

import math
from typing import TYPE_CHECKING, Literal, Optional, Sequence

import torch
from torch import Tensor

if TYPE_CHECKING:
    from .config import Config

StdScope = Literal["group", "global"]
StdEstimator = Literal["population", "bessel"]


def _check_layout(rewards: Tensor, ndim: int, name: str) -> None:
    if rewards.ndim != ndim:
        raise ValueError(f"{name} must have {ndim} dims, got shape {tuple(rewards.shape)}")
    if not torch.isfinite(rewards).all():
        raise ValueError(f"{name} contains NaN/inf: every reward must be finite")


def _mean(x: Tensor, dim: Optional[int] = None) -> Tensor:
    """Mean computed as x_0 + mean(x − x_0) (keepdim): exactly x_0 for a constant slice, so a constant group
    centres to exactly 0 (a plain float64 mean can be off by an ulp, which the eps floor then magnifies)."""
    if dim is None:
        ref = x.reshape(-1)[0]
        return ref + (x - ref).mean()
    ref = x.narrow(dim, 0, 1)
    return ref + (x - ref).mean(dim=dim, keepdim=True)


def _scale(std_pop: Tensor, n: int, estimator: StdEstimator, eps: float) -> Tensor:
    """Divisor of the centred rewards from the population std of n values: max(std_pop, eps), or the Bessel
    std std_pop·√(n/(n − 1)) + eps."""
    if estimator == "population":
        return std_pop.clamp_min(eps)
    if estimator == "bessel":
        if n < 2:
            raise ValueError("std_estimator='bessel' needs at least 2 values per std (ddof 1)")
        return std_pop * math.sqrt(n / (n - 1)) + eps
    raise ValueError(f"std_estimator={estimator!r}; choose 'population' or 'bessel'")


def _clip(adv: Tensor, clip: Optional[float]) -> Tensor:
    if clip is None:
        return adv
    if clip <= 0:
        raise ValueError(f"advantage clip must be > 0 or None, got {clip}")
    return adv.clamp(-clip, clip)


def group_advantages(rewards: Tensor, *, std_scope: StdScope = "global", eps: float = 1e-6,
                     clip: Optional[float] = None, std_estimator: StdEstimator = "population") -> Tensor:
    """Â = (R − mean_group R) / max(std, eps)  (or / (std_bessel + eps)), rewards [P, G] → advantages [P, G]."""
    _check_layout(rewards, 2, "rewards")
    centred = rewards - _mean(rewards, dim=1)
    if std_scope == "group":
        if rewards.shape[1] < 2:
            raise ValueError("std_scope='group' needs a group size G >= 2 (a single sample has no spread);"
                             " raise group_size or use std_scope='global'")
        std = rewards.std(dim=1, keepdim=True, unbiased=False)
        n = rewards.shape[1]
    elif std_scope == "global":
        std = rewards.std(unbiased=False)
        n = rewards.numel()
    else:
        raise ValueError(f"std_scope={std_scope!r}; choose 'group' or 'global'")
    return _clip(centred / _scale(std, n, std_estimator, eps), clip)


def gdpo_advantages(rewards: Tensor, *, weights: Optional[Sequence[float]] = None, eps: float = 1e-6,
                    clip: Optional[float] = None, std_estimator: StdEstimator = "population") -> Tensor:
    """GDPO (paper §2.1, Eq. 5): normalise each reward within its group, weight, sum, then batch-normalise.

    rewards [P, G, K] → advantages [P, G].
      1. a_k = (r_k − mean_g r_k) / max(std_g r_k, eps)      per reward k, per group g
      2. s   = Σ_k w_k · a_k                                 (w_k = 1 by default: the paper's equal weights)
      3. Â   = (s − mean_batch s) / max(std_batch s, eps)
    (with std_estimator="bessel" every max(std, eps) is std_bessel + eps instead.)
    """
    _check_layout(rewards, 3, "rewards")
    k = rewards.shape[2]
    w = torch.ones(k, dtype=rewards.dtype, device=rewards.device) if weights is None else \
        torch.as_tensor(list(weights), dtype=rewards.dtype, device=rewards.device)
    if w.shape != (k,):
        raise ValueError(f"weights has {w.numel()} entries but rewards has K={k} rewards")
    per_reward = (rewards - _mean(rewards, dim=1)) / \
        _scale(rewards.std(dim=1, keepdim=True, unbiased=False), rewards.shape[1], std_estimator, eps)
    summed = (per_reward * w).sum(dim=2)
    return _clip((summed - _mean(summed)) / _scale(summed.std(unbiased=False), summed.numel(), std_estimator, eps),
                 clip)


def advantages_for(cfg: "Config", rewards_global: Tensor) -> Tensor:
    """The configured advantages: rewards [B_global, K] in prompt-major order (P prompts × G samples) →
    advantages [B_global].  GDPO normalises each reward, then weights (Eq. 5 per reward); the group rule weights
    the raw rewards first (config.reward_weights; equal weights when unset), then normalises (Eq. 5)."""
    r = rewards_global.reshape(cfg.prompts_per_iter, cfg.group_size, -1).double()
    if cfg.advantage == "gdpo":
        adv = gdpo_advantages(r, weights=cfg.reward_weights, eps=cfg.adv_eps, clip=cfg.adv_clip,
                              std_estimator=cfg.adv_std)
    else:
        w = torch.ones(r.shape[2], dtype=r.dtype) if cfg.reward_weights is None else \
            torch.tensor(cfg.reward_weights, dtype=r.dtype)
        adv = group_advantages((r * w).sum(2), std_scope=cfg.std_scope, eps=cfg.adv_eps, clip=cfg.adv_clip,
                               std_estimator=cfg.adv_std)
    return adv.reshape(-1).float()
