"""The training loop — plumbing only; every formula it uses lives in sde / divergence / losses / advantages.

One iteration:
  1. draw P prompts (this rank's shard), G samples each;
  2. rollout: SDE at `sde_steps_per_traj` indices drawn from `sde_window`, ODE elsewhere; record states,
     actions, old means/std/log-probs (fp32) and, if needed, reference means at the trained steps;
  3. decode, score, gather rewards over ranks, compute advantages;
  4. num_inner_epochs × num_minibatches optimizer steps with the anchor frozen; gradients accumulate over
     micro-batches and trained steps; all-reduce; clip; AdamW;
  5. evaluate / checkpoint on schedule.

Assembly (components, σ grid, loss, parallel layout) is flowdppo.assembly; the per-step statistics are
flowdppo.diagnostics; the pinned evaluation is flowdppo.evaluation; the log's keys are flowdppo.metrics.
"""
from __future__ import annotations

import os
import signal
import time
from pathlib import Path
from typing import Callable, Optional, Sequence

import torch
from torch import Tensor

from . import dist, losses, nonfinite, onpolicy, preflight, rundir, sde
from .advantages import advantages_for
from .assembly import (Components, build_components, policy_loss_fn, progress_bar, setup_parallel,  # noqa: F401
                       sigma_grid, tensorboard_write, tensorboard_writer)
from .config import Config
from .diagnostics import StatAccumulator, reward_stats, step_statistics
from .divergence import delta_per_dim, gaussian_kl, matched_clip_eps
from .evaluation import evaluate
from .policy.base import Policy, sigma_batch
from .rewards.base import ChunkScorer, score
from .rollout import Trajectory, choose_sde_indices, derive_seed, replay_velocities, rollout
from .runlog import JsonlLog, atomic_write_json, git_commit, read_jsonl, versions

# Seed streams (the second part of derive_seed) — one per purpose so draws never alias.
_PROMPTS, _SDE_IDX, _NOISE, _SHUFFLE = 1, 2, 3, 4


# ----------------------------------------------------------------------------------------------------
# Building blocks
# ----------------------------------------------------------------------------------------------------
def minibatch_assignment(n_local: int, num_minibatches: int, *, seed: int, iteration: int, epoch: int,
                         first_global: int) -> list[list[int]]:
    """Split this rank's rows into balanced minibatches, identically for any world size.

    Rows are cut into consecutive blocks of M = num_minibatches samples (global block id = global index
    // M); each block sends one sample to each minibatch.  Epoch 0 uses the identity (row % M), later
    epochs a random permutation per block seeded by (seed, iteration, epoch, block).  Because blocks are
    global, a 2-rank run forms exactly the same global minibatches as a 1-rank run.
    """
    m = num_minibatches
    groups: list[list[int]] = [[] for _ in range(m)]
    for start in range(0, n_local, m):
        block = (first_global + start) // m
        if epoch == 0:
            perm = list(range(m))
        else:
            g = torch.Generator().manual_seed(derive_seed(seed, iteration, _SHUFFLE, epoch, block))
            perm = torch.randperm(m, generator=g).tolist()
        for offset in range(m):
            groups[perm[offset]].append(start + offset)
    return groups


def split_micro(rows: Sequence[int], micro: int) -> list[list[int]]:
    return [list(rows[i:i + micro]) for i in range(0, len(rows), micro)]


