"""Diagnostics of an optimizer step: sample-weighted statistics over micro-batches and trained steps, the
counterfactual firing rates of other trust regions on this step's samples, quantiles of KL_old and |log r|,
and the per-step blocks of the log.  Every key written here is documented in flowdppo.metrics."""
from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor

from . import dist, losses, metrics
from .config import Config
from .rollout import Trajectory

from .metrics import QUANTILES, cf_clip_grid, cf_delta_grid


class StatAccumulator:
    """Sample-weighted means of 0-d stats, or the extreme for keys that metrics.reduction says are one."""

    def __init__(self):
        self.sums: dict[str, Tensor] = {}
        self.weights: dict[str, float] = {}

    def add(self, stats: dict[str, Tensor], weight: float) -> None:
        for k, v in stats.items():
            v = v.detach().float()
            how = metrics.reduction(k)
            if how == "max":
                self.sums[k] = torch.maximum(self.sums[k], v) if k in self.sums else v
                self.weights[k] = 1.0
            elif how == "min":
                self.sums[k] = torch.minimum(self.sums[k], v) if k in self.sums else v
                self.weights[k] = 1.0
            else:
                self.sums[k] = self.sums.get(k, 0.0) + v * weight
                self.weights[k] = self.weights.get(k, 0.0) + weight

    def result(self) -> dict[str, Tensor]:
        return {k: (v if metrics.reduction(k) != "mean" else v / self.weights[k]) for k, v in self.sums.items()}


def step_statistics(cfg: Config, traj: Trajectory, total: StatAccumulator, per_step: Sequence[StatAccumulator],
                    samples: Sequence[tuple[Tensor, Tensor, Tensor]], info: dist.DistInfo) -> tuple[dict, dict]:
    """The step's top-level stats (means over samples and trained steps, counterfactual rates, quantiles)
    and its `per_step` block.  samples[t] = (per-dim log r, per-dim KL_old, advantages) of trained step t."""
    log_ratio, kl_d, a = (torch.cat([p[i] for p in samples]) for i in range(3))
    d = traj.x[0, 0].numel()
    stats = total.result()
    stats.update({f"cf/{k}": v for k, v in losses.counterfactual_rates(
        log_ratio=log_ratio, kl_per_dim=kl_d, advantages=a, clip_eps=cf_clip_grid(cfg, d),
        deltas=cf_delta_grid(cfg, d)).items()})
    for q in QUANTILES:
        stats[f"q/kl_old_per_dim@{q:g}"] = torch.quantile(kl_d.double(), q).float()
        stats[f"q/abs_log_ratio_per_dim@{q:g}"] = torch.quantile(log_ratio.abs().double(), q).float()
    stats["abs_log_ratio_per_dim_max"] = log_ratio.abs().max()
    step_block = {}
    for t, k in enumerate(traj.sde_indices):
        ps = dist.reduce_stats(per_step[t].result(), info)
        block = {key: float(ps[key]) for key in metrics.PER_STEP_KEYS if key in ps}
        lr_t, kl_t, a_t = samples[t]
        extra = {"sign_rule": ((a_t * lr_t) > 0).float().mean()}
        for q in QUANTILES[:2]:
            extra[f"kl_old_per_dim@{q:g}"] = torch.quantile(kl_t.double(), q).float()
            extra[f"abs_log_ratio_per_dim@{q:g}"] = torch.quantile(lr_t.abs().double(), q).float()
        block.update({key: float(v) for key, v in dist.reduce_stats(extra, info).items()})
        step_block[str(k)] = block
    return stats, step_block


def reward_stats(cfg: Config, names: Sequence[str], rewards: Tensor, adv: Tensor) -> dict:
    """Per-reward mean/std over the global batch, the share of zero-variance groups, mean |advantage|."""
    out = {}
    for j, name in enumerate(names):
        out[f"reward/{name}_mean"] = float(rewards[:, j].mean())
        out[f"reward/{name}_std"] = float(rewards[:, j].std(unbiased=False))
    grouped = rewards.reshape(cfg.prompts_per_iter, cfg.group_size, -1)
    out["reward/zero_std_groups"] = float((grouped.std(dim=1, unbiased=False) < 1e-12).all(-1).float().mean())
    out["adv_abs_mean"] = float(adv.abs().mean())
    return out
