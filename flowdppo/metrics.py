"""The metric vocabulary: every key a run logs, with its meaning, and the exact key set a given config logs.

`expected_step_keys(cfg, latent_dim)` / `expected_per_step_keys(cfg)` / `expected_eval_keys(cfg, split)` expand
the documented families (one key per reward, per counterfactual ε and δ, per quantile) into concrete keys;
tests/test_metrics_vocabulary.py fails on any key a run logs that is not in that set, and on any key of the
set that the run never logs.  docs/metrics.md is generated from this module (`python -m flowdppo.metrics`).

metrics.jsonl holds one record per optimizer step.  Trust-region statistics are averaged over the
minibatch's samples and trained steps (`_max`/`_min`: extremes); `per_step.<σ index>.<stat>` repeats a
subset per trained step index.  KL "old" = KL(π_old‖π_θ) between the frozen anchor and the current policy.
"""
from __future__ import annotations

from typing import Literal

Reduction = Literal["mean", "max", "min"]

PER_STEP_KEYS = ("kl_per_dim_mean", "ratio_mean", "log_ratio_abs_mean", "kl_exceeded", "blocked_pos",
                 "blocked_neg", "kept", "clip_frac")
"""Stats repeated per trained step index in a record's `per_step` block (the full set is averaged over steps
at the top level); the per-step block adds sign_rule and the 0.5 / 0.9 quantiles."""


def reduction(key: str) -> Reduction:
    """How a stat combines over micro-batches, trained steps and ranks: an extreme for `*_max` / `*_min`
    keys, else the sample-weighted mean.  The one place this rule is written."""
    if key.endswith("_max"):
        return "max"
    if key.endswith("_min"):
        return "min"
    return "mean"

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
    "reward/zero_std_groups": "fraction of prompt groups whose rewards are all equal (zero advantage)",
    "adv_abs_mean": "mean |advantage| over the global batch",
    "ref_kl_per_dim": "exact KL(π_old‖π_ref) per latent dim at the trained steps, mean over samples and steps",
    "ref_kl_sum": "the same summed over latent dims (Eq. 14 scale): ref_kl_per_dim × D",
    "ratio_mean": "mean ratio r = exp(log π_θ − log π_old) (reduction = config.logp_reduction)",
    "ratio_std": "std of r within a micro-batch step, averaged",
    "ratio_min": "minimum ratio r over the minibatch", "ratio_max": "maximum ratio r over the minibatch",
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
}


STEP_FAMILIES: dict[str, str] = {
    "reward/<name>_mean": "mean raw reward `name` over the global batch",
    "reward/<name>_std": "population std of reward `name` over the global batch",
    "cf/clip_fire@<ε>": "counterfactual: fraction ratio clipping at ε would cut (per-dim log r); ε on a fixed "
                          "grid plus the run's clip_range and the ε matched to its δ, √(2δ/D)",
    "cf/mask_fire@<δ>": "counterfactual: fraction the asymmetric mask would block at per-dim δ (fixed grid "
                            "plus the run's δ)",
    "q/kl_old_per_dim@<q>": "quantile q of the per-sample KL_old per dim",
    "q/abs_log_ratio_per_dim@<q>": "quantile q of per-sample |log r| with per-dim log-probs",
    "per_step.<k>.<stat>": "stat (kl_per_dim_mean, ratio_mean, log_ratio_abs_mean, kl_exceeded, blocked_pos, "
                           "blocked_neg, kept, clip_frac, sign_rule, kl_old_per_dim@q, abs_log_ratio_per_dim@q "
                           "for q = 0.5, 0.9) restricted to trained step index k",
    "reward_log/<name>_mean": "mean of a logged-only reward (config.log_rewards, weight 0) over the global batch",
}
"""Keys with a part that depends on the config; `expected_step_keys` expands each into concrete keys."""

EVAL_METRICS: dict[str, str] = {
    "iteration": "iteration at which the evaluation ran (before that iteration's update)",
    "split": "prompt split: test (in-domain held-out), ood or transfer (never trained on; embedded world)",
    "n_images": "images evaluated",
    "diversity": "mean pairwise RMS distance among the samples of one prompt",
}
"""Keys of every eval.jsonl record."""

