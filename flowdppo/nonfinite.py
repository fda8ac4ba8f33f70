"""Catch divergence where it happens: a non-finite loss or gradient norm before the optimizer step is applied,
a non-finite parameter right after it, and non-finite samples or log-probs in a rollout (weights that are
finite but so large that the policy's outputs overflow — otherwise first seen as a "NaN reward").  Every
verdict is one host sync and the same on every rank (a rank that stepped while another skipped would
split the replicas).

config.on_nonfinite = "stop" raises DivergenceError naming the step, the quantity and the likely causes;
"skip" drops the step (gradients zeroed, weights and optimizer state untouched) and the trainer logs
nonfinite_skipped = 1 for it.  A non-finite parameter always stops: an applied step cannot be skipped.
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor

from . import dist
from .config import Config
from .errors import DivergenceError


def _local(t: Tensor) -> Tensor:
    return t.to_local() if dist._is_dtensor(t) else t


def _all_ranks_true(flags: Tensor, info: dist.DistInfo) -> list[bool]:
    """flags [k] (1 = fine) → per entry: fine on every rank."""
    if info.enabled:
        flags = dist.reduce_stats({"ok_min": flags.float()}, info)["ok_min"]
    return [bool(v) for v in flags.float().cpu().tolist()]


def step_is_finite(loss: Tensor, grad_norm: Tensor, info: dist.DistInfo) -> tuple[bool, bool]:
    """(loss finite on every rank, gradient norm finite): 0-d tensors, one host sync."""
    g = _local(grad_norm.detach())
    flags = torch.stack([torch.isfinite(loss.detach().to(g.device)).all(), torch.isfinite(g).all()])
    ok_loss, ok_grad = _all_ranks_true(flags, info)
    return ok_loss, ok_grad


def parameters_are_finite(params: Sequence[Tensor], info: dist.DistInfo) -> bool:
    """Every entry of every parameter (this rank's shards under FSDP) finite on every rank: one pass over the
    parameters, one host sync per device."""
    per_device: dict[torch.device, list[Tensor]] = {}
    for p in params:
        t = _local(p.detach())
        per_device.setdefault(t.device, []).append(torch.isfinite(t).all())
    device = next(iter(per_device)) if per_device else torch.device("cpu")
    ok = torch.stack([torch.stack(v).all().to(device) for v in per_device.values()]).all() if per_device else \
        torch.ones((), dtype=torch.bool)
    return _all_ranks_true(ok.reshape(1), info)[0]


def _causes(cfg: Config) -> str:
    return (f"Likely causes: lr={cfg.lr:g} too high, max_grad_norm={cfg.max_grad_norm:g} too loose, or a model / "
            "reward producing inf")


def guard_step(cfg: Config, *, loss: Tensor, grad_norm: Tensor, info: dist.DistInfo, where: str) -> bool:
    """True: apply the optimizer step.  False: skip it (on_nonfinite=skip).  Raises DivergenceError under
    on_nonfinite=stop.  `where` names the step for the message (iteration, optimizer step, checkpoint)."""
    ok_loss, ok_grad = step_is_finite(loss, grad_norm, info)
    if ok_loss and ok_grad:
        return True
    if cfg.on_nonfinite == "skip":
        return False
    what = " and ".join(q for q, ok in (("loss", ok_loss), ("gradient norm", ok_grad)) if not ok)
    raise DivergenceError(
        f"non-finite {what} at {where} (loss {float(loss):.4g}, gradient norm {float(_local(grad_norm)):.4g}); "
        f"the optimizer step was not applied (no checkpoint holds its result). {_causes(cfg)}. Fix: "
        "start a new run with a lower lr or max_grad_norm, or resume this one with on_nonfinite=skip to skip such "
        "steps (each logged as nonfinite_skipped = 1)")


def check_parameters(cfg: Config, params: Sequence[Tensor], info: dist.DistInfo, *, where: str) -> None:
    """Raise DivergenceError if the step just applied made a parameter non-finite (whatever on_nonfinite)."""
    if parameters_are_finite(params, info):
        return
    bad = sum(int((~torch.isfinite(_local(p.detach()))).sum()) for p in params)
    total = sum(_local(p).numel() for p in params)
    raise DivergenceError(
        f"non-finite parameters after the optimizer step at {where}: {bad} of {total} trainable values (this "
        f"rank) are NaN or inf; no checkpoint holds them (a step already applied cannot be skipped). "
        f"{_causes(cfg)}, or weight_decay={cfg.weight_decay:g} × lr above 1. Fix: start a new run "
        "with a lower lr")


def check_rollout(cfg: Config, final: Tensor, old_logp: Tensor, info: dist.DistInfo, *, where: str) -> None:
    """Raise DivergenceError if a rollout's samples (final latents) or log-probs are non-finite: the policy
    has diverged, and scoring its samples would only blame the reward."""
    ok_samples, ok_logp = _all_ranks_true(torch.stack([torch.isfinite(final).all(),
                                                       torch.isfinite(old_logp).all().to(final.device)]), info)
    if ok_samples and ok_logp:
        return
    what = " and ".join(q for q, ok in (("samples", ok_samples), ("log-probs", ok_logp)) if not ok)
    raise DivergenceError(
        f"non-finite {what} in the rollout of {where}: the policy's weights (finite after the last optimizer step) "
        f"make its outputs overflow — training has diverged. {_causes(cfg)}. Fix: start a new run with a lower lr "
        "or max_grad_norm")


def check_evaluation(cfg: Config, images: Tensor, *, where: str) -> None:
    """Raise DivergenceError if the pinned evaluation sampled non-finite images (checked before any metric)."""
    if bool(torch.isfinite(images).all()):
        return
    raise DivergenceError(
        f"non-finite images in the pinned evaluation of {where}: the policy's outputs overflow — training has "
        f"diverged. {_causes(cfg)}. Fix: start a new run with a lower lr or max_grad_norm")
