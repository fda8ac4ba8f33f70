"""Kernel properties: the per-step sampler alone (Eq. 2–4, 6; anchors; the on-policy identity).

Each function takes the run Context and returns a report.Result; see properties.py for the list.
"""
from __future__ import annotations

import math

import torch
from torch.distributions import Normal

from .. import sde
from . import _observe as ob
from ._base import (Context, EQ, LABEL, STORAGE_DELTA, STORAGE_TOL, Z_TOL, _call_kernel, _gen, _randn,
                   _result, _scalar, _skip, _stat, _std_b, _std_like, _step_name, explain_std, train_steps)
from .report import Result


def std_matches_sampler(ctx: Context) -> Result:
    """Eq. 4: z = (x' − μ)/std over the step's own draws has mean 0 and mean square 1 at every step."""
    name, eq = "std_matches_sampler", "Eq. 4"
    if ctx.kernel_is_reference:
        return _skip(name, eq, "no --kernel given")
    s = ctx.settings
    steps = train_steps(s)
    n = s.mc_samples * s.mc_dims
    se_m2, se_mean = math.sqrt(2.0 / n), 1.0 / math.sqrt(n)
    rows, used, true, worst = [], [], [], 0.0
    tol = Z_TOL * se_m2 / 2.0                      # on the std ratio (half the relative tolerance of m2)
    ok = True
    for i, sig, sn in steps:
        gen = _gen(s, 1, i)
        x, v = (_randn(gen, s.mc_samples, s.mc_dims, dtype=s.torch_dtype) for _ in range(2))
        out = _call_kernel(ctx, x=x, v=v, sigma=sig, sigma_next=sn, generator=gen)
        std = _std_like(out.std, out.mean).double()
        z = (out.x_next.double() - out.mean.double()) / std
        m2, zbar = float((z**2).mean()), float(z.mean())
        z_m2, z_mean = (m2 - 1.0) / se_m2, zbar / se_mean
        ratio = 1.0 / math.sqrt(m2)                        # reported std / sampled std
        good = abs(z_m2) <= Z_TOL and abs(z_mean) <= Z_TOL
        ok &= good
        worst = max(worst, abs(ratio - 1.0))
        used.append(_scalar(std))
        true.append(_scalar(std) / ratio)
        rows.append(f"{_step_name(i, sig, sn)}: reported std {used[-1]:.5g}, sampled {true[-1]:.5g} "
                    f"(ratio {ratio:.4f}, z={z_m2:+.1f}); noise mean z={z_mean:+.1f}" + ("" if good else "  ✗"))
    if ok:
        meaning = (f"the std each step reports is the std it samples with, at all {len(steps)} steps incl. σ = 1 "
                   f"(max deviation {worst:.1%})")
    else:
        why = (explain_std(used, true, steps, s, rtol_true=tol)
               or "the sampler's noise is not centred on the reported mean")
        k = max(range(len(steps)), key=lambda j: abs(used[j] / true[j] - 1.0))
        meaning = (f"the reported std is {used[k] / true[k]:.3g}× the std the sampler draws with at "
                   f"{_step_name(*steps[k])}: {why}; every log-prob and KL that divides by it is off by the square")
    return _result(name, eq, ok, worst, tol, "max |reported std / sampled std − 1|", meaning, rows,
                   _stat(s, n, 2 * len(steps)))