WORLD_EVAL_METRICS: dict[str, str] = {
    "tifa": "embedded world: soft TIFA, the geometric mean over a prompt's atoms of the reward classifier's probability",
    "accuracy": "embedded world: fraction of images with every cell right (as the reward classifier reads it)",
    "agreement": "embedded world: prompt–image agreement by the independent judge (a classifier never trained on)",
    "realism": "embedded world: −(mean distance of a cell to its 5 nearest real digits) / that distance for real digits",
    "ink": "embedded world: mean pixel intensity (the hackable preference)",
    "fid": "embedded world: Fréchet distance of the judge's features, generated digit cells vs real digits",
}
"""Keys the embedded world adds to every evaluation (flowdppo.world.evaluate_images)."""

WORLD_MIXED_EVAL_METRICS: dict[str, str] = {
    "tifa_3digit": "tifa over the split's 3-digit layouts", "accuracy_3digit": "accuracy over its 3-digit layouts",
    "tifa_4digit": "tifa over the split's 4-digit layouts", "accuracy_4digit": "accuracy over its 4-digit layouts",
}
"""Embedded world, on a split that mixes 3- and 4-digit layouts only."""

QUANTILES = tuple(p / 100 for p in (50, 90, 99))
"""Quantiles of KL_old and |log r| logged per step (q/…); the per-step blocks keep the first two."""

LOSS_KEYS: dict[str, tuple[str, ...]] = {
    "flow_dppo": ("kl_exceeded", "blocked_pos", "blocked_neg", "blocked", "kept"),
    "flow_dppo_symmetric": ("kl_exceeded", "blocked_pos", "blocked_neg", "blocked", "kept"),
    "flow_dppo_predictive": ("kl_exceeded", "blocked_pos", "blocked_neg", "blocked", "kept"),
    "flow_grpo": ("clip_frac", "clip_frac_gradient"),
    "grpo_guard": ("clip_frac", "guard_ratio_mean"),
    "no_trust_region": (),
}
"""The statistics each loss adds to the shared ones (one entry per loss of losses.POLICY_LOSSES; a test ties them)."""

_SHARED = ("iteration", "epoch", "minibatch", "opt_step", "samples_seen", "lr", "sde_indices", "time/step_s",
           "time/rollout_s", "time/reward_s", "reward/zero_std_groups", "adv_abs_mean", "ratio_mean", "ratio_std",
           "ratio_min", "ratio_max", "log_ratio_abs_mean", "abs_log_ratio_per_dim_max", "onpolicy/abs_log_ratio_max",
           "kl_sum_mean", "kl_sum_max", "kl_per_dim_mean", "kl_per_dim_max", "k1", "k3", "ratio_clamped", "loss",
           "policy_loss", "grad_norm", "cf/sign_rule")
_PER_STEP_SHARED = ("kl_per_dim_mean", "ratio_mean", "log_ratio_abs_mean", "sign_rule")


def cf_clip_grid(cfg, latent_dim: int) -> tuple[float, ...]:
    """Counterfactual ε grid: the fixed grid, this run's clip ε and the ε matched to its δ (√(2δ/D))."""
    from .divergence import delta_per_dim, matched_clip_eps
    from .losses import CLIP_EPS_GRID
    eps_matched = matched_clip_eps(delta_per_dim(cfg.delta, cfg.kl_reduction, latent_dim), latent_dim)
    extra = (float(f"{cfg.clip_range:.2g}"), float(f"{eps_matched:.2g}"))
    return tuple(sorted(set(CLIP_EPS_GRID) | set(extra)))


def cf_delta_grid(cfg, latent_dim: int) -> tuple[float, ...]:
    """Counterfactual per-dim δ grid: the fixed grid plus this run's δ."""
    from .divergence import delta_per_dim
    from .losses import DELTA_GRID
    return tuple(sorted(set(DELTA_GRID) | {float(f"{delta_per_dim(cfg.delta, cfg.kl_reduction, latent_dim):.2g}")}))