def update_minibatch(policy: Policy, traj: Trajectory, rows: list[int], adv: Tensor, cfg: Config,
                     loss_fn, params: list[torch.nn.Parameter], optimizer: torch.optim.Optimizer,
                     info: dist.DistInfo, where: str = "this step") -> dict:
    """One optimizer step on `rows` of the trajectory (anchor frozen).  Returns the step's log fields.
    A non-finite loss / gradient norm / parameter is handled by flowdppo.nonfinite (`where` names the step)."""
    optimizer.zero_grad(set_to_none=True)
    t_count = len(traj.sde_indices)
    denom = len(rows) * t_count  # loss = mean over (samples, trained steps), whatever the micro split
    total = StatAccumulator()
    per_step = [StatAccumulator() for _ in range(t_count)]
    log_ratio_all, kl_all, adv_all = ([[] for _ in range(t_count)] for _ in range(3))
    loss_sum = torch.zeros(()); pol_sum = torch.zeros(()); ref_sum = torch.zeros(())
    for micro in split_micro(rows, cfg.micro_size):
        idx = torch.as_tensor(micro, dtype=torch.long, device=traj.x.device)
        cond = traj.cond_rows(idx)
        a = adv[idx]
        batched = replay_velocities(policy, traj, idx, cfg.guidance_scale) if cfg.batched_replay else None
        replay_loss = torch.zeros(())
        for t, k in enumerate(traj.sde_indices):
            s, s_next = float(traj.sigmas[k]), float(traj.sigmas[k + 1])
            x = traj.x[idx, t]
            v = batched[t] if batched is not None else \
                policy.velocity(x, sigma_batch(s, len(micro), x), cond, guidance_scale=cfg.guidance_scale).float()
            st = sde.step(cfg.kernel, x=x, v=v, sigma=s, sigma_next=s_next, eta=cfg.eta, x_next=traj.x_next[idx, t])
            old_mean, x_next = traj.old_mean[idx, t], traj.x_next[idx, t]
            # no log-probs passed: the loss forms log r from the residuals, exact in fp32 (sde.log_ratio)
            per_sample, stats = loss_fn(mean=st.mean, old_mean=old_mean, std=st.std, advantages=a, sample=x_next)
            total_loss = per_sample
            if cfg.beta > 0:
                kl_ref = losses.kl_to_reference(mean=st.mean, ref_mean=traj.ref_mean[idx, t], std=st.std,
                                                reduction=cfg.kl_reduction, units=cfg.beta_units)
                total_loss = per_sample + cfg.beta * kl_ref
                stats["kl_ref"] = kl_ref.detach().mean()
                ref_sum += kl_ref.detach().sum()
            if batched is None:
                (total_loss.sum() / denom).backward()
            else:
                replay_loss = replay_loss + total_loss.sum() / denom
            loss_sum += total_loss.detach().sum(); pol_sum += per_sample.detach().sum()
            total.add(stats, len(micro))
            per_step[t].add(stats, len(micro))
            with torch.no_grad():
                log_ratio_all[t].append(sde.log_ratio(x_next, st.mean.detach(), old_mean, st.std, "per_dim"))
                kl_all[t].append(gaussian_kl(old_mean, st.mean.detach(), st.std, "per_dim"))
                adv_all[t].append(a)
        if batched is not None:
            replay_loss.backward()
    dist.average_gradients(params, info)
    grad_norm = dist.full_tensor(torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm))
    applied = nonfinite.guard_step(cfg, loss=loss_sum / denom, grad_norm=grad_norm, info=info, where=where)
    if applied:
        optimizer.step()
        nonfinite.check_parameters(cfg, params, info, where=where)
    else:   # on_nonfinite=skip: weights and optimizer state stay as they were
        optimizer.zero_grad(set_to_none=True)

    samples = [(torch.cat(log_ratio_all[t]), torch.cat(kl_all[t]), torch.cat(adv_all[t])) for t in range(t_count)]
    stats, step_block = step_statistics(cfg, traj, total, per_step, samples, info)
    stats.update(loss=loss_sum / denom, policy_loss=pol_sum / denom, grad_norm=grad_norm.detach())
    if cfg.beta > 0:
        stats["kl_ref_loss"] = cfg.beta * ref_sum / denom
    stats = dist.reduce_stats(stats, info)
    out = {k: float(v) for k, v in stats.items()}
    out["per_step"] = step_block
    if cfg.on_nonfinite == "skip":
        out["nonfinite_skipped"] = float(not applied)
    return out


# ----------------------------------------------------------------------------------------------------
# The loop
# ----------------------------------------------------------------------------------------------------
def _default_run_dir(cfg: Config) -> str:
    return f"runs/{cfg.loss}-{cfg.kernel}-s{cfg.seed}-{time.strftime('%Y%m%d-%H%M%S')}"


def _fault_hook(opt_step: int) -> None:
    """Fault injection for the resume test: FLOWDPPO_KILL_AFTER_STEP=n SIGKILLs this process right after
    optimizer step n has been logged (before any checkpoint of that iteration)."""
    target = os.environ.get("FLOWDPPO_KILL_AFTER_STEP")
    if target is not None and opt_step == int(target):
        os.kill(os.getpid(), signal.SIGKILL)


