"""Rollouts: G trajectories per prompt with SDE steps at a few indices (MixGRPO) and ODE steps elsewhere.

At each trained (SDE) step the trajectory records the state, the action, the old mean, the kernel's std
and the old log-prob, so the Flow-DPPO KL needs no extra forward pass.  When asked, reference means at
the trained steps are computed once per rollout (not once per update).

Determinism: every sample's noise comes from its own generator seeded by (seed, iteration, global sample
index), so a rollout does not depend on how the batch is chunked or sharded over ranks.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional, Sequence

import torch
from torch import Tensor

from . import sde
from .policy.base import Cond, Policy, cond_index, sigma_batch
from .prompts import PromptItem


def derive_seed(*parts: int) -> int:
    """A 63-bit seed from integers (SplitMix64 mixing), stable across processes and platforms."""
    x = 0x9E3779B97F4A7C15
    for p in parts:
        x = (x ^ (int(p) & 0xFFFFFFFFFFFFFFFF)) * 0xBF58476D1CE4E5B9 & 0xFFFFFFFFFFFFFFFF
        x = (x ^ (x >> 27)) * 0x94D049BB133111EB & 0xFFFFFFFFFFFFFFFF
        x ^= x >> 31
    return x & 0x7FFFFFFFFFFFFFFF


def choose_sde_indices(pool: Sequence[int], count: int, generator: torch.Generator) -> list[int]:
    """`count` distinct step indices from `pool`, shared by the whole batch (sorted)."""
    perm = torch.randperm(len(pool), generator=generator)[:count]
    return sorted(pool[i] for i in perm.tolist())


@dataclass
class Trajectory:
    """A rollout batch.  B samples, T trained steps, latent shape L.

    x, x_next, old_mean, ref_mean: [B, T, *L] (fp32 anchors); std, old_logp_*: [B, T];
    final: [B, *L] the generated latents; sigmas: [K+1] fp64 grid; sde_indices: T step indices.
    cond holds one row per PROMPT and row_prompt [B] maps samples to it, so a group's G samples share one
    copy of the (possibly large) text embeddings; `cond_rows` gathers them per micro-batch."""
    items: list[PromptItem]
    cond: Cond
    row_prompt: Tensor
    sigmas: Tensor
    sde_indices: list[int]
    x: Tensor
    x_next: Tensor
    old_mean: Tensor
    std: Tensor
    old_logp_per_dim: Tensor
    old_logp_sum: Tensor
    ref_mean: Optional[Tensor]
    final: Tensor

    def cond_rows(self, idx: Tensor) -> Cond:
        return cond_index(self.cond, self.row_prompt[idx])


def replay_velocities(policy: Policy, traj: Trajectory, idx: Tensor, guidance_scale: float = 1.0) -> list[Tensor]:
    """Velocities at every trained SDE step of rows `idx` from ONE policy forward (config.batched_replay): the
    steps' states stacked step-major, each row with its own σ, the conditioning repeated per step.  Element t is
    the [len(idx), …] velocity at step traj.sde_indices[t], as the per-step replay computes it."""
    n, steps = len(idx), len(traj.sde_indices)
    x = traj.x[idx].transpose(0, 1).reshape(n * steps, *traj.x.shape[2:])
    sigma = torch.cat([sigma_batch(float(traj.sigmas[k]), n, x) for k in traj.sde_indices])
    v = policy.velocity(x, sigma, traj.cond_rows(idx.repeat(steps)), guidance_scale=guidance_scale).float()
    return list(v.split(n))


def sample_generators(seed: int, iteration: int, indices: Sequence[int], device) -> list[torch.Generator]:
    gens = []
    for j in indices:
        g = torch.Generator(device=device)
        g.manual_seed(derive_seed(seed, iteration, j))
        gens.append(g)
    return gens


def _randn(gens: list[torch.Generator], shape: tuple[int, ...], device) -> Tensor:
    return torch.stack([torch.randn(shape, generator=g, device=device) for g in gens])


@torch.no_grad()
def rollout(policy: Policy, cond: Cond, row_prompt: Tensor, items: list[PromptItem], *, sigmas: Tensor,
            sde_indices: list[int],
            kernel: str, eta: float, guidance_scale: float, seed: int, iteration: int,
            global_indices: Sequence[int], chunks: Sequence[Sequence[int]], want_ref: bool = False,
            ref_guidance_scale: float = 1.0, on_chunk: Optional[Callable[[list[int], Tensor], None]] = None
            ) -> Trajectory:
    """Sample one batch of trajectories.

    cond: one row per prompt; row_prompt [B]: the prompt row of each sample; items: B samples (local to this
    rank); global_indices[b]: global sample index of row b (seeds its
    noise); chunks: row-index lists whose forwards run together — the trainer passes its epoch-0
    micro-batches so the first update replays the exact same forward geometry (ratio ≡ 1, docs/failure_modes.md: on-policy identity).
    on_chunk(rows, final latents of those rows): called as each chunk finishes (rewards.base.ChunkScorer scores it
    in the background while the next chunk is generated).
    """
    device = next(iter(cond.values())).device
    b_total = len(items)
    shape = tuple(policy.latent_shape)
    t_count = len(sde_indices)
    step_of = {k: i for i, k in enumerate(sde_indices)}
    gens = sample_generators(seed, iteration, global_indices, device)
    x0 = _randn(gens, shape, device)                                   # [B, *L] at σ = 1
    noises = [_randn(gens, shape, device) for _ in range(t_count)]       # one draw per SDE step
    f32 = dict(dtype=torch.float32, device=device)
    out = dict(x=torch.empty(b_total, t_count, *shape, **f32), x_next=torch.empty(b_total, t_count, *shape, **f32),
               old_mean=torch.empty(b_total, t_count, *shape, **f32), std=torch.empty(b_total, t_count, **f32),
               lp_d=torch.empty(b_total, t_count, **f32), lp_s=torch.empty(b_total, t_count, **f32))
    ref_mean = torch.empty(b_total, t_count, *shape, **f32) if want_ref else None
    final = torch.empty(b_total, *shape, **f32)
    for rows in chunks:
        idx = torch.as_tensor(list(rows), device=device, dtype=torch.long)
        c = cond_index(cond, row_prompt[idx])
        x = x0[idx]
        for k in range(len(sigmas) - 1):
            s, s_next = float(sigmas[k]), float(sigmas[k + 1])
            v = policy.velocity(x, sigma_batch(s, len(idx), x), c, guidance_scale=guidance_scale).float()
            if k in step_of:
                t = step_of[k]
                st = sde.step(kernel, x=x, v=v, sigma=s, sigma_next=s_next, eta=eta, noise=noises[t][idx])
                out["x"][idx, t], out["x_next"][idx, t], out["old_mean"][idx, t] = x, st.x_next, st.mean
                out["std"][idx, t] = st.std.reshape(-1).expand(len(idx))
                out["lp_d"][idx, t], out["lp_s"][idx, t] = st.logp_per_dim, st.logp_sum
                if want_ref:
                    with policy.reference():
                        v_ref = policy.velocity(x, sigma_batch(s, len(idx), x), c,
                                                guidance_scale=ref_guidance_scale).float()
                    ref_mean[idx, t] = sde.transition_mean(kernel, x, v_ref, s, s_next, eta)
                x = st.x_next
            else:
                x = sde.step("ode", x=x, v=v, sigma=s, sigma_next=s_next, eta=0.0).x_next
        final[idx] = x
        if on_chunk is not None:
            on_chunk(list(rows), x)
    return Trajectory(items=items, cond=cond, row_prompt=row_prompt, sigmas=sigmas, sde_indices=list(sde_indices), x=out["x"],
                      x_next=out["x_next"], old_mean=out["old_mean"], std=out["std"],
                      old_logp_per_dim=out["lp_d"], old_logp_sum=out["lp_s"], ref_mean=ref_mean, final=final)


@torch.no_grad()
def sample_ode(policy: Policy, cond: Cond, *, sigmas: Tensor, guidance_scale: float,
               generators: list[torch.Generator], batch: int = 64) -> Tensor:
    """Deterministic (ODE/Euler) samples from per-sample generators — the pinned evaluation regime."""
    device = next(iter(cond.values())).device
    x_all = _randn(generators, tuple(policy.latent_shape), device)
    outs = []
    for start in range(0, x_all.shape[0], batch):
        idx = torch.arange(start, min(start + batch, x_all.shape[0]), device=device)
        c, x = cond_index(cond, idx), x_all[idx]
        for k in range(len(sigmas) - 1):
            s, s_next = float(sigmas[k]), float(sigmas[k + 1])
            v = policy.velocity(x, sigma_batch(s, len(idx), x), c, guidance_scale=guidance_scale).float()
            x = sde.step("ode", x=x, v=v, sigma=s, sigma_next=s_next, eta=0.0).x_next
        outs.append(x)
    return torch.cat(outs)