def expected_step_keys(cfg, latent_dim: int) -> set[str]:
    """The top-level keys of every metrics.jsonl record of a run with this config (per_step aside)."""
    keys = set(_SHARED) | set(LOSS_KEYS[cfg.loss]) | {"per_step"}
    keys |= {f"reward/{n}_{s}" for n in cfg.rewards for s in ("mean", "std")}
    keys |= {f"reward_log/{n}_mean" for n in cfg.log_rewards}
    keys |= {f"cf/clip_fire@{e:g}" for e in cf_clip_grid(cfg, latent_dim)}
    keys |= {f"cf/mask_fire@{d:g}" for d in cf_delta_grid(cfg, latent_dim)}
    keys |= {f"q/{k}@{q:g}" for k in ("kl_old_per_dim", "abs_log_ratio_per_dim") for q in QUANTILES}
    if cfg.beta > 0:
        keys |= {"kl_ref", "kl_ref_loss"}
    if cfg.beta > 0 or cfg.log_ref_kl:
        keys |= {"ref_kl_per_dim", "ref_kl_sum"}
    if cfg.on_nonfinite == "skip":
        keys.add("nonfinite_skipped")
    return keys


def expected_per_step_keys(cfg) -> set[str]:
    """The stats of each `per_step.<k>` block."""
    keys = set(_PER_STEP_SHARED) | (set(PER_STEP_KEYS) & set(LOSS_KEYS[cfg.loss]))
    return keys | {f"{k}@{q:g}" for k in ("kl_old_per_dim", "abs_log_ratio_per_dim") for q in QUANTILES[:2]}


def expected_eval_keys(cfg, mixed_layouts: bool = False) -> set[str]:
    """The keys of an eval.jsonl record; mixed_layouts: the split mixes 3- and 4-digit layouts (embedded world)."""
    keys = set(EVAL_METRICS)
    if cfg.model == "embedded":
        keys |= set(WORLD_EVAL_METRICS) | (set(WORLD_MIXED_EVAL_METRICS) if mixed_layouts else set())
    else:
        keys |= set(cfg.rewards)
    return keys


def undocumented_step_keys(record: dict, cfg, latent_dim: int) -> list[str]:
    """Keys of a metrics.jsonl record (per_step flattened to per_step.<k>.<stat>) outside this config's set."""
    top, stats = expected_step_keys(cfg, latent_dim), expected_per_step_keys(cfg)
    bad = [k for k in record if k not in top]
    bad += [f"per_step.{i}.{s}" for i, block in record.get("per_step", {}).items() for s in block if s not in stats]
    return bad


def markdown() -> str:
    """docs/metrics.md: the vocabulary as tables."""
    out = ["# Metric vocabulary", "", "Generated from `flowdppo/metrics.py` by `python -m flowdppo.metrics > docs/metrics.md`;",
           "a test fails when this file and the module disagree.  `metrics.jsonl` holds one record per optimizer",
           "step, `eval.jsonl` one per split per evaluation.  Statistics combine over micro-batches, trained steps",
           "and ranks by `reduction(key)`: an extreme for `*_max` / `*_min`, else the sample-weighted mean.", ""]
    sections = [("Training records (every run)", {k: v for k, v in STEP_METRICS.items()}),
                ("Training-record families (expanded per config by `expected_step_keys`)", STEP_FAMILIES),
                ("Statistics each loss adds", {k: ", ".join(f"`{x}`" for x in v) or "none" for k, v in LOSS_KEYS.items()}),
                ("Evaluation records (every run)", EVAL_METRICS),
                ("Evaluation records, embedded world", WORLD_EVAL_METRICS),
                ("Evaluation records, embedded world, splits mixing 3- and 4-digit layouts", WORLD_MIXED_EVAL_METRICS)]
    for title, table in sections:
        out += [f"## {title}", "", "| key | meaning |", "|---|---|"]
        out += [f"| `{k}` | {' '.join(v.split()).replace('|', '/')} |" for k, v in table.items()]
        out.append("")
    return "\n".join(out)


if __name__ == "__main__":
    print(markdown(), end="")