def train(cfg: Config, *, resume: bool = False, restart: bool = False, components: Optional[Components] = None,
          on_step: Optional[Callable[[int, Policy], None]] = None) -> Path:
    """Run (or resume) training; returns the run directory.

    resume: continue cfg.run_dir — that directory, wherever it now is — from its checkpoint (its config.json
    must equal cfg up to config.RESUME_MAY_CHANGE); restart (with resume): move its logs and checkpoints to
    replaced-<time>/ and train it again from iteration 0 (flowdppo.rundir has the rules).
    components: inject a policy/prompts/rewards (tests, notebooks); default builds them from cfg.
    on_step(opt_step, policy): called after every optimizer step (tests check cross-rank identity here).

    Everything checkable is checked before the first write (config fields, world size, the run directory
    and its checkpoint, the prompt file and rewards); a start that fails before its first optimizer step
    leaves nothing that blocks a retry."""
    cfg = cfg.validate()
    info = dist.init_from_env(cfg.device)
    if not cfg.run_dir:
        cfg = cfg.replace(run_dir=dist.broadcast_object(_default_run_dir(cfg), info))
    run_dir = Path(cfg.run_dir)
    preflight.check_world_size(cfg, info.world_size)
    if resume:
        rundir.check_resume_config(run_dir, cfg)
    plan = rundir.plan_on_rank0(run_dir, resume=resume, restart=restart, info=info)
    if components is None:
        preflight.check_inputs(cfg)
    lock = rundir.open_run(plan, info)      # the first write
    try:
        return _train(cfg, plan, info, components, on_step)
    finally:
        lock.release()