def kernel_matches_paper(ctx: Context) -> Result:
    """Eq. 2 / Eq. 3 / Dance-SDE: the step's mean and std equal flowdppo.sde's for the declared sampler."""
    s = ctx.settings
    name, eq = "kernel_matches_paper", EQ[s.sampler]
    if ctx.kernel_is_reference:
        return _skip(name, eq, "no --kernel given")
    if s.sampler == "custom":
        return _skip(name, eq, "--sampler custom: no paper closed form to compare with")
    steps = train_steps(s)
    rows, used, true = [], [], []
    worst_std = worst_mean = 0.0
    for i, sig, sn in steps:
        gen = _gen(s, 2, i)
        x, v = (_randn(gen, 8, s.mc_dims, dtype=s.torch_dtype) for _ in range(2))
        out = _call_kernel(ctx, x=x, v=v, sigma=sig, sigma_next=sn, generator=gen)
        paper_std = float(sde.transition_std(s.sampler, sig, sn, s.eta))
        paper_mean = sde.transition_mean(s.sampler, x.double(), v.double(), sig, sn, s.eta)
        std = _scalar(_std_like(out.std, out.mean))
        e_std = abs(std / paper_std - 1.0)
        e_mean = float((out.mean.double() - paper_mean).abs().max()) / paper_std
        worst_std, worst_mean = max(worst_std, e_std), max(worst_mean, e_mean)
        used.append(std)
        true.append(paper_std)
        rows.append(f"{_step_name(i, sig, sn)}: std {std:.6g} vs {eq} {paper_std:.6g} (ratio {std / paper_std:.4f}); "
                    f"max |Δμ| = {e_mean:.2e} σ")
    ok = worst_std <= 1e-4 and worst_mean <= 1e-4
    label = LABEL[s.sampler]
    if ok:
        meaning = f"mean and std equal the {label} step ({eq}) at all {len(steps)} steps incl. σ = 1"
    else:
        parts = []
        if worst_std > 1e-4:
            parts.append(f"std ≠ the {label} std: {explain_std(used, true, steps, s, rtol=1e-4)}")
        if worst_mean > 1e-4:
            parts.append(f"mean differs from {eq} by up to {worst_mean:.2e} σ")
        meaning = "; ".join(parts)
    return _result(name, eq, ok, max(worst_std, worst_mean), 1e-4,
                   "max(|std/std_paper − 1|, max|μ − μ_paper|/σ)", meaning, rows)


def logp_normalised(ctx: Context) -> Result:
    """Eq. 4 / Eq. 6: the step's log-prob = log N(x'; μ, std²I) (torch.distributions), summed or averaged
    over dims; otherwise the ratio r = exp(Δlog π) is not the likelihood ratio of Eq. 6."""
    name, eq = "logp_normalised", "Eq. 4/6"
    if ctx.kernel_is_reference:
        return _skip(name, eq, "no --kernel given")
    s = ctx.settings
    steps = train_steps(s)
    rows, worst, reductions, factors, unnormalised = [], 0.0, set(), [], []
    for i, sig, sn in steps:
        gen = _gen(s, 3, i)
        x, v = (_randn(gen, 64, s.mc_dims, dtype=s.torch_dtype) for _ in range(2))
        out = _call_kernel(ctx, x=x, v=v, sigma=sig, sigma_next=sn, generator=gen)
        mean, xn = out.mean.double(), out.x_next.double()
        std = _std_like(out.std, out.mean).double()
        ref_sum = Normal(mean, std).log_prob(xn).flatten(1).sum(1)
        lp = out.logp.double()
        errs = {red: float(((lp - ref) / (1.0 + ref.abs())).abs().max())
                for red, ref in (("sum", ref_sum), ("per_dim", ref_sum / s.mc_dims))}
        red = min(errs, key=errs.get)
        reductions.add(red)
        worst = max(worst, errs[red])
        # the log-ratio scale: the slope of log π in the mean squared distance q = mean_d (x' − μ)²;
        # Eq. 4 has slope −1/(2σ²) per dim (−D/(2σ²) summed), the published CPS code slope −1 (or −D)
        q = ((xn - mean) ** 2).flatten(1).mean(1)
        q_c, lp_c = q - q.mean(), lp - lp.mean()
        slope = -float((q_c * lp_c).sum() / (q_c**2).sum())
        two_var = 2.0 * _scalar(std) ** 2
        per_dim_like = slope > 0 and abs(math.log(slope * two_var)) <= abs(math.log(slope * two_var / s.mc_dims))
        factor = slope * two_var / (1.0 if per_dim_like else s.mc_dims)
        factors.append(factor)
        unnormalised.append(abs(slope / (1.0 if per_dim_like else s.mc_dims) - 1.0) < 1e-2)
        rows.append(f"{_step_name(i, sig, sn)}: closest reduction {red}, max rel. error {errs[red]:.2e}; "
                    f"log-ratio scale {factor:.4g}× Eq. 6")
    ok = worst <= 1e-5
    if ok:
        red_txt = " / ".join({"per_dim": "per-dim mean", "sum": "sum over dims"}[r] for r in sorted(reductions))
        meaning = (f"log π is the normalised Gaussian log-density ({red_txt}) at all "
                   f"{len(steps)} steps: ratios are Eq. 6's")
    elif all(abs(f - 1.0) < 1e-3 for f in factors):
        meaning = ("log π has the right dependence on x' but wrong constants (−log σ, −½log 2π): ratios are "
                   "still Eq. 6's")
    else:
        lo, hi = min(factors), max(factors)
        pattern = ("it is the unnormalised −(x'−μ)² (no 1/(2σ²)), so log-ratios are 2σ²× Eq. 6's"
                   if all(unnormalised) else "log-ratios are scaled")
        meaning = (f"log π is not the normalised Gaussian density: {pattern} (factor {lo:.3g}…{hi:.3g} over the "
                   "steps); r is not the likelihood ratio, and |r − 1| and the r ≷ 1 tests mean something else")
    return _result(name, eq, ok, worst, 1e-5, "max |log π − log N(x'; μ, std²)| / (1 + |log N|)", meaning, rows)


