"""Typed, validated run configuration.  Every field has its unit in the docstring; the resolved config is
saved as `config.json` in the run directory and a resume must match it.

Thresholds are stated PER LATENT DIM (the published convention): δ on KL/D, and the run header records D.
With per-dim-mean log-probs, sd(log r) ≈ √(2·KL_dim/D), so a clip at ε and a mask at δ ≈ ε²·D/2 select
statistically similar samples (README, "Thresholds and units") — the logs carry both rules' counterfactual rates.
"""
from __future__ import annotations

import dataclasses
import difflib
import json
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Optional

from .errors import ConfigError

KernelName = Literal["flow_sde", "cps", "dance_sde"]
"""The trainable kernels: sde.SDE_KERNELS (tests/test_config_validation.py ties the two)."""

# The convention presets (docs/conventions.md): the values each preset gives the fields left unset.
CONVENTION_PRESETS: dict[str, dict[str, Any]] = {
    "paper": dict(sigma_grid="pipeline", cps_logp="normalized", beta_units="exact_kl", adv_std="population",
                  adv_eps=1e-6, kl_tie="keep"),
    "official": dict(sigma_grid="official", cps_logp="unnormalized", beta_units="mean_sq", adv_std="bessel",
                     adv_eps=1e-8, kl_tie="block"),
}
LossName = Literal["flow_dppo", "flow_dppo_symmetric", "flow_dppo_predictive", "flow_grpo", "grpo_guard",
                   "no_trust_region"]
"""The keys of losses.POLICY_LOSSES, the one table of losses (tests/test_config_validation.py ties the two)."""