def _train(cfg: Config, plan: rundir.StartPlan, info: dist.DistInfo, components: Optional[Components],
           on_step: Optional[Callable[[int, Policy], None]]) -> Path:
    run_dir = plan.run_dir
    torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)  # the only global-RNG use: LoRA initialisation when building the policy
    comps = components or build_components(cfg.replace(device=dist.local_device(cfg.device)))
    policy = comps.policy
    # A checkpoint holds full tensors: load the weights before sharding, the optimizer state after.
    state = plan.state
    if state is not None:
        policy.load_trainable_state_dict(state["policy"])
    info = setup_parallel(cfg, policy, info)
    fsdp_roots = [m for m in policy.fsdp_roots() if m is not None] if info.fsdp else []
    params = [p for p in policy.trainable_parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=cfg.lr, betas=cfg.adam_betas, eps=cfg.adam_eps,
                                  weight_decay=cfg.weight_decay)
    loss_fn = policy_loss_fn(cfg)
    latent_dim = int(torch.tensor(policy.latent_shape).prod())
    train_items = comps.splits["train"]
    sigmas = sigma_grid(policy, cfg.num_steps, cfg.shift, cfg.sigma_grid)
    pool = cfg.sde_indices_pool()

    metrics_log, eval_log = JsonlLog(run_dir / "metrics.jsonl"), JsonlLog(run_dir / "eval.jsonl")
    start_iter, opt_step = 0, 0
    if state is not None:
        optimizer.load_state_dict(dist.shard_optimizer_state(optimizer, state["optimizer"]) if info.fsdp
                                  else state["optimizer"])
        start_iter, opt_step = state["iteration"], state["opt_step"]
        if info.is_main:
            metrics_log.truncate_to(state["metrics_lines"])
            eval_log.truncate_to(state["eval_lines"])
    checkpointed = f"iteration {start_iter}" if state is not None else "none yet"
    if info.is_main and plan.fresh:
        atomic_write_json(run_dir / "config.json", cfg.to_dict())
        atomic_write_json(run_dir / "run.json", {
            "latent_dim": latent_dim, "latent_shape": list(policy.latent_shape), "git_commit": git_commit(),
            "versions": versions(), "world_size": info.world_size, "fsdp": info.fsdp, "started": time.strftime("%Y-%m-%dT%H:%M:%S"),
            "threshold_units": f"delta is per-{cfg.kl_reduction} KL; D = {latent_dim}",
            "matched_clip_eps": matched_clip_eps(delta_per_dim(cfg.delta, cfg.kl_reduction, latent_dim), latent_dim)
            if cfg.kl_reduction == "per_dim" else None})
    dist.barrier(info)
    tb = tensorboard_writer(cfg, run_dir) if info.is_main else None

    # this rank's shard of each iteration's prompts / samples
    p_local = cfg.prompts_per_iter // info.world_size
    b_local = p_local * cfg.group_size
    first_global = info.rank * b_local
    global_rows = list(range(first_global, first_global + b_local))

    want_ref = cfg.beta > 0 or cfg.log_ref_kl
    bar = progress_bar(cfg, info, start_iter)
    # a finished run extended with more iterations already holds the evaluation at its last iteration
    # (decided on rank 0 and broadcast: under FSDP every rank must take the same evaluation branch)
    evaluated = dist.broadcast_object({r.get("iteration") for r in read_jsonl(eval_log.path)}
                                      if start_iter and info.is_main else set(), info)
    for it in range(start_iter, cfg.iterations):
        periodic = cfg.eval_every and it % cfg.eval_every == 0 and it >= cfg.eval_from
        if periodic and (info.is_main or info.fsdp) and it not in evaluated:
            evaluate(policy, comps, cfg, it, run_dir, eval_log, write=info.is_main)
        # --- 1. prompts and rollout ---------------------------------------------------------------
        t0 = time.perf_counter()
        g = torch.Generator().manual_seed(derive_seed(cfg.seed, it, _PROMPTS))
        chosen = torch.randperm(len(train_items), generator=g)[: cfg.prompts_per_iter].tolist()
        if len(chosen) < cfg.prompts_per_iter:
            chosen = (chosen * cfg.prompts_per_iter)[: cfg.prompts_per_iter]
        mine = chosen[info.rank * p_local:(info.rank + 1) * p_local]
        items = [train_items[i] for i in mine for _ in range(cfg.group_size)]
        cond = policy.encode_prompts([train_items[i].text for i in mine])   # one row per prompt
        needs_uncond = cfg.guidance_scale != 1 or (want_ref and cfg.ref_guidance_scale != 1)
        if not needs_uncond:  # unconditional embeddings unused: don't carry them
            cond = {k: v for k, v in cond.items() if not k.startswith("uncond_")}
        row_prompt = torch.arange(p_local, device=next(iter(cond.values())).device).repeat_interleave(cfg.group_size)
        sde_idx = choose_sde_indices(pool, cfg.sde_steps_per_traj,
                                     torch.Generator().manual_seed(derive_seed(cfg.seed, it, _SDE_IDX)))
        epoch0 = minibatch_assignment(b_local, cfg.num_minibatches, seed=cfg.seed, iteration=it, epoch=0,
                                      first_global=first_global)
        chunks = [m for mb in epoch0 for m in split_micro(mb, cfg.micro_size)]
        scorer = ChunkScorer(comps.rewards, items, policy.decode) if cfg.overlap_rewards else None
        with dist.gathered_for_inference(fsdp_roots, cfg.fsdp_gather_inference):
            traj = rollout(policy, cond, row_prompt, items, sigmas=sigmas, sde_indices=sde_idx, kernel=cfg.kernel,
                           eta=cfg.eta, guidance_scale=cfg.guidance_scale, seed=derive_seed(cfg.seed, _NOISE),
                           iteration=it, global_indices=global_rows, chunks=chunks, want_ref=want_ref,
                           ref_guidance_scale=cfg.ref_guidance_scale, on_chunk=scorer.submit if scorer else None)
        nonfinite.check_rollout(cfg, traj.final, traj.old_logp_per_dim, info,
                                where=f"iteration {it} (last checkpoint: {checkpointed})")
        # --- 2. rewards and advantages -----------------------------------------------------------
        t1 = time.perf_counter()
        if scorer is not None:
            images, rewards_local = scorer.collect()
        else:
            with torch.no_grad():
                images = policy.decode(traj.final)
                rewards_local = score(comps.rewards, images, items)
        rewards_all = dist.all_gather_cat(rewards_local, info)
        adv_all = advantages_for(cfg, rewards_all)
        adv = adv_all[first_global:first_global + b_local].to(traj.x.device)
        t2 = time.perf_counter()
        iter_fields = {"time/rollout_s": t1 - t0, "time/reward_s": t2 - t1, "sde_indices": sde_idx}
        iter_fields.update(reward_stats(cfg, list(comps.rewards), rewards_all, adv_all))
        if comps.log_rewards:
            with torch.no_grad():
                logged = dist.all_gather_cat(score(comps.log_rewards, images, items), info)
            iter_fields.update({f"reward_log/{n}_mean": float(logged[:, j].mean())
                                for j, n in enumerate(comps.log_rewards)})
        if traj.ref_mean is not None:
            with torch.no_grad():
                ref_kl = gaussian_kl(traj.old_mean.flatten(0, 1), traj.ref_mean.flatten(0, 1),
                                     traj.std.reshape(-1, *([1] * len(policy.latent_shape))), "per_dim")
            iter_fields["ref_kl_per_dim"] = float(dist.reduce_stats({"v": ref_kl.mean()}, info)["v"])
            iter_fields["ref_kl_sum"] = iter_fields["ref_kl_per_dim"] * latent_dim

        # --- 3. updates: inner epochs × minibatches, anchor frozen ---------------------------------
        for epoch in range(cfg.num_inner_epochs):
            mbs = epoch0 if epoch == 0 else minibatch_assignment(
                b_local, cfg.num_minibatches, seed=cfg.seed, iteration=it, epoch=epoch, first_global=first_global)
            for j, rows in enumerate(mbs):
                ts = time.perf_counter()
                where = (f"iteration {it}, optimizer step {opt_step + 1} (epoch {epoch}, minibatch {j}; last "
                         f"checkpoint: {checkpointed})")
                fields = update_minibatch(policy, traj, rows, adv, cfg, loss_fn, params, optimizer, info, where)
                if epoch == 0 and j == 0:   # π_θ = π_old here: any |log r| > 0 is rollout/update disagreement
                    iter_fields["onpolicy/abs_log_ratio_max"] = fields["abs_log_ratio_per_dim_max"]
                    if info.is_main:
                        onpolicy.check(fields["abs_log_ratio_per_dim_max"], cfg.onpolicy_tolerance, iteration=it)
                opt_step += 1
                record = {"iteration": it, "epoch": epoch, "minibatch": j, "opt_step": opt_step,
                          "samples_seen": (it + 1) * cfg.batch_size, "lr": cfg.lr,
                          "time/step_s": time.perf_counter() - ts, **iter_fields, **fields}
                if info.is_main:
                    metrics_log.append(record)
                    tensorboard_write(tb, record, opt_step)
                if on_step is not None:
                    on_step(opt_step, policy)
                _fault_hook(opt_step)
        if info.is_main and bar is not None:
            bar.update(1)
            bar.set_postfix(reward=f"{iter_fields[f'reward/{next(iter(comps.rewards))}_mean']:.3f}",
                            kept=f"{fields.get('kept', float('nan')):.2f}", refresh=False)
        # --- 4. evaluation and checkpoint --------------------------------------------------------
        last = it + 1 == cfg.iterations
        if last and cfg.eval_every and (info.is_main or info.fsdp):
            evaluate(policy, comps, cfg, it + 1, run_dir, eval_log, write=info.is_main)
        if last or (cfg.checkpoint_every and (it + 1) % cfg.checkpoint_every == 0):
            if info.fsdp:   # collective: shards gathered into full tensors on rank 0
                weights = dist.gather_full_state(policy.fsdp_roots()[0].state_dict(), info)
                opt_state = dist.gather_full_state(optimizer.state_dict(), info)
            elif info.is_main:
                weights, opt_state = policy.trainable_state_dict(), optimizer.state_dict()
            if info.is_main:
                rundir.save_checkpoint(run_dir, {"iteration": it + 1, "opt_step": opt_step, "policy": weights,
                                                 "optimizer": opt_state, "world_size": info.world_size,
                                                 "metrics_lines": metrics_log.lines, "eval_lines": eval_log.lines,
                                                 "config": cfg.to_dict()})
            checkpointed = f"iteration {it + 1}"
        dist.barrier(info)
    if bar is not None:
        bar.close()
    if tb is not None:
        tb.close()
    return run_dir