def anchor_precision(ctx: Context) -> Result:
    """Eq. 14 as the mask computes it from STORED anchors: the precision the old mean and old log-prob are
    kept at (a bf16/fp16 buffer is detected by round trip: every value exactly representable), and the
    per-dim KL the mask reads when the true per-dim KL is δ = 1e-7 (the paper's Flow-DPPO threshold).
    The exact old mean is the kernel run in float64 on the same state; the new mean is that plus a
    random direction scaled to KL = δ, rounded to the compute dtype as a fresh forward would be."""
    name, eq = "anchor_precision", "Eq. 14"
    if ctx.kernel_is_reference:
        return _skip(name, eq, "no --kernel given")
    s = ctx.settings
    steps = train_steps(s)
    store = ctx.subject.store
    dims = 4096
    rows, inflations, lp_err, bf16_exact, fp16_exact, dtypes = [], [], 0.0, [], [], set()
    ref_note = ""
    for i, sig, sn in steps:
        gen = _gen(s, 4, i)
        x, v, direction = (_randn(gen, 2, dims, dtype=s.torch_dtype) for _ in range(3))
        out = _call_kernel(ctx, x=x, v=v, sigma=sig, sigma_next=sn, generator=gen)
        anchor_mean, anchor_lp = store(out.mean), store(out.logp)
        dtypes.add(str(anchor_mean.dtype).replace("torch.", ""))
        try:                                        # the exact mean: the kernel in float64
            ref = _call_kernel(ctx, x=x.double(), v=v.double(), sigma=sig, sigma_next=sn,
                               x_next=out.x_next.double()).mean.double()
        except Exception as e:                     # noqa: BLE001
            ref = out.mean.double()
            ref_note = f"(the kernel failed in float64 — {type(e).__name__} — so the reference is its own output)"
        std = _std_like(out.std, out.mean).double()
        d = direction.double()
        d = d * torch.sqrt(2.0 * std**2 * STORAGE_DELTA * dims) / d.norm(dim=1, keepdim=True)
        new = (ref + d).to(out.mean.dtype).double()     # the updated policy's fresh mean, in the compute dtype
        true_kl = ((new - ref) ** 2 / (2.0 * std**2)).mean(1)
        read_kl = ((new - anchor_mean.double()) ** 2 / (2.0 * std**2)).mean(1)
        infl = float((read_kl / true_kl).max())
        inflations.append(infl)
        a = anchor_mean.reshape(-1)
        bf16_exact.append(float((a == a.to(torch.bfloat16).to(a.dtype)).double().mean()))
        fp16_exact.append(float((a == a.to(torch.float16).to(a.dtype)).double().mean()))
        lp_err = max(lp_err, float(((anchor_lp.double() - out.logp.double()).abs() /
                                    out.logp.double().abs().clamp_min(1.0)).max()))
        rows.append(f"{_step_name(i, sig, sn)}: per-dim KL read at a true δ = 1e-7: {infl:.4g} δ; "
                    f"bf16-exact anchor values {bf16_exact[-1]:.1%}")
    worst = max(abs(f - 1.0) for f in inflations)
    ok = worst <= STORAGE_TOL and lp_err <= 1e-6
    precision = ("bf16 precision (every value bf16-exact)" if min(bf16_exact) > 0.999 else
                 "fp16 precision (every value fp16-exact)" if min(fp16_exact) > 0.999 else "≥ fp32 precision")
    stored = f"anchors stored as {'/'.join(sorted(dtypes))} at {precision}"
    if ok:
        meaning = (f"{stored}: at a true per-dim KL of δ = 1e-7 the mask reads {min(inflations):.4f}–"
                   f"{max(inflations):.4f} δ; stored log-probs "
                   + ("bit-identical to the computed ones" if lp_err == 0 else f"within {lp_err:.1e} (relative)"))
    else:
        parts = [stored]
        if worst > STORAGE_TOL:
            parts.append(f"at a true per-dim KL of δ = 1e-7 the mask reads {min(inflations):.3g}–"
                         f"{max(inflations):.3g} δ "
                         "over the steps — rounding noise in the anchor, not policy change, decides the mask (keep "
                         "anchors in fp32)")
        if lp_err > 1e-6:
            parts.append(f"stored old log-probs are off by up to {lp_err:.1e} (relative), so r ≠ 1 on-policy")
        meaning = "; ".join(parts)
    if ref_note:
        rows.append(ref_note)
    return _result(name, eq, ok, worst, STORAGE_TOL, "max |KL read from stored anchors / true KL − 1| at δ = 1e-7",
                   meaning, rows)


