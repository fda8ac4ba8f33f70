"""The metric vocabulary: every key the trainer logs, with its meaning.  A test checks that every logged
key matches an entry here, so the analysis side can rely on the names.

metrics.jsonl holds one record per optimizer step.  Trust-region statistics are averaged over the
minibatch's samples and trained steps (`_max`/`_min`: extremes); `per_step.<σ index>.<stat>` repeats a
subset per trained step index.  KL "old" = KL(π_old‖π_θ) between the frozen anchor and the current policy.
"""
from __future__ import annotations

import re

STEP_METRICS: dict[str, str] = {
    "iteration": "rollout iteration index (0-based)",
    "epoch": "inner epoch over this rollout (0-based)",
    "minibatch": "minibatch index within the epoch",
    "opt_step": "optimizer steps taken so far (1-based, after this step)",
    "samples_seen": "rollout samples generated up to and including this iteration (all ranks)",
    "lr": "learning rate",
    "sde_indices": "denoising step indices trained in this iteration (SDE steps)",
    "time/step_s": "wall time of this optimizer step (forward+backward+optimizer), s",
    "time/rollout_s": "wall time of this iteration's rollout (sampling incl. reference means), s",
    "time/reward_s": "wall time of decoding + rewards + advantages, s",
    "reward/{name}_mean": "mean raw reward `name` over the global batch",
    "reward/{name}_std": "population std of reward `name` over the global batch",
    "reward/zero_std_groups": "fraction of prompt groups whose rewards are all equal (zero advantage)",
    "adv_abs_mean": "mean |advantage| over the global batch",
    "ref_kl_per_dim": "exact KL(π_old‖π_ref) per latent dim at the trained steps, mean over samples and steps",
    "ref_kl_sum": "the same summed over latent dims (Eq. 14 scale): ref_kl_per_dim × D",
    "ratio_mean": "mean ratio r = exp(log π_θ − log π_old) (reduction = config.logp_reduction)",
    "ratio_std": "std of r within a micro-batch step, averaged",
    "ratio_min": "minimum r", "ratio_max": "maximum r",
    "log_ratio_abs_mean": "mean |log r| (config.logp_reduction; with cps_logp=unnormalized on CPS, the 2σ²-scaled "
                          "log-ratio the surrogate uses)",
    "abs_log_ratio_per_dim_max": "largest per-dim |log r| (Eq. 6, normalized, formed exactly from the residuals) "
                                 "over the minibatch's samples and trained steps",
    "onpolicy/abs_log_ratio_max": "abs_log_ratio_per_dim_max of the iteration's first minibatch (epoch 0), where "
                                  "π_θ = π_old: exactly 0 when rollout and update compute the same policy (CPU), "
                                  "~1e-5 with batch-shape-dependent GPU kernels; above config.onpolicy_tolerance "
                                  "the run warns (flowdppo.onpolicy); repeated in every record of the iteration",
    "kl_sum_mean": "mean exact KL(π_old‖π_θ), Eq. 14 summed over dims", "kl_sum_max": "its maximum",
    "kl_per_dim_mean": "mean exact KL(π_old‖π_θ) per latent dim", "kl_per_dim_max": "its maximum",
    "k1": "mean of −log r (sample KL estimator k1: → KL(π_old‖π_θ) under π_old with summed log-probs)",
    "k3": "mean of (r − 1) − log r (sample KL estimator k3, the same limit)",
    "kl_exceeded": "fraction with KL_old > δ (in config.kl_reduction units)",
    "blocked_pos": "fraction masked with Â > 0 (pushing r above 1 past the trust region)",
    "blocked_neg": "fraction masked with Â ≤ 0",
    "blocked": "fraction masked (blocked_pos + blocked_neg)",
    "kept": "fraction contributing gradient (1 − blocked)",
    "ratio_clamped": "fraction whose |log r| hit the numerical clamp (should be 0)",
    "clip_frac": "ratio-clipping losses: fraction with |r − 1| > ε",
    "clip_frac_gradient": "flow_grpo: fraction whose gradient the clip removes",
    "guard_ratio_mean": "grpo_guard: mean re-normalised ratio",
    "kl_ref": "the β-penalised divergence to π_ref at trained steps (β > 0 only), config.kl_reduction units: the "
              "exact KL(π_θ‖π_ref) (beta_units=exact_kl) or ‖μ_θ − μ_ref‖² (mean_sq, = 2σ²·KL)",
    "kl_ref_loss": "β × mean kl_ref (β > 0 only)",
    "loss": "total loss (policy + β·KL_ref), mean over samples and trained steps",
    "policy_loss": "policy part of the loss",
    "grad_norm": "gradient norm before clipping",
    "nonfinite_skipped": "config.on_nonfinite=skip only: 1 if this step's loss or gradient norm was non-finite and the "
                         "step was skipped (gradients dropped; weights and optimizer state unchanged), else 0",
    "cf/sign_rule": "fraction with Â·(r − 1) > 0 (what the mask degenerates to for tiny δ)",
    "cf/clip_fire@{eps}": "counterfactual: fraction ratio clipping at ε would cut (per-dim log r); ε on a fixed "
                          "grid plus the run's clip_range and the ε matched to its δ, √(2δ/D)",
    "cf/mask_fire@{delta}": "counterfactual: fraction the asymmetric mask would block at per-dim δ (fixed grid "
                            "plus the run's δ)",
    "q/kl_old_per_dim@{q}": "quantile q of the per-sample KL_old per dim",
    "q/abs_log_ratio_per_dim@{q}": "quantile q of per-sample |log r| with per-dim log-probs",
    "per_step.{k}.{stat}": "stat (kl_per_dim_mean, ratio_mean, log_ratio_abs_mean, kl_exceeded, blocked_pos, "
                           "blocked_neg, kept, clip_frac, sign_rule, kl_old_per_dim@q, abs_log_ratio_per_dim@q "
                           "for q = 0.5, 0.9) restricted to trained step index k",
    "reward_log/{name}_mean": "mean of a logged-only reward (config.log_rewards, weight 0) over the global batch",
}

EVAL_METRICS: dict[str, str] = {
    "iteration": "iteration at which the evaluation ran (before that iteration's update)",
    "split": "prompt split: test (in-domain held-out), ood or transfer (never trained on; embedded world)",
    "n_images": "images evaluated",
    "diversity": "mean pairwise RMS distance among samples of one prompt",
    "{metric}": "world- or reward-specific metric (see flowdppo.world.evaluate_images / the reward names)",
}


def _pattern(template: str) -> re.Pattern:
    parts = re.split(r"\{[a-z]+\}", template)
    return re.compile("^" + "[^/]+?".join(re.escape(p) for p in parts) + "$")


_STEP_PATTERNS = [_pattern(k) for k in STEP_METRICS]


def undocumented_step_keys(record: dict) -> list[str]:
    """Keys of a metrics.jsonl record (per_step flattened) that the vocabulary does not cover."""
    keys = []
    for k, v in record.items():
        if k == "per_step":
            keys += [f"per_step.{i}.{s}" for i, d in v.items() for s in d]
        else:
            keys.append(k)
    return [k for k in keys if not any(p.match(k) for p in _STEP_PATTERNS)]