@dataclass(frozen=True)
class Config:
    # --- run ------------------------------------------------------------------------------------------
    run_dir: str = ""
    """Run directory (config, logs, samples, checkpoints). Empty: runs/<loss>-<kernel>-s<seed>-<timestamp>."""
    seed: int = 0
    """Master seed; every random draw of iteration i derives from (seed, i), which makes resume exact."""
    iterations: int = 60
    """Rollout → update iterations ("epochs" in the paper's figures)."""
    threads: int = 2
    """torch intra-op threads (two 1-thread runs side by side use 2 cores better than one 2-thread run)."""
    device: str = "cpu"
    """torch device for the policy ("cpu", "cuda", "cuda:0")."""
    parallel: Literal["auto", "replicate", "fsdp"] = "auto"
    """Multi-rank weight layout (torchrun): "replicate" = full replicas + one gradient all-reduce per step
    (DDP-equivalent); "fsdp" = FSDP2-sharded weights, optimizer state and frozen reference (full
    fine-tuning only); "auto" = fsdp for full fine-tuning on > 1 rank, else replicate.  Checkpoints hold
    full tensors either way, so a run may resume under another layout or world size."""
    fsdp_gather_inference: bool = True
    """Under FSDP, gather each sharded block once per rollout / evaluation pass and keep it until the pass
    ends (fast; holds the full weights during the pass) instead of re-gathering it at every forward."""

    # --- model ----------------------------------------------------------------------------------------
    model: str = "embedded"
    """"embedded" (the shipped tiny digit world) or a diffusers hub id / local pipeline directory."""
    model_family: Optional[str] = None
    """For diffusers models: "sd3", "flux", "flux2_klein", or None to detect from model_index.json."""
    checkpoint: str = ""
    """Embedded model only: base weights, a safetensors file or a shipped base's name ("world_base_v1" = the
    first world's base, behind paper_figures/first_world/); empty = the shipped default base."""
    lora_rank: int = 0
    """LoRA rank (peft); 0 = full fine-tuning. Paper: 32 (SD3.5), 64 (FLUX)."""
    lora_alpha: Optional[float] = None
    """LoRA α; None = 2·rank (the paper's ratio)."""
    dtype: Literal["float32", "bfloat16"] = "float32"
    """Model weight/compute dtype. Anchors (old means, log-probs) are always kept in float32."""
    resolution: int = 512
    """Image side in pixels for diffusers models (ignored by the embedded world)."""
    gradient_checkpointing: bool = False
    """Recompute activations in backward (diffusers models)."""
    disable_cudnn_attention: bool = False
    """Turn off cuDNN SDPA (a FLUX-architecture backward crashed with it on an H100)."""
    compile: bool = False
    """torch.compile the diffusers transformer (and a full-fine-tuning reference) in place; the first
    iterations pay for compilation."""
    offload_text_encoders: bool = False
    """Diffusers models: keep the text encoders on the CPU and move them to `device` only to encode prompts
    not yet cached (frees the encoders' bf16 size between encodes: T5-XXL ≈ 9.5 GB for SD3.5 / FLUX.1)."""

    # --- prompts --------------------------------------------------------------------------------------
    prompts: str = "embedded"
    """"embedded" (the world's splits: train / test = four-digit relation chains, ood, transfer), "embedded_v1"
    (the first world's splits, behind paper_figures/first_world/), or a .txt / .jsonl prompt file
    (GenEval2-style atoms in JSONL)."""
    prompts_per_iter: int = 16
    """Unique prompts (groups) per iteration, over all ranks.  16 × 4 (not 8 × 8) for the embedded main job:
    with 8 prompts the per-iteration mix of hard 3-digit and easy 4-digit prompts swamps the reward curve."""
    group_size: int = 4
    """Samples per prompt, G."""

    # --- sampling -------------------------------------------------------------------------------------
    kernel: KernelName = "flow_sde"
    """SDE kernel at trained steps (ODE elsewhere): flow_sde (Eq. 2), cps (Eq. 3), dance_sde."""
    num_steps: int = 10
    """Denoising steps K of the rollout."""
    shift: float = 1.0
    """Static σ-schedule shift for policies without their own scheduler (the embedded world); 1.0 = linear
    σ grid.  Diffusers pipelines use their scheduler's grid (SD3.5: shift 3; FLUX: resolution-dependent)."""
    eta: float = 0.7
    """Noise level η: Flow-SDE/Dance pre-factor; CPS angle ηπ/2 (must be in (0, 1] for CPS)."""
    sde_steps_per_traj: int = 3
    """Trained SDE steps per trajectory (MixGRPO; the paper draws 3)."""
    sde_window: tuple[float, float] = (0.0, 0.5)
    """Fraction [start, end) of the denoising steps the SDE steps are drawn from (paper: first half)."""
    guidance_scale: float = 1.0
    """CFG scale in rollout AND training (1 = no CFG, the paper's default).  For guidance-distilled FLUX.1-dev
    it is the value fed to the guidance embedding (one forward), not true CFG."""

    # --- policy loss ----------------------------------------------------------------------------------
    loss: LossName = "flow_dppo"
    """Policy loss from flowdppo.losses.POLICY_LOSSES."""
    delta: float = 1e-4
    """KL-mask threshold δ (nats PER LATENT DIM unless kl_reduction="sum")."""
    kl_reduction: Literal["per_dim", "sum"] = "per_dim"
    """Which KL δ is stated on: per_dim = Eq. 14 / D (published thresholds), sum = Eq. 14."""
    logp_reduction: Literal["per_dim", "sum"] = "per_dim"
    """Log-prob reduction for the ratio: per_dim (every published code; r is a geometric mean) or sum."""
    clip_range: float = 1e-3
    """Ratio clip ε for flow_grpo / grpo_guard."""
    predictive_step_size: Optional[float] = None
    """flow_dppo_predictive: None = first-order mask (Eq. 26); a float = full predictive mask (Eq. 27)."""
    beta: float = 0.1
    """Weight of the exact KL(π_θ‖π_ref) at trained steps (Eq. 17), same reduction as kl_reduction.  0.1 for
    the embedded main job (at β = 0 held-out layouts got worse on 3/3 seeds while the trained reward rose;
    at 0.1 held-out accuracy rises on 3/3 — README); the paper-recipe configs set 0."""
    ref_guidance_scale: float = 1.0
    """CFG scale of the reference policy (Flow-Factory uses a CFG-guided reference, e.g. 4.5)."""
    log_ref_kl: bool = True
    """Compute KL(π_old‖π_ref) at the trained steps of every rollout for the logs even when β = 0."""

    # --- rewards and advantages -----------------------------------------------------------------------
    rewards: tuple[str, ...] = ("tifa",)
    """Reward names (flowdppo.rewards.registry); several = multi-reward."""
    log_rewards: tuple[str, ...] = ()
    """Rewards computed on every rollout for the logs only (weight 0), e.g. agreement,realism,ink."""
    reward_kwargs: dict[str, dict[str, Any]] = dataclasses.field(default_factory=dict)
    """Constructor arguments per reward name, e.g. {"hpsv2": {"model": "/ckpt/hpsv2.1-hf"}, "pickscore":
    {"device": "cuda:1"}} in a JSON config, or on the command line reward_kwargs.hpsv2.model=/ckpt/hpsv2.1-hf
    (values parsed as JSON when they can be, else kept as strings)."""
    reward_weights: Optional[tuple[float, ...]] = None
    """Weights per reward (None = equal)."""
    advantage: Literal["group", "gdpo"] = "group"
    """"group": weighted reward sum, group-relative; "gdpo": per-reward normalisation (paper §2.1, Eq. 5)."""
    std_scope: Literal["group", "global"] = "global"
    """Advantage std: each group's, or one over the whole batch (paper recipe)."""
    adv_eps: Optional[float] = None
    """Advantage-std epsilon, used as adv_std says (a floor, or added).  None = the preset's: 1e-6 ("paper"),
    1e-8 ("official")."""
    adv_clip: Optional[float] = 5.0
    """Clip advantages to ±adv_clip (None = no clip)."""

    # --- conventions (docs/conventions.md) --------------------------------------------------------------
    conventions: Literal["paper", "official"] = "paper"
    """Preset for the convention fields below that are left unset (None); the resolved values are saved in
    config.json.  "paper": the paper's equations where it states one (normalized Eq. 6 log-probs, the exact
    Eq. 14 KL for β, Eq. 18's strict KL > δ), a population std with a 1e-6 floor, and the diffusers
    pipeline's own σ grid (the paper states none).  "official": what the published
    Flow-DPPO code and its ports do (UniRL; Flow-Factory for β, which UniRL's release did not have):
    sigma_grid=official, cps_logp=unnormalized, beta_units=mean_sq, adv_std=bessel, adv_eps=1e-8,
    kl_tie=block.  A field set explicitly wins over the preset."""
    sigma_grid: Optional[Literal["pipeline", "official"]] = None
    """σ grid of rollout AND evaluation.  "pipeline": the diffusers scheduler's own set_timesteps(K) (SD3.5
    at K = 10: 1, .9601, …, .2780, .0089, 0 — its timesteps are spaced down to the already shifted σ_min and
    shifted again); "official": shift(linspace(1, 1/K, K)) then 0, shift(σ) = s·σ/(1 + (s − 1)σ) with the
    scheduler's own shift s (SD3.5: 1, .9643, …, .4286, .25, 0; largest gap 0.241 at the last step).  The FLUX
    pipelines already use the official form, and the embedded world (no scheduler) uses shifted_sigmas(K,
    shift) for both.  None = the preset's (paper: pipeline)."""
    cps_logp: Optional[Literal["normalized", "unnormalized"]] = None
    """CPS only: the log-prob in the policy ratio.  "normalized": the Gaussian density of Eq. 6;
    "unnormalized": −(x − μ)² as the published codes (no 1/(2σ²), no constants), so log r_theirs =
    2σ²·log r_ours: the mask's decisions are unchanged but the surrogate's gradient is 2σ² times larger
    (2σ² = 1.68 … 1.02 on SD3.5's steps 0–4 at η = 0.8, official grid) and a clip ε acts on r^(2σ²).  The KL of the
    mask is exact either way.  None = the preset's (paper: normalized)."""
    beta_units: Optional[Literal["exact_kl", "mean_sq"]] = None
    """Units of the β term: "exact_kl" = KL(π_θ‖π_ref) = ‖μ_θ − μ_ref‖²/(2σ²) (Eq. 14); "mean_sq" =
    ‖μ_θ − μ_ref‖² (Flow-Factory), so β_exact = β_mean_sq·2σ² per step.  Both use kl_reduction.  None = the
    preset's (paper: exact_kl)."""
    adv_std: Optional[Literal["population", "bessel"]] = None
    """Advantage std: "population" (ddof 0) floored at adv_eps (a constant group gives exactly 0), or
    "bessel" (ddof 1) plus adv_eps (UniRL): advantages √((N−1)/N) times smaller, 0.968 for N = 16, 0.9995 for a
    global std over 1024 samples.  None = the preset's (paper: population)."""
    kl_tie: Optional[Literal["keep", "block"]] = None
    """A sample whose KL equals δ exactly: "keep" (Eq. 18: M = 0 needs KL > δ) or "block" (the published codes
    test KL ≥ δ).  None = the preset's (paper: keep)."""

    # --- optimisation ---------------------------------------------------------------------------------
    lr: float = 1e-4
    """AdamW learning rate. The default is for full fine-tuning of the embedded world; with LoRA on a diffusers
    model the paper uses 3e-4. How the embedded world responds to it: README, "The embedded default world"."""
    weight_decay: float = 1e-4
    """AdamW weight decay (decoupled)."""
    adam_betas: tuple[float, float] = (0.9, 0.999)
    """AdamW (β₁, β₂)."""
    adam_eps: float = 1e-8
    """AdamW ε (added to the root of the second moment)."""
    max_grad_norm: float = 1.0
    """Gradient-norm clip per optimizer step (> 0)."""
    on_nonfinite: Literal["stop", "skip"] = "stop"
    """A non-finite loss or gradient norm: "stop" raises before the optimizer step (naming the step and the
    likely causes; the last checkpoint stays as it was); "skip" drops that step's gradients, leaves the
    weights and optimizer state untouched, and logs nonfinite_skipped = 1 for it.  A non-finite PARAMETER
    after a step always stops (an applied step cannot be skipped).  A resume may change this field."""
    num_inner_epochs: int = 1
    """Passes over each rollout batch (the paper's I1 / I2)."""
    num_minibatches: int = 4
    """Optimizer steps per epoch; the batch is split into this many minibatches."""
    overlap_rewards: bool = False
    """Score each rollout chunk in a background thread while the next chunk is generated (rewards.base.ChunkScorer)
    instead of scoring the whole batch after the rollout. The same rewards for any reward that scores each image
    on its own (all of ours); gains most when scoring does not compete for the generator's device (the HTTP
    `remote` reward). time/reward_s is then only the wait after the last chunk."""
    batched_replay: bool = False
    """Replay all trained SDE steps of a micro-batch in ONE policy forward (batch = steps × micro-batch) and one
    backward, instead of one forward/backward per step. The same loss and gradient up to float summation order
    (tests/test_trainer.py); fewer, larger kernels on a GPU, at the price of keeping every step's activations
    alive at once (memory × steps). The first update after a rollout is then on-policy to float precision
    rather than bit-exact (the on-policy guard's tolerance covers it)."""
    micro_batch_size: int = 0
    """Samples per forward/backward inside a minibatch (0 = the whole minibatch). Rollout forwards use the
    same geometry, so the first update after a rollout is exactly on-policy (docs/conventions.md and tests/test_trainer.py pin it)."""

    # --- evaluation, logging, checkpoints -------------------------------------------------------------
    eval_every: int = 20
    """Evaluate every N iterations (and at 0 and at the end); 0 = never."""
    eval_from: int = 0
    """Skip the periodic evaluations before this iteration (the one at the end is always made). A campaign
    whose iteration-0 evaluation is the shared base sets it to avoid re-evaluating the base in every run."""
    eval_num_steps: int = 10
    """ODE steps of the pinned evaluation regime."""
    eval_guidance_scale: float = 1.0
    """CFG scale of the pinned evaluation (1 = no guidance; the paper evaluates at 1)."""
    eval_prompts: int = 0
    """Prompts per eval split (test, ood, transfer), the first N of the split; 0 = every prompt of the split
    (the embedded world: every held-out layout and every OOD grid)."""
    eval_samples_per_prompt: int = 32
    """Fixed-seed samples per prompt of the held-out in-domain split "test" (diversity is measured among them).
    32 × the embedded world's 64 test layouts: the evaluation's own seed error on accuracy is ≈ 0.008 (README)."""
    eval_probe_samples_per_prompt: int = 12
    """Fixed-seed samples per prompt of the never-trained probe splits ("ood", "transfer"); 0 = as
    eval_samples_per_prompt.  12 × 128 / 192 prompts: seed error ≈ 0.01 on accuracy."""
    eval_seed: int = 1234
    """Seed of the pinned evaluation noise: sample j of prompt p always starts from the same latent."""
    sample_figures: bool = True
    """Redraw samples/before_after_<split>.png (prompt texts, cells marked right or wrong) at each evaluation.
    The grids and their sidecars are saved either way; false saves the figure's drawing time (≈ 3 s per split on
    the embedded world), which a campaign of hundreds of runs does not need. A resume may change it."""
    checkpoint_every: int = 10
    """Checkpoint every N iterations (and at the end); resume restarts from the latest."""
    onpolicy_tolerance: Optional[float] = 1e-4
    """Largest per-dim |log r| allowed on the first (on-policy, π_θ = π_old) minibatch of an iteration; above
    it the run warns loudly (rollout/update disagreement: e.g. a rollout that ignores the LoRA adapter).  It is
    exactly 0 on CPU; compiled or batch-shape-dependent GPU kernels give ~1e-5.  Scale: rollout means off by
    ρσ per element give a per-dim |log r| of ≈ 3ρ/√D over a minibatch (Eq. 13), ≈ 1e-4 for ρ = 1 % at
    D = 65 536, so the default sits 10× above the GPU noise floor.  0 = warn on any disagreement; None =
    never warn (the value is logged as onpolicy/abs_log_ratio_max either way)."""
    tensorboard: bool = False
    """Also write TensorBoard scalars to <run_dir>/tb."""
    progress: bool = True
    """Show a progress bar on the console."""

    # ------------------------------------------------------------------------------------------------
    def __post_init__(self) -> None:
        """Fill the unset convention fields from the `conventions` preset (explicit values win), then validate:
        a Config that exists — built directly, by make_config or by replace() — is a valid one."""
        if self.conventions not in CONVENTION_PRESETS:
            raise ConfigError(f"config.conventions: unknown preset {self.conventions!r}. Fix: use one of "
                              f"{sorted(CONVENTION_PRESETS)}")
        for name, value in CONVENTION_PRESETS[self.conventions].items():
            if getattr(self, name) is None:
                object.__setattr__(self, name, value)   # frozen dataclass: resolved once, at construction
        self.validate()

    @property
    def logp_scale(self) -> str:
        """The log-prob scale of the policy ratio: cps_logp applies to the CPS kernel only."""
        return "unnormalized" if self.kernel == "cps" and self.cps_logp == "unnormalized" else "normalized"

    @property
    def batch_size(self) -> int:
        return self.prompts_per_iter * self.group_size

    @property
    def minibatch_size(self) -> int:
        return self.batch_size // self.num_minibatches

    def eval_samples(self, split: str) -> int:
        """Samples per prompt in an evaluation of `split`."""
        return self.eval_samples_per_prompt if split == "test" or not self.eval_probe_samples_per_prompt \
            else self.eval_probe_samples_per_prompt

    def eval_items(self, items: list) -> list:
        """The prompts an evaluation uses: the first `eval_prompts` of the split, or all of them (0)."""
        return list(items[: self.eval_prompts]) if self.eval_prompts else list(items)

    @property
    def micro_size(self) -> int:
        return self.micro_batch_size or self.minibatch_size

    def validate(self) -> "Config":
        """Raise ConfigError (a ValueError) naming the field and the fix; returns self.  Runs at construction
        (__post_init__); callers may repeat it."""
        def bad(field_name: str, why: str, fix: str) -> None:
            raise ConfigError(f"config.{field_name}: {why}. Fix: {fix}")

        for name in ("threads", "num_minibatches", "num_steps", "eval_num_steps"):
            if getattr(self, name) < 1:
                bad(name, f"{getattr(self, name)} < 1", f"use {name} >= 1")
        for name, what in (("eval_every", "0 = never evaluate"), ("eval_from", "0 = from the start"), ("checkpoint_every", "0 = only at the end"),
                           ("micro_batch_size", "0 = the whole minibatch"), ("lora_rank", "0 = full fine-tuning"),
                           ("eval_prompts", "0 = every prompt of the split")):
            if getattr(self, name) < 0:
                bad(name, f"{getattr(self, name)} < 0", f"use a count >= 0 ({what})")
        if self.eval_samples_per_prompt < 2:
            bad("eval_samples_per_prompt", f"{self.eval_samples_per_prompt} < 2: diversity is measured between the "
                "samples of one prompt", "use eval_samples_per_prompt >= 2")
        if self.eval_probe_samples_per_prompt == 1 or self.eval_probe_samples_per_prompt < 0:
            bad("eval_probe_samples_per_prompt", f"{self.eval_probe_samples_per_prompt} is not 0 or >= 2: diversity "
                "is measured between the samples of one prompt", "use 0 (as eval_samples_per_prompt) or >= 2")
        if not self.max_grad_norm > 0:
            bad("max_grad_norm", f"{self.max_grad_norm} is not > 0 (a clip at 0 zeroes every gradient)",
                "use a positive norm such as 1.0")
        if len(self.sde_window) != 2:
            bad("sde_window", f"{self.sde_window} is not a (start, end) pair", "give two fractions, e.g. sde_window=0,0.5")
        if self.weight_decay < 0 or not self.adam_eps > 0:
            bad("weight_decay", f"weight_decay={self.weight_decay}, adam_eps={self.adam_eps}: need weight_decay >= 0 "
                "and adam_eps > 0", "use e.g. weight_decay=1e-4 adam_eps=1e-8")
        if len(self.adam_betas) != 2 or not all(0 <= b < 1 for b in self.adam_betas):
            bad("adam_betas", f"{self.adam_betas} is not two numbers in [0, 1)", "e.g. adam_betas=0.9,0.999")
        if not self.adv_eps > 0 or (self.adv_clip is not None and not self.adv_clip > 0):
            bad("adv_clip", f"adv_eps={self.adv_eps}, adv_clip={self.adv_clip}: need adv_eps > 0 and adv_clip > 0 "
                "or none", "e.g. adv_eps=1e-6 adv_clip=5")
        if self.delta < 0:
            bad("delta", f"{self.delta} < 0, a KL threshold cannot be negative", "use delta >= 0 (per-dim nats)")
        if self.kernel == "cps" and not 0 < self.eta <= 1:
            bad("eta", f"{self.eta} is outside (0, 1] for CPS (angle ηπ/2)", "use 0 < eta <= 1 with kernel=cps")
        if self.kernel != "cps" and not 0 < self.eta <= 5:
            bad("eta", f"{self.eta} is outside (0, 5] for {self.kernel}", "use a noise level like 0.7")
        if self.num_steps < 2:
            bad("num_steps", f"{self.num_steps} < 2", "use at least 2 denoising steps")
        lo, hi = self.sde_window
        if not 0 <= lo < hi <= 1:
            bad("sde_window", f"{self.sde_window} is not 0 <= start < end <= 1", "e.g. sde_window=0,0.5")
        window = self.sde_indices_pool()
        if self.num_steps - 1 in window:
            bad("sde_window", f"it includes the last step (index {self.num_steps - 1}) whose σ_next = 0: an SDE "
                "step there has zero std (CPS) or adds noise to the final image", "end the window before 1.0")
        if not 1 <= self.sde_steps_per_traj <= len(window):
            bad("sde_steps_per_traj", f"{self.sde_steps_per_traj} not in [1, {len(window)}] (window has "
                f"{len(window)} steps)", "lower sde_steps_per_traj or widen sde_window")
        if self.group_size < 2 and (self.std_scope == "group" or self.advantage == "gdpo"):
            bad("group_size", "group size 1 with group-std advantages has no within-group spread",
                "use group_size >= 2, or std_scope=global with advantage=group")
        if self.group_size < 1 or self.prompts_per_iter < 1:
            bad("group_size", "group_size and prompts_per_iter must be >= 1", "set positive sizes")
        if self.batch_size % self.num_minibatches:
            bad("num_minibatches", f"batch {self.batch_size} is not divisible by {self.num_minibatches}",
                "choose num_minibatches dividing prompts_per_iter*group_size")
        if self.minibatch_size % self.micro_size:
            bad("micro_batch_size", f"minibatch {self.minibatch_size} not divisible by {self.micro_size}",
                "choose a divisor of the minibatch size (or 0)")
        if self.loss not in typing.get_args(LossName):    # LossName = the keys of losses.POLICY_LOSSES (tested)
            bad("loss", f"unknown loss {self.loss!r}", f"one of {sorted(typing.get_args(LossName))}")
        if self.clip_range <= 0:
            bad("clip_range", f"{self.clip_range} <= 0", "use a positive clip range such as 1e-4")
        if self.beta < 0:
            bad("beta", f"{self.beta} < 0", "use beta >= 0")
        if not 0 < self.lr < float("inf"):
            bad("lr", f"{self.lr} is not a positive finite number", "use a positive learning rate such as 1e-4")
        if not self.rewards:
            bad("rewards", "no reward given", "e.g. rewards=tifa")
        unknown = sorted(set(self.reward_kwargs) - set(self.rewards) - set(self.log_rewards))
        if unknown:
            bad("reward_kwargs", f"arguments for {unknown}, which are in neither rewards {list(self.rewards)} "
                f"nor log_rewards {list(self.log_rewards)}", "add the reward to rewards/log_rewards or fix its name")
        if self.reward_weights is not None and len(self.reward_weights) != len(self.rewards):
            bad("reward_weights", f"{len(self.reward_weights)} weights for {len(self.rewards)} rewards",
                "give one weight per reward")
        if self.num_inner_epochs < 1 or self.iterations < 1:
            bad("num_inner_epochs", "num_inner_epochs and iterations must be >= 1", "use positive counts")
        if self.model == "embedded":
            for name in ("compile", "offload_text_encoders"):
                if getattr(self, name):
                    bad(name, "applies to diffusers models only; the embedded world has no separate text "
                        "encoder on a device and is too small to gain from compilation",
                        f"drop {name}=true, or set model= to a diffusers hub id or directory")
        if self.logp_scale == "unnormalized" and self.loss in ("flow_dppo_predictive", "grpo_guard"):
            bad("cps_logp", f"loss={self.loss} is defined on normalized log-probs (its correction terms assume "
                "Eq. 6's 1/(2σ²))", "set cps_logp=normalized, or choose flow_dppo / flow_dppo_symmetric / flow_grpo")
        if self.adv_eps <= 0:
            bad("adv_eps", f"{self.adv_eps} <= 0 leaves a constant-reward group at 0/0", "use e.g. 1e-6 or 1e-8")
        if self.onpolicy_tolerance is not None and self.onpolicy_tolerance < 0:
            bad("onpolicy_tolerance", f"{self.onpolicy_tolerance} < 0", "use >= 0 (0 = warn on any "
                "disagreement) or none to disable the warning")
        if self.guidance_scale < 1 or self.eval_guidance_scale < 1 or self.ref_guidance_scale < 1:
            bad("guidance_scale", "CFG scales must be >= 1 (1 = no guidance)", "use >= 1")
        return self

    def sde_indices_pool(self) -> list[int]:
        """Step indices the SDE steps are drawn from: [⌊start·K⌋, ⌈end·K⌉) ∩ [0, K)."""
        import math
        lo, hi = self.sde_window
        return list(range(int(math.floor(lo * self.num_steps)),
                          min(int(math.ceil(hi * self.num_steps)), self.num_steps)))

    # ------------------------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def replace(self, **kw) -> "Config":
        return dataclasses.replace(self, **kw)


