"""The logged trust-region diagnostics are checked like the math.

1. k1 = −log r and k3 = (r − 1) − log r, averaged over actions drawn from π_old by the real sampler
   (sde.step), converge to the exact KL(π_old‖π_θ) of Eq. 14 with summed log-probs (App. D: log r ~
   N(−KL, 2KL), E r = 1).  With per-dim log-probs k1 → KL/D and k3 → exp(−KL/D + KL/D²) − 1 + KL/D.
   Oracle: the closed-form KL c²‖Δv‖²/(2σ²) (Eq. 15/16 in velocity form, c = ∂μ/∂v) and the closed-form
   standard errors of both estimators for log r ~ N(m, v):
       se(k1) = √(v/N),   se(k3) = √((e^{2m+v}(e^v − 1) + v − 2v·e^{m+v/2}) / N).
   Monte-Carlo at 6 SE (2e-9 two-sided per comparison), 4 comparisons per example, float64,
   N = 20 000 actions; false-alarm rate ≤ 4·6·2e-9 ≈ 5e-8 per run under the "ci" profile.
2. Every other logged statistic (kl_exceeded, blocked_pos/neg, blocked, kept, clip_frac,
   clip_frac_gradient, ratio moments, log_ratio_abs_mean, the KLs, guard_ratio_mean) equals a naive
   per-sample Python loop over a float64 batch whose log-ratio comes from the sample itself, for every
   loss, both reductions and both KL-tie conventions.  Deterministic: rtol 1e-9 (fractions exact).
"""
from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from flowdppo import losses, sde
from proofs_check._common import assert_within_se, examples

N_MC, D_MC = 20_000, 8


def _k_moments(m: float, v: float) -> tuple[float, float, float, float]:
    """E k1, sd k1, E k3, sd k3 for log r ~ N(m, v) (k1 = −log r, k3 = e^{log r} − 1 − log r)."""
    e_r = math.exp(m + v / 2)
    var_k3 = math.exp(2 * m + v) * math.expm1(v) + v - 2 * v * e_r
    return -m, math.sqrt(v), e_r - 1 - m, math.sqrt(var_k3)


@examples(6)
@given(seed=st.integers(0, 2**31 - 1), kernel=st.sampled_from(sde.SDE_KERNELS), kl=st.floats(0.01, 1.0),
       step=st.integers(0, 4), eta=st.floats(0.3, 0.9))
def test_k1_and_k3_average_to_the_exact_kl_under_pi_old(seed, kernel, kl, step, eta):
    """App. D / Eq. 14: mean k1 and mean k3 of flow_dppo's stats → KL(π_old‖π_θ) (sum) and their per-dim
    limits, actions x' ~ π_old drawn by sde.step at a step of the SD3.5 grid (σ = 1 included)."""
    gen = torch.Generator().manual_seed(seed)
    grid = sde.shifted_sigmas(10, 3.0)
    s, s_next = float(grid[step]), float(grid[step + 1])
    x = torch.randn(N_MC, D_MC, generator=gen, dtype=torch.float64)
    v_old = torch.randn(N_MC, D_MC, generator=gen, dtype=torch.float64)
    old = sde.step(kernel, x=x, v=v_old, sigma=s, sigma_next=s_next, eta=eta, generator=gen)
    std = float(old.std.reshape(-1)[0])
    c = float(sde.mean_velocity_coefficient(kernel, s, s_next, eta))
    direction = torch.randn(D_MC, generator=gen, dtype=torch.float64)
    dv = direction / direction.norm() * math.sqrt(2 * std**2 * kl) / abs(c)   # c²‖Δv‖²/(2σ²) = kl
    new_mean = sde.transition_mean(kernel, x, v_old + dv, s, s_next, eta)
    for reduction, dims in (("sum", 1), ("per_dim", D_MC)):
        _, stats = losses.flow_dppo(mean=new_mean, old_mean=old.mean, std=old.std,
                                    advantages=torch.ones(N_MC, dtype=torch.float64), sample=old.x_next,
                                    delta=math.inf, logp_reduction=reduction)
        e1, sd1, e3, sd3 = _k_moments(-kl / dims, 2 * kl / dims**2)
        assert_within_se(stats["k1"], e1, sd1 / math.sqrt(N_MC), what=f"k1 ({reduction}, {kernel}, KL={kl:.3g})")
        assert_within_se(stats["k3"], e3, sd3 / math.sqrt(N_MC), what=f"k3 ({reduction}, {kernel}, KL={kl:.3g})")
    assert abs(e1 * D_MC - kl) < 1e-12 and abs(_k_moments(-kl, 2 * kl)[2] - kl) < 1e-12   # sum limits = KL


