"""Mutation check for proofs_check: every planted wrong constant in the core math must fail a proof check.

    .venv/bin/python proofs_check/run_mutations.py            # all mutants (~10 s each on 2 cores)
    .venv/bin/python proofs_check/run_mutations.py M03 M16    # a selection

Each mutant is applied to a COPY of the repo (flowdppo/, analysis/, proofs_check/, conftest.py) in a temp
directory — the working tree is never touched, so engineers running tests meanwhile are unaffected — and
`pytest proofs_check --maxfail=3` runs there.  A mutant is "caught" when pytest fails; the first failing
tests are reported.  The results are recorded in proofs_check/README.md.
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Mutant:
    id: str
    path: str          # relative to the repo root
    old: str           # replaced text; must occur at least once
    new: str
    what: str
    occurrence: int = 1   # which occurrence to replace (1-based); 0 = all
    expect_caught: bool = True   # False only for a documented, known limit of the checks


MUTANTS = [
    # --- sde.py: transition math ---------------------------------------------------------------------
    Mutant("M01", "flowdppo/sde.py", "sigma_tilde = torch.where(sigma >= 1.0, sigma_next, sigma)",
           "sigma_tilde = torch.clamp(sigma, max=0.99)", "σ = 1 rule replaced by UniRL's 0.99 clamp (step-0 σ)"),
    Mutant("M02", "flowdppo/sde.py", "sigma_tilde = torch.where(sigma >= 1.0, sigma_next, sigma)",
           "sigma_tilde = torch.where(sigma >= 1.0, sigma_next, sigma_next)", "σ_next used at every step"),
    Mutant("M03", "flowdppo/sde.py", "return flow_sde_noise_scale(sigma, sigma_next, eta) * torch.sqrt(neg_dt)",
           "return flow_sde_noise_scale(sigma, sigma_next, eta)", "Flow-SDE std without √(−dt)"),
    Mutant("M04", "flowdppo/sde.py", "return sigma_next * cps_mixing(eta)[1]",
           "return sigma_next * cps_mixing(eta)[1] * torch.sqrt(neg_dt)", "CPS std with a √(−dt) (CPS scale)"),
    Mutant("M05", "flowdppo/sde.py",
           "return x * (1.0 + s**2 * dt / (2.0 * sigma)) + v * (1.0 + s**2 * (1.0 - sigma) / (2.0 * sigma)) * dt",
           "return x * (1.0 - s**2 * dt / (2.0 * sigma)) + v * (1.0 - s**2 * (1.0 - sigma) / (2.0 * sigma)) * dt",
           "flipped sign of the score term in the SDE drift"),
    Mutant("M06", "flowdppo/sde.py",
           "return x * (1.0 + s**2 * dt / (2.0 * sigma)) + v * (1.0 + s**2 * (1.0 - sigma) / (2.0 * sigma)) * dt",
           "return x * (1.0 + s**2 * dt / sigma) + v * (1.0 + s**2 * (1.0 - sigma) / sigma) * dt",
           "missing ½ in the SDE drift s²/(2σ)"),
    Mutant("M07", "flowdppo/sde.py", "return eta * torch.sqrt(neg_dt)", "return eta * neg_dt",
           "Dance-SDE std η·(−dt) instead of η·√(−dt)"),
    Mutant("M08", "flowdppo/sde.py", "return math.cos(angle), math.sin(angle)",
           "return math.sin(angle), math.cos(angle)", "CPS cos/sin swapped"),
    Mutant("M09", "flowdppo/sde.py", "return (1.0 - sn_b) * x0_hat + sn_b * cos_ * x1_hat",
           "return (1.0 - sn_b) * x0_hat + sn_b * x1_hat", "CPS mean without cos(ηπ/2)"),
    Mutant("M10", "flowdppo/sde.py", "- torch.log(std) - 0.5 * _LOG_2PI", "- 0.5 * _LOG_2PI",
           "log-density without −log σ"),
    Mutant("M11", "flowdppo/sde.py", "/ (2.0 * std**2) - torch.log(std)", "/ (std**2) - torch.log(std)",
           "log-density missing the 2 in 2σ²"),
    Mutant("M12", "flowdppo/sde.py", "x_next = mean + std * noise.to(mean.dtype)",
           "x_next = mean + 1.1 * std * noise.to(mean.dtype)", "sampler draws with a std 10% off the one it reports"),
    Mutant("M13", "flowdppo/sde.py", "logp_per_dim=lp.mean(1)", "logp_per_dim=lp.sum(1)",
           "per-dim log-prob is the sum"),
    Mutant("M14", "flowdppo/sde.py", "return (1.0 + s**2 * (1.0 - sigma) / (2.0 * sigma)) * dt",
           "return (1.0 + s**2 * (1.0 - sigma) / (2.0 * sigma)) * -dt", "∂μ/∂v (Eq. 21) with the wrong sign of dt"),
    Mutant("M15", "flowdppo/sde.py", "return shift * s / (1.0 + (shift - 1.0) * s)",
           "return shift * s / (1.0 + shift * s)", "wrong static shift of the σ grid"),
    Mutant("M16", "flowdppo/sde.py", "return eta * torch.sqrt(sigma / (1.0 - sigma_tilde))",
           "return eta * torch.sqrt(sigma / (1.0 - sigma_tilde)) * 1.05",
           "Flow-SDE pre-factor 5% off (drift and std consistently: a valid SDE with η' = 1.05η)"),
    # --- divergence.py ---------------------------------------------------------------------------------
    Mutant("M17", "flowdppo/divergence.py", "diff**2 / (2.0 * std.to(diff.dtype) ** 2)",
           "diff**2 / (std.to(diff.dtype) ** 2)", "Eq. 14 missing the 2"),
    Mutant("M18", "flowdppo/divergence.py", "coeff = c**2 / (2.0 * std**2)", "coeff = c**2 / std**2",
           "Eq. 15 / 16 missing the ½"),
    Mutant("M19", "flowdppo/divergence.py", "c = sde.mean_velocity_coefficient(kernel, sig, sig_n, eta)",
           'c = sde.mean_velocity_coefficient("ode", sig, sig_n, eta)',
           "Eq. 15 / 16 with the ODE's velocity coefficient dt in place of the kernel's"),
    Mutant("M20", "flowdppo/divergence.py", "ndtr(torch.sqrt(kl_total / 2.0))", "ndtr(torch.sqrt(kl_total))",
           "Eq. 10 from the KL with √KL instead of √(KL/2)"),
    Mutant("M21", "flowdppo/divergence.py", "ndtr(dist / 2.0)", "ndtr(dist)", "Eq. 10 from the means without /2"),
    Mutant("M22", "flowdppo/divergence.py", "return 2.0 * z * z", "return z * z", "Remark 3 threshold missing the 2"),
    Mutant("M23", "flowdppo/divergence.py", "return torch.sqrt(kl_total.clamp_min(0.0) / 2.0)",
           "return torch.sqrt(kl_total.clamp_min(0.0) / 4.0)",
           "Pinsker bound √(KL/4)"),
    # --- losses.py -------------------------------------------------------------------------------------
    Mutant("M24", "flowdppo/losses.py", "blocked_pos = kl_exceeded & (advantages > 0) & (log_r > 0)",
           "blocked_pos = kl_exceeded & (advantages > 0) & (log_r >= 0)", "r = 1 exactly is blocked (reduced-log-prob ratio)"),
    Mutant("M25", "flowdppo/losses.py", "return kl > delta", "return kl >= delta",
           "KL = δ counts as exceeded under kl_tie='keep'"),
    Mutant("M26", "flowdppo/losses.py", "blocked_neg = kl_exceeded & (advantages < 0) & (log_r < 0)",
           "blocked_neg = kl_exceeded & (advantages < 0) & (log_r > 0)", "negative-advantage rule flipped (corrective blocked)"),
    Mutant("M27", "flowdppo/losses.py", "blocked = kl_exceeded & (advantages * (log_r - d_same) > 0)",
           "blocked = kl_exceeded & (advantages * log_r > 0)", "Eq. 26 without the −D term"),
    Mutant("M28", "flowdppo/losses.py", "scale = (advantages * log_r.exp() / n_dims)",
           "scale = (advantages * log_r.exp())", "Eq. 27 step ignores the per-dim reduction"),
    Mutant("M29", "flowdppo/losses.py", "mean_new = mean.detach() + step_size * scale * g / std**2",
           "mean_new = mean.detach() + step_size * scale * g / std", "Eq. 27 step with 1/σ instead of 1/σ²"),
    Mutant("M30", "flowdppo/losses.py",
           "loss = torch.maximum(-advantages * r, -advantages * r.clamp(1.0 - clip_range, 1.0 + clip_range))",
           "loss = torch.minimum(-advantages * r, -advantages * r.clamp(1.0 - clip_range, 1.0 + clip_range))",
           "Eq. 5 with min instead of max (flow_grpo_clip only)"),
    Mutant("M31", "flowdppo/losses.py", "guard_lr = raw_lr * s + mse / (2.0 * s)",
           "guard_lr = raw_lr * s + mse / s", "GRPO-Guard bias term missing the 2"),
    Mutant("M32", "flowdppo/losses.py", "return raw.clamp(-LOG_RATIO_MAX, LOG_RATIO_MAX), clamped",
           "return raw, clamped", "no log-ratio clamp (ratio overflow → inf/NaN)"),
    Mutant("M33", "flowdppo/losses.py", "((advantages < 0) & (log_ratio < 0))",
           "((advantages < 0) & (log_ratio > 0))", "counterfactual sign rule flipped for Â < 0"),
    Mutant("M34", "flowdppo/losses.py", "return gaussian_kl(mean, ref_mean.detach(), std, reduction)",
           "return gaussian_kl(mean.detach(), ref_mean.detach(), std, reduction)",
           "KL-to-reference without gradient (Flow-Factory #122, detached reference KL)"),
    Mutant("M35", "flowdppo/losses.py", '"blocked": f(blocked), "kept": f(~blocked)',
           '"blocked": f(blocked), "kept": f(~kl_exceeded)', "mask accounting: kept = not exceeded (mask accounting)"),
    # --- advantages.py ---------------------------------------------------------------------------------
    Mutant("M36", "flowdppo/advantages.py", "std = rewards.std(dim=1, keepdim=True, unbiased=False)",
           "std = rewards.std(dim=1, keepdim=True, unbiased=True)", "group std with Bessel's correction (advantage conventions)"),
    Mutant("M37", "flowdppo/advantages.py", "std = rewards.std(unbiased=False)",
           "std = rewards.std(dim=1, keepdim=True, unbiased=False)", "'global' std computed per group"),
    Mutant("M38", "flowdppo/advantages.py", "return std_pop.clamp_min(eps)",
           "return std_pop", "no eps floor (zero-std group → NaN)"),
    Mutant("M39", "flowdppo/advantages.py", "summed = (per_reward * w).sum(dim=2)",
           "summed = per_reward.sum(dim=2)", "GDPO ignores the weights"),
    Mutant("M40", "flowdppo/advantages.py", "return adv.clamp(-clip, clip)", "return adv.clamp(max=clip)",
           "one-sided advantage clipping"),
    # --- conventions, the exact log-ratio and the logged statistics (docs/conventions.md) ------------------
    Mutant("M44", "flowdppo/sde.py", "residual_diff = residual_diff / (2.0 * std.to(mean.dtype) ** 2)",
           "residual_diff = residual_diff / (std.to(mean.dtype) ** 2)", "Eq. 6 log-ratio missing the 2 in 2σ²"),
    Mutant("M45", "flowdppo/losses.py", "return sde.log_ratio(sample, mean, old_mean.detach(), std, reduction, scale)",
           "red = (lambda t: t.flatten(1).mean(1)) if reduction == 'per_dim' else (lambda t: t.flatten(1).sum(1))\n"
           "    return red(sde.gaussian_logp(sample, mean, std)) - red(sde.gaussian_logp(sample, old_mean.detach(), std))",
           "the losses form log r as mean(log π_θ) − mean(log π_old) again (cancellation in fp32)"),
    Mutant("M46", "flowdppo/losses.py", "return kl >= delta", "return kl > delta", "kl_tie='block' keeps KL = δ"),
    Mutant("M47", "flowdppo/losses.py", '"k3": ((r - 1.0) - log_ratio).mean()', '"k3": (r - 1.0).mean()',
           "logged k3 without its −log r term"),
    Mutant("M48", "flowdppo/losses.py", '"kl_exceeded": f(kl_exceeded)', '"kl_exceeded": f(blocked)',
           "logged kl_exceeded counts the blocked samples"),
    Mutant("M49", "flowdppo/advantages.py", "return std_pop * math.sqrt(n / (n - 1)) + eps", "return std_pop + eps",
           "adv_std='bessel' without Bessel's factor"),
    Mutant("M50", "flowdppo/divergence.py", "return _reduce((mean_p - mean_q) ** 2, reduction)",
           "return _reduce((mean_p - mean_q) ** 2, reduction) / 2.0", "beta_units='mean_sq' halved"),
    Mutant("M51", "flowdppo/sde.py", 'if scale == "normalized":', 'if scale != "bogus":',
           "cps_logp='unnormalized' ignored (always divided by 2σ²)"),
    # --- analysis/theory/toy_mdp.py: the pure functions behind Theorems 1-2 --------------------------------------
    Mutant("M41", "analysis/theory/toy_mdp.py", "future[:, k] = future[:, k + 1] * rho[:, k + 1]",
           "future[:, k] = future[:, k + 1] * rho[:, k]", "Theorem 1's Π_{j>k} ρ_j off by one (a dropped term)"),
    Mutant("M42", "analysis/theory/toy_mdp.py", "2.0 * xi * h * (h - 1) * tv_max**2", "1.0 * xi * h * (h - 1) * tv_max**2",
           "Eq. 8 penalty with ξ(K−1)(K−2) instead of 2ξ(K−1)(K−2)", occurrence=0),
    Mutant("M43", "analysis/theory/toy_mdp.py", "4.0 * xi * tv_sum_mean", "2.0 * xi * tv_sum_mean",
           "App. B.3 linear penalty halved (the bound stays valid on every MDP tried: only golden values catch it)",
           occurrence=0),
]


def _copy_repo(dst: Path) -> None:
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", ".hypothesis", ".pytest_cache")
    for name in ("flowdppo", "analysis", "proofs_check"):
        shutil.copytree(REPO / name, dst / name, ignore=ignore)
    shutil.copy2(REPO / "conftest.py", dst / "conftest.py")


def _apply(root: Path, m: Mutant) -> None:
    path = root / m.path
    text = path.read_text(encoding="utf-8")
    count = text.count(m.old)
    if count == 0:
        raise SystemExit(f"{m.id}: text to mutate not found in {m.path}: {m.old!r}")
    if m.occurrence == 0:
        text = text.replace(m.old, m.new)
    else:
        idx = -1
        for _ in range(m.occurrence):
            idx = text.index(m.old, idx + 1)
        text = text[:idx] + m.new + text[idx + len(m.old):]
    path.write_text(text, encoding="utf-8")


def run_mutant(m: Mutant) -> tuple[bool, list[str]]:
    with tempfile.TemporaryDirectory(prefix=f"flowdppo_{m.id}_") as tmp:
        root = Path(tmp)
        _copy_repo(root)
        _apply(root, m)
        env = dict(os.environ, PYTHONPATH=str(root), HYPOTHESIS_PROFILE="ci", PYTHONDONTWRITEBYTECODE="1")
        cmd = [sys.executable, "-c",
               "import sys, flowdppo, pytest; assert flowdppo.__file__.startswith(sys.argv[1]), flowdppo.__file__;"
               " sys.exit(pytest.main(['proofs_check', '-q', '--maxfail=3', '-p', 'no:cacheprovider', '-rf']))",
               str(root)]
        out = subprocess.run(cmd, cwd=root, env=env, capture_output=True, text=True)
        failed = sorted(set(re.findall(r"^FAILED (\S+)", out.stdout, flags=re.M)))
        if out.returncode not in (0, 1):
            failed.append(f"(pytest exit {out.returncode}: {out.stdout[-300:]} {out.stderr[-300:]})")
        return out.returncode != 0, failed


def main(argv: list[str]) -> int:
    selected = [m for m in MUTANTS if not argv or m.id in argv]
    survivors, unexpected = [], []
    for m in selected:
        caught, failed = run_mutant(m)
        status = "caught " if caught else "SURVIVED"
        print(f"{m.id} {status} {m.path}: {m.what}")
        for f in failed[:3]:
            print(f"      {f}")
        if not caught:
            survivors.append(m.id)
        if caught != m.expect_caught:
            unexpected.append(m.id)
        sys.stdout.flush()
    print(f"\n{len(selected) - len(survivors)}/{len(selected)} mutants caught" +
          (f"; survivors: {', '.join(survivors)}" if survivors else "") +
          (f"; UNEXPECTED: {', '.join(unexpected)}" if unexpected else "; all as expected"))
    return 1 if unexpected else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