def on_policy_identity(ctx: Context) -> Result:
    """At θ = θ_old: replaying the stored action gives r ≡ 1 and KL ≡ 0 bit for bit; at δ = 0 the loss
    masks nothing and ∂L/∂log π_i = −Â_i/B — the plain policy gradient (Eq. 17 with M ≡ 1)."""
    name, eq = "on_policy_identity", "Eq. 6/17"
    s = ctx.settings
    steps = train_steps(s)
    store = ctx.subject.store
    rows, worst_lp, worst_kl, worst_g, blocked_any = [], 0.0, 0.0, 0.0, 0
    b = 16
    adv = torch.linspace(-1.5, 1.5, b + 1, dtype=torch.float64)
    adv = adv[adv != 0][:b].to(s.torch_dtype)
    for i, sig, sn in steps:
        gen = _gen(s, 5, i)
        x, v = (_randn(gen, b, s.mc_dims, dtype=s.torch_dtype) for _ in range(2))
        out = _call_kernel(ctx, x=x, v=v, sigma=sig, sigma_next=sn, generator=gen)
        old_mean, old_lp = store(out.mean), store(out.logp)
        rep = _call_kernel(ctx, x=x, v=v, sigma=sig, sigma_next=sn, x_next=out.x_next)
        std = _std_like(rep.std, rep.mean)
        d_lp = float((rep.logp.double() - old_lp.double()).abs().max())
        kl0 = float(((rep.mean.double() - old_mean.double()) ** 2 / (2.0 * std.double() ** 2)).flatten(1).mean(1).max())
        worst_lp, worst_kl = max(worst_lp, d_lp), max(worst_kl, kl0)
        row = f"{_step_name(i, sig, sn)}: max |log r| = {d_lp:.2e}, max per-dim KL = {kl0:.2e}"
        if ctx.subject.loss is not None:
            batch = ob.Batch(logp=rep.logp, old_logp=old_lp, mean=rep.mean, old_mean=old_mean,
                             std=_std_b(rep.std, rep.mean),
                             advantages=adv, sigma=sig, sigma_next=sn, eta=s.eta)
            obs = ob.observe(ctx.subject.loss, batch, 0.0)
            r = torch.exp(rep.logp.double() - old_lp.double())
            want = -adv.double() * r / b
            g_err = float(((obs.g_logp.double() - want).abs() / want.abs()).max())
            n_blocked = int(obs.blocked(adv).sum())
            blocked_any += n_blocked
            worst_g = max(worst_g, g_err if math.isfinite(g_err) else math.inf)
            row += f"; at δ = 0: {n_blocked} of {b} masked, max |∂L/∂log π ÷ (−Â/B) − 1| = {g_err:.2e}"
            if obs.error:
                row += f"; the loss raised {obs.error}"
        rows.append(row)
    ok = worst_lp == 0.0 and worst_kl == 0.0 and blocked_any == 0 and worst_g <= 1e-5
    if ok:
        meaning = ("replay at θ = θ_old gives r ≡ 1 and KL ≡ 0 bit for bit at every step"
                   + ("; at δ = 0 nothing is masked and ∂L/∂log π = −Â/B, the policy gradient"
                      if ctx.subject.loss is not None else ""))
    else:
        parts = []
        if worst_lp or worst_kl:
            parts.append(f"replaying the stored action at θ = θ_old gives |log r| up to {worst_lp:.2e} and per-dim "
                         f"KL up to {worst_kl:.2e} instead of exactly 0 (rollout and replay, or the stored anchors, "
                         "disagree)")
        if blocked_any:
            parts.append(f"{blocked_any} on-policy samples are masked at δ = 0")
        if worst_g > 1e-5:
            parts.append(f"∂L/∂log π differs from the policy gradient −Â/B by up to {worst_g:.2e} (relative)")
        meaning = "; ".join(parts)
    return _result(name, eq, ok, max(worst_lp, worst_kl, worst_g), 0.0,
                   "max(|log r|, per-dim KL, |∂L/∂log π ÷ (−Â/B) − 1|) on-policy", meaning, rows)