# ---------------------------------------------------------------------------------------------------
# The other statistics against a per-sample loop
# ---------------------------------------------------------------------------------------------------
B, DIMS = 16, 5


def _loop_stats(name, x, mean, old_mean, std, adv, *, delta, clip_range, kl_reduction, logp_reduction, kl_tie):
    """Each logged statistic of `name`, one sample and one latent dim at a time, in Python floats."""
    lrs, kls, blocked_pos, blocked_neg, exceeded, clipped, clip_grad, guard_r = [], [], [], [], [], [], [], []
    raw_abs = []
    for i in range(B):
        xi, mi, oi = x[i].tolist(), mean[i].tolist(), old_mean[i].tolist()
        lr = sum((a - o) ** 2 - (a - m) ** 2 for a, m, o in zip(xi, mi, oi)) / (2 * std**2)
        kl = sum((m - o) ** 2 for m, o in zip(mi, oi)) / (2 * std**2)
        lr = lr / DIMS if logp_reduction == "per_dim" else lr
        gate = kl / DIMS if kl_reduction == "per_dim" else kl
        exc = gate > delta if kl_tie == "keep" else gate >= delta
        a = float(adv[i])
        if name == "flow_dppo":
            pos, neg = exc and a > 0 and lr > 0, exc and a < 0 and lr < 0
        elif name == "flow_dppo_symmetric":
            pos, neg = exc and a > 0, exc and not a > 0
        else:  # flow_dppo_predictive, first order (Eq. 26): D_t in the log-prob reduction
            d_same = kl / DIMS if logp_reduction == "per_dim" else kl
            blk = exc and a * (lr - d_same) > 0
            pos, neg = blk and a > 0, blk and not a > 0
        g_lr = lr * std + sum((m - o) ** 2 for m, o in zip(mi, oi)) / DIMS / (2 * std)
        raw_abs.append(abs(g_lr if name == "grpo_guard" else lr))
        g_lr = max(-losses.LOG_RATIO_MAX, min(losses.LOG_RATIO_MAX, g_lr))
        lr = max(-losses.LOG_RATIO_MAX, min(losses.LOG_RATIO_MAX, lr))     # the documented clamp before exp
        r = math.exp(lr)
        rc = math.exp(g_lr) if name == "grpo_guard" else r
        lrs.append(lr); kls.append(kl); exceeded.append(exc); blocked_pos.append(pos); blocked_neg.append(neg)
        clipped.append(abs(rc - 1) > clip_range)
        clip_grad.append((r > 1 + clip_range and a > 0) or (r < 1 - clip_range and a < 0))
        guard_r.append(math.exp(g_lr))
    mean_ = lambda v: sum(v) / len(v)  # noqa: E731
    rs = [math.exp(v) for v in lrs]
    out = {"ratio_mean": mean_(rs), "ratio_std": math.sqrt(mean_([(r - mean_(rs)) ** 2 for r in rs])),
           "ratio_min": min(rs), "ratio_max": max(rs), "log_ratio_abs_mean": mean_([abs(v) for v in lrs]),
           "kl_sum_mean": mean_(kls), "kl_sum_max": max(kls), "kl_per_dim_mean": mean_(kls) / DIMS,
           "kl_per_dim_max": max(kls) / DIMS, "k1": mean_([-v for v in lrs]),
           "k3": mean_([math.exp(v) - 1 - v for v in lrs]),
           "ratio_clamped": mean_([v > losses.LOG_RATIO_MAX for v in raw_abs])}
    if name.startswith("flow_dppo"):
        blocked = [p or q for p, q in zip(blocked_pos, blocked_neg)]
        out.update(kl_exceeded=mean_(exceeded), blocked_pos=mean_(blocked_pos), blocked_neg=mean_(blocked_neg),
                   blocked=mean_(blocked), kept=1 - mean_(blocked))
    if name in ("flow_grpo", "grpo_guard"):
        out["clip_frac"] = mean_(clipped)
    if name == "flow_grpo":
        out["clip_frac_gradient"] = mean_(clip_grad)
    if name == "grpo_guard":
        out["guard_ratio_mean"] = mean_(guard_r)
    return out