# ---------------------------------------------------------------------------------------------------
# Parsing: JSON files and key=value overrides, with fix-it messages
# ---------------------------------------------------------------------------------------------------
FIELDS = {f.name: f for f in dataclasses.fields(Config)}
_HINTS = typing.get_type_hints(Config)


def _unknown(key: str) -> ConfigError:
    close = difflib.get_close_matches(key, FIELDS, n=3)
    hint = f" Did you mean {', '.join(close)}?" if close else ""
    return ConfigError(f"unknown config key {key!r}.{hint} Run `flowdppo train --help-config` for all fields.")


def _coerce(key: str, value: Any) -> Any:
    """Convert a JSON value or a command-line string to the field's type."""
    hint = _HINTS[key]
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin is typing.Union and type(None) in args:  # Optional[X]
        if value is None or (isinstance(value, str) and value.lower() in ("none", "null", "")):
            return None
        hint = next(a for a in args if a is not type(None))
        origin, args = typing.get_origin(hint), typing.get_args(hint)
    try:
        if origin is Literal:
            if value not in args:
                raise ValueError(f"must be one of {list(args)}")
            return value
        if origin is tuple:
            items = value.split(",") if isinstance(value, str) else list(value)
            elem = args[0]
            items = [x.strip() if isinstance(x, str) else x for x in items if x != ""]
            return tuple(elem(x) for x in items)
        if hint is bool:
            if isinstance(value, str):
                if value.lower() in ("1", "true", "yes", "on"):
                    return True
                if value.lower() in ("0", "false", "no", "off"):
                    return False
                raise ValueError("must be true/false")
            return bool(value)
        if hint is int:
            if isinstance(value, float) and not value.is_integer():
                raise ValueError("must be an integer")
            return int(value)
        if hint is float:
            return float(value)
        if hint is str:
            return str(value)
        if origin is dict:
            value = json.loads(value) if isinstance(value, str) else value
            if not isinstance(value, dict) or not all(isinstance(v, dict) for v in value.values()):
                raise ValueError('must be a JSON object of objects, e.g. {"hpsv2": {"model": "/path"}}')
            return {str(k): dict(v) for k, v in value.items()}
    except (TypeError, ValueError) as e:
        raise ConfigError(f"config.{key}: cannot use {value!r} ({e}). Fix: give a {hint} value") from None
    return value


