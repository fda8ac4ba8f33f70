"""Deliberately wrong Flow-DPPO implementations, one per known failure, for the conformance suite to catch.

Each is a small, plausible piece of trainer code written the way a researcher might write it, with ONE
mistake, in one of the calling conventions of flowdppo/conformance/adapters.py:

  kernels ("tuple" convention)  fn(model_output, sigma, sigma_next, sample, eta, prev_sample=None,
                                   generator=None) → (prev_sample, log_prob, prev_sample_mean, std)
  losses ("kl_tensor")          fn(log_prob, old_log_prob, advantages, kl, delta) → scalar loss
  KL functions                  "std": kl(mean, old_mean, std)   "schedule": kl(mean, old_mean, σ, σ_next, η)

`correct_*` are the same functions without the mistake: they must pass every property, so a failure of a
mutant is the mistake's and not the convention's.  MUTANTS maps each mistake to how the runner is pointed
at it (the CLI flags, for the docs) and to the property it must fail.  Transition maths here is written
out on purpose (a wrong copy is the point); the project's own lives only in flowdppo/sde.py.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import torch
from torch import Tensor

from flowdppo import divergence, sde

HERE = Path(__file__).resolve()


# ----------------------------------------------------------------------------------------------------
# Kernels in the tuple convention
# ----------------------------------------------------------------------------------------------------
def _per_dim_logp(x_next: Tensor, mean: Tensor, std: Tensor) -> Tensor:
    return sde.gaussian_logp(x_next, mean, std).flatten(1).mean(1)


def correct_tuple_kernel(kernel: str, v, sigma, sigma_next, x, eta, prev_sample=None, generator=None):
    st = sde.step(kernel, x=x, v=v, sigma=sigma, sigma_next=sigma_next, eta=eta, x_next=prev_sample,
                  generator=generator)
    return st.x_next, st.logp_per_dim, st.mean, st.std


correct_flow_sde_kernel = partial(correct_tuple_kernel, "flow_sde")
correct_cps_kernel = partial(correct_tuple_kernel, "cps")


def prefactor_std_kernel(v, sigma, sigma_next, x, eta, prev_sample=None, generator=None):
    """Flow-SDE step that samples correctly but returns the diffusion pre-factor η√(σ/(1−σ)) as its std
    (the value a scheduler keeps as `std_dev_t`), so everything downstream divides by the wrong σ."""
    st = sde.step("flow_sde", x=x, v=v, sigma=sigma, sigma_next=sigma_next, eta=eta, x_next=prev_sample,
                  generator=generator)
    s_t = sde.flow_sde_noise_scale(sigma, sigma_next, eta).to(st.mean.dtype)
    return st.x_next, st.logp_per_dim, st.mean, s_t


def cps_no_sin_kernel(v, sigma, sigma_next, x, eta, prev_sample=None, generator=None):
    """CPS step (Eq. 3) with the noise std σ_next instead of σ_next·sin(ηπ/2) — self-consistent (it samples
    and scores with that std), so only the closed form can tell."""
    mean = sde.transition_mean("cps", x, v, sigma, sigma_next, eta)
    std = torch.tensor(sigma_next, dtype=mean.dtype)          # missing sin(ηπ/2)
    if prev_sample is None:
        prev_sample = mean + std * torch.randn(mean.shape, generator=generator, dtype=mean.dtype)
    return prev_sample, _per_dim_logp(prev_sample, mean, std), mean, std


def cps_unnormalised_logp_kernel(v, sigma, sigma_next, x, eta, prev_sample=None, generator=None):
    """CPS step whose log-prob is −mean_d (x' − μ)², without the 1/(2σ²) and the constants."""
    st = sde.step("cps", x=x, v=v, sigma=sigma, sigma_next=sigma_next, eta=eta, x_next=prev_sample,
                  generator=generator)
    return st.x_next, -((st.x_next - st.mean) ** 2).flatten(1).mean(1), st.mean, st.std


# ----------------------------------------------------------------------------------------------------
# KL functions
# ----------------------------------------------------------------------------------------------------
def correct_kl(mean, old_mean, std):
    """Eq. 14, per-dim mean, with the std the kernel handed over."""
    return divergence.kl_per_dim(old_mean, mean.detach(), std)


def kl_missing_2(mean, old_mean, std):
    """‖Δμ‖²/σ² per dim: the 2 of 2σ² dropped."""
    return ((mean.detach() - old_mean) ** 2 / std**2).flatten(1).mean(1)


def _flow_sde_sigma_t(sigma, sigma_next, eta, *, cap_first_step: bool):
    """σ_t recomputed in the loss from the schedule, as a Flow-SDE std.  cap_first_step=True is the 0.99
    clamp of the loss-side normaliser; False is the sampler's rule (1 − σ_next at σ = 1)."""
    denom_sigma = min(sigma, 0.99) if cap_first_step else (sigma_next if sigma >= 1.0 else sigma)
    return eta * math.sqrt(sigma / (1.0 - denom_sigma)) * math.sqrt(sigma - sigma_next)


def kl_sigma1_clamp(mean, old_mean, sigma, sigma_next, eta):
    """Per-dim KL with σ_t recomputed in the loss, clamping σ at 0.99 (the sampler uses 1 − σ_next at σ = 1)."""
    s_t = _flow_sde_sigma_t(sigma, sigma_next, eta, cap_first_step=True)
    return ((mean.detach() - old_mean) ** 2).flatten(1).mean(1) / (2.0 * s_t**2)


def kl_flow_sde_schedule(mean, old_mean, sigma, sigma_next, eta):
    """Per-dim KL with σ_t recomputed as the Flow-SDE std (the sampler's σ = 1 rule): right for Flow-SDE,
    wrong for any other sampler."""
    s_t = _flow_sde_sigma_t(sigma, sigma_next, eta, cap_first_step=False)
    return ((mean.detach() - old_mean) ** 2).flatten(1).mean(1) / (2.0 * s_t**2)


def kl_live(mean, old_mean, std):
    """Eq. 14 per dim, differentiable in μ_θ (no detach): harmless only if the loss never lets it carry
    gradient."""
    return divergence.kl_per_dim(old_mean, mean, std)


# ----------------------------------------------------------------------------------------------------
# Losses in the kl_tensor convention
# ----------------------------------------------------------------------------------------------------
def _dppo(log_prob, old_log_prob, advantages, kl, delta, *, ties_exceed=False, flip_delta=False,
          normalise="all", live_gate=False, where_trap=False):
    """Eq. 17 / 18 (β = 0), switchable to one of the known mistakes."""
    log_ratio = log_prob - old_log_prob.detach()
    kl_gate = kl if live_gate else kl.detach()
    if flip_delta:
        exceeded = kl_gate < delta
    else:
        exceeded = kl_gate >= delta if ties_exceed else kl_gate > delta
    lr = log_ratio.detach()
    drop = exceeded & (((advantages > 0) & (lr > 0)) | ((advantages < 0) & (lr < 0)))
    if where_trap:                         # ratio from the raw log-ratio, masked after exp
        per_sample = torch.where(drop, torch.zeros_like(log_ratio), -advantages * torch.exp(log_ratio))
    else:                                  # a zeroed, clamped log-ratio where blocked: no inf·0
        safe = torch.where(drop, torch.zeros_like(log_ratio), log_ratio).clamp(-20.0, 20.0)
        per_sample = torch.where(drop, torch.zeros_like(safe), -advantages * safe.exp())
    if live_gate:                          # the gate as a float built from the live KL: M = 1[kept] + (D − sg(D))
        keep = (~drop).to(per_sample.dtype) + (kl_gate - kl_gate.detach())
        per_sample = -advantages * torch.exp(log_ratio.clamp(-20.0, 20.0)) * keep
    if normalise == "kept":
        return per_sample.sum() / (~drop).sum().clamp_min(1)
    return per_sample.mean()


correct_dppo_loss = _dppo
dppo_ties_exceed = partial(_dppo, ties_exceed=True)
dppo_flipped_delta = partial(_dppo, flip_delta=True)
dppo_mean_over_kept = partial(_dppo, normalise="kept")
dppo_live_gate = partial(_dppo, live_gate=True)
dppo_where_trap = partial(_dppo, where_trap=True)


def bf16_store(t: Tensor) -> Tensor:
    """A trajectory buffer in bf16 (the model's dtype), read back into fp32 for the update."""
    return t.to(torch.bfloat16).to(t.dtype)


# ----------------------------------------------------------------------------------------------------
# The registry: how the runner is pointed at each, and what it must report
# ----------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Mutant:
    mistake: str
    args: tuple[str, ...]                  # CLI arguments after `python -m flowdppo.conformance`
    intended: str                          # the property that must fail
    names: str                             # a phrase the failure's meaning must contain
    fails: frozenset = field(default_factory=frozenset)   # every property expected to fail (intended included)


def _f(name: str) -> str:
    return f"{HERE}:{name}"


def _kl_tensor(loss: str, kl: str, kl_adapter: str = "std") -> tuple[str, ...]:
    return ("--loss", _f(loss), "--adapter", "kl_tensor", "--kl", _f(kl), "--kl-adapter", kl_adapter)


_OUR_KERNEL = ("--kernel", "flowdppo.sde:step")
_OUR_LOSS = ("--loss", "flowdppo.losses:flow_dppo")

MUTANTS: dict[str, Mutant] = {
    "sigma1_clamp": Mutant(
        "the loss recomputes σ_t with a 0.99 clamp at σ = 1, the sampler uses 1 − σ_next",
        _OUR_KERNEL + _kl_tensor("correct_dppo_loss", "kl_sigma1_clamp", "schedule"),
        "mask_kl_exact", "σ = 1", frozenset({"mask_kl_exact"})),
    "prefactor_std": Mutant(
        "the kernel returns the Flow-SDE pre-factor as its std",
        ("--kernel", _f("prefactor_std_kernel"), "--kernel-adapter", "tuple") + _OUR_LOSS,
        "std_matches_sampler", "pre-factor",
        frozenset({"std_matches_sampler", "kernel_matches_paper", "logp_normalised", "mask_kl_exact"})),
    "cps_no_sin": Mutant(
        "CPS std σ_next without sin(ηπ/2)",
        ("--kernel", _f("cps_no_sin_kernel"), "--kernel-adapter", "tuple", "--sampler", "cps") + _OUR_LOSS,
        "kernel_matches_paper", "sin(ηπ/2)", frozenset({"kernel_matches_paper"})),
    "bf16_anchors": Mutant(
        "anchors (old mean, old log-prob) kept in bf16",
        _OUR_KERNEL + _OUR_LOSS + ("--store", _f("bf16_store")),
        "anchor_precision", "bf16", frozenset({"anchor_precision", "on_policy_identity"})),
    "kl_missing_2": Mutant(
        "KL ‖Δμ‖²/σ² (missing factor 2)",
        _OUR_KERNEL + _kl_tensor("correct_dppo_loss", "kl_missing_2"),
        "mask_kl_exact", "missing factor 2", frozenset({"mask_kl_exact"})),
    "flipped_delta": Mutant(
        "mask inequality flipped: exceeded = KL < δ",
        _OUR_KERNEL + _kl_tensor("dppo_flipped_delta", "correct_kl"),
        "delta_monotone", "inverted", frozenset({"delta_monotone", "mask_truth_table"})),
    "live_gate": Mutant(
        "mask without stop-gradient (gate built from the live KL)",
        _OUR_KERNEL + _kl_tensor("dppo_live_gate", "kl_live"),
        "gradients", "stop-gradient", frozenset({"gradients"})),
    "where_trap": Mutant(
        "torch.where on exp(log r): inf·0 = NaN gradients",
        _OUR_KERNEL + _kl_tensor("dppo_where_trap", "correct_kl"),
        "gradients", "inf by 0", frozenset({"gradients"})),
    "mean_over_kept": Mutant(
        "masked mean divided by the kept count",
        _OUR_KERNEL + _kl_tensor("dppo_mean_over_kept", "correct_kl"),
        "loss_normalisation", "kept samples only", frozenset({"loss_normalisation"})),
    # --- beyond the list: two more mistakes found in published code --------------------------
    "ties_exceed": Mutant(
        "KL = δ counts as exceeded (≥)",
        _OUR_KERNEL + _kl_tensor("dppo_ties_exceed", "correct_kl"),
        "mask_truth_table", "KL = δ counts as exceeded", frozenset({"mask_truth_table"})),
    "cps_unnormalised_logp": Mutant(
        "CPS log-prob −(x' − μ)² without 1/(2σ²)",
        ("--kernel", _f("cps_unnormalised_logp_kernel"), "--kernel-adapter", "tuple", "--sampler", "cps") + _OUR_LOSS,
        "logp_normalised", "unnormalised", frozenset({"logp_normalised"})),
    "cps_with_flow_sde_kl": Mutant(
        "CPS sampler, KL normaliser recomputed as the Flow-SDE σ_t",
        ("--kernel", "flowdppo.sde:step", "--sampler", "cps") + _kl_tensor("correct_dppo_loss", "kl_flow_sde_schedule",
                                                                         "schedule"),
        "mask_kl_exact", "Flow-SDE std", frozenset({"mask_kl_exact"})),
    "dance_with_flow_sde_kl": Mutant(
        "Dance-SDE sampler, KL normaliser recomputed as the Flow-SDE σ_t",
        ("--kernel", "flowdppo.sde:step", "--sampler", "dance_sde")
        + _kl_tensor("correct_dppo_loss", "kl_flow_sde_schedule", "schedule"),
        "mask_kl_exact", "Flow-SDE std", frozenset({"mask_kl_exact"})),
}

# The same conventions without the mistake: must pass everything.
CONTROLS: dict[str, tuple[str, ...]] = {
    "flowdppo_flow_sde": _OUR_KERNEL + _OUR_LOSS,
    "flowdppo_cps": _OUR_KERNEL + _OUR_LOSS + ("--sampler", "cps"),
    "flowdppo_dance_sde": _OUR_KERNEL + _OUR_LOSS + ("--sampler", "dance_sde"),
    "tuple_kernel_kl_tensor_loss": ("--kernel", _f("correct_flow_sde_kernel"), "--kernel-adapter", "tuple")
                                   + _kl_tensor("correct_dppo_loss", "correct_kl"),
    "schedule_kl_flow_sde": _OUR_KERNEL + _kl_tensor("correct_dppo_loss", "kl_flow_sde_schedule", "schedule"),
    "kl_tensor_with_flowdppo_kl": _OUR_KERNEL + ("--loss", _f("correct_dppo_loss"), "--adapter", "kl_tensor",
                                                 "--kl", "flowdppo.divergence:kl_per_dim"),
    "tuple_cps_kernel": ("--kernel", _f("correct_cps_kernel"), "--kernel-adapter", "tuple", "--sampler", "cps")
                        + _OUR_LOSS,
}