STAT_LOSSES = ["flow_dppo", "flow_dppo_symmetric", "flow_dppo_predictive", "flow_grpo", "grpo_guard"]


@pytest.mark.parametrize("name", STAT_LOSSES)
@given(seed=st.integers(0, 2**31 - 1), std=st.floats(0.05, 1.0), log10_delta=st.floats(-6.0, -1.0),
       kl_reduction=st.sampled_from(["sum", "per_dim"]), logp_reduction=st.sampled_from(["sum", "per_dim"]),
       kl_tie=st.sampled_from(["keep", "block"]), clip_range=st.sampled_from([1e-4, 1e-3, 1e-2]))
def test_logged_stats_equal_a_per_sample_loop(name, seed, std, log10_delta, kl_reduction, logp_reduction, kl_tie,
                                              clip_range):
    """kl_exceeded, blocked_pos/neg, blocked, kept, clip_frac(_gradient), the ratio moments, |log r|, the KLs,
    k1/k3, ratio_clamped and guard_ratio_mean of each loss = the per-sample loop (log r clamped to
    ±LOG_RATIO_MAX as documented), on a batch whose per-sample KL spans
    δ/100 … 100δ and whose Â includes 0.  Fractions: exact (they are k/16); the rest rtol 1e-9, atol 1e-13
    (the loop forms the residual difference unfactored)."""
    if name == "grpo_guard" and logp_reduction == "sum":
        logp_reduction = "per_dim"                      # the guard is defined for per-dim log-probs only
    gen = torch.Generator().manual_seed(seed)
    delta = 10.0**log10_delta
    delta_sum = delta * (DIMS if kl_reduction == "per_dim" else 1)      # δ on the summed KL
    target = delta_sum * 10.0 ** (4 * torch.rand(B, generator=gen, dtype=torch.float64) - 2)   # KL_sum
    old_mean = torch.randn(B, DIMS, generator=gen, dtype=torch.float64)
    u = torch.randn(B, DIMS, generator=gen, dtype=torch.float64)
    mean = old_mean + u / u.norm(dim=1, keepdim=True) * torch.sqrt(2 * std**2 * target)[:, None]
    x = old_mean + std * torch.randn(B, DIMS, generator=gen, dtype=torch.float64)
    adv = torch.randn(B, generator=gen, dtype=torch.float64)
    adv[::5] = 0.0
    hyper = dict(clip_range=clip_range) if name in ("flow_grpo", "grpo_guard") else \
        dict(delta=delta, kl_reduction=kl_reduction, kl_tie=kl_tie)
    _, stats = losses.POLICY_LOSSES[name](mean=mean, old_mean=old_mean, std=torch.tensor(std, dtype=torch.float64),
                                          advantages=adv, sample=x, logp_reduction=logp_reduction, **hyper)
    want = _loop_stats(name, x, mean, old_mean, std, adv, delta=delta, clip_range=clip_range,
                       kl_reduction=kl_reduction, logp_reduction=logp_reduction, kl_tie=kl_tie)
    fractions = {"kl_exceeded", "blocked_pos", "blocked_neg", "blocked", "kept", "clip_frac", "clip_frac_gradient",
                 "ratio_clamped"}
    assert set(want) <= set(stats), set(want) - set(stats)
    for key, value in want.items():
        if key in fractions:
            assert float(stats[key]) == value, (key, float(stats[key]), value)
        else:
            assert float(stats[key]) == pytest.approx(value, rel=1e-9, abs=1e-13), key