def make_config(base: Optional[dict[str, Any]] = None, overrides: Optional[list[str]] = None) -> Config:
    """Defaults ← a dict (e.g. from a JSON file) ← `key=value` overrides; validated."""
    values: dict[str, Any] = {}
    for key, value in (base or {}).items():
        if key.startswith("_"):  # comments in JSON files
            continue
        if key not in FIELDS:
            raise _unknown(key)
        values[key] = _coerce(key, value)
    for item in overrides or []:
        if "=" not in item:
            raise ConfigError(f"override {item!r} is not key=value (e.g. lr=3e-4)")
        key, value = item.split("=", 1)
        key = key.strip().lstrip("-").replace("-", "_")
        if key.startswith("reward_kwargs."):   # reward_kwargs.<reward>.<argument>=<value>
            parts = key.split(".")
            if len(parts) != 3 or not all(parts):
                raise ConfigError(f"override {item!r}: use reward_kwargs.<reward>.<argument>=<value>, "
                                 "e.g. reward_kwargs.hpsv2.model=/ckpt/hpsv2.1-hf")
            kwargs = {k: dict(v) for k, v in values.get("reward_kwargs", {}).items()}
            kwargs.setdefault(parts[1], {})[parts[2]] = _json_or_str(value)
            values["reward_kwargs"] = kwargs
            continue
        if key not in FIELDS:
            raise _unknown(key)
        values[key] = _coerce(key, value)
    return Config(**values).validate()


def _json_or_str(value: str) -> Any:
    try:
        return json.loads(value)
    except json.JSONDecodeError:
        return value


def load_config_file(path: str | Path) -> dict[str, Any]:
    try:
        data = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise ConfigError(f"config file {path} does not exist. Fix: give the path of a JSON file of fields") from None
    except json.JSONDecodeError as e:
        raise ConfigError(f"config file {path} is not valid JSON: {e}. Fix: correct the file") from None
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a JSON object of fields. Fix: write {{\"field\": value, …}}")
    return data


# Fields a resume may change: how the run is executed or shown, not what it computes (plus run_dir: the
# directory given to --resume IS the run, wherever it was moved or copied to, whatever config.json recorded).
RESUME_MAY_CHANGE = ("run_dir", "iterations", "progress", "tensorboard", "threads", "parallel", "compile",
                     "offload_text_encoders", "on_nonfinite", "sample_figures")


def config_diff(a: Config, b: Config, ignore: tuple[str, ...] = ()) -> dict[str, tuple[Any, Any]]:
    """Fields that differ between two configs (JSON-normalised)."""
    da, db = json.loads(json.dumps(a.to_dict())), json.loads(json.dumps(b.to_dict()))
    return {k: (da[k], db[k]) for k in da if k not in ignore and da[k] != db[k]}


def describe_fields() -> str:
    """Every field with its type, default and docstring (for --help-config and the README)."""
    import ast
    import inspect
    src = inspect.getsource(Config)
    tree = ast.parse(src)
    docs: dict[str, str] = {}
    body = tree.body[0].body
    for i, node in enumerate(body):
        if isinstance(node, ast.AnnAssign) and i + 1 < len(body):
            nxt = body[i + 1]
            if isinstance(nxt, ast.Expr) and isinstance(getattr(nxt, "value", None), ast.Constant):
                docs[node.target.id] = " ".join(str(nxt.value.value).split())
    lines = []
    for name, f in FIELDS.items():
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore
        lines.append(f"{name} = {default!r}  — {docs.get(name, '')}")
    return "\n".join(lines)
