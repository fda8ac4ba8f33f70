"""Numbers behind the paper's theory, printed (not asserted).  Run: python analysis/theory_tables.py

(i)   Tightness of Theorem 2 (Eq. 8) and of the linear bound (App. B.3) on random tabular MDPs: the true
      improvement J_θ − J_old against L′ and each bound, and how much slack each penalty leaves
      (penalty / |Δ|; 1 would be tight).  The asserted versions live in proofs_check/test_theorem2_bound.py.
(ii)  Ratio noise vs the exact KL (§3.2, Eq. 13, App. D): for latent sizes D and per-dim KLs, the mean and
      std of log r — summed log-probs (the paper's r) and per-dim-mean log-probs (every published code's
      r̄ = r^{1/D}) — against the exact law N(−KL, 2KL), and the fraction of samples that a PPO window
      |r − 1| > ε would flag, measured by sampling through sde.step and predicted from the law.
(iii) Marginal variance error of each kernel on Gaussian data vs the number of steps (exact propagation,
      analysis.theory.gaussian_flow): Euler error for ODE/Dance, the σ = 1 step for Flow-SDE, and CPS's
      non-vanishing bias for spread data.
"""
from __future__ import annotations

import argparse
import math

import numpy as np
import torch


from analysis.theory import toy_mdp  # noqa: E402
from analysis.theory.gaussian_flow import propagate_exact  # noqa: E402
from flowdppo import divergence, sde  # noqa: E402


def _table(header: list[str], rows: list[list], fmt: str = "{:>11}") -> str:
    def cell(v):
        if isinstance(v, float):
            return f"{v:.3g}" if v != 0 else "0"
        return str(v)
    widths = [max(len(h), *(len(cell(r[i])) for r in rows)) for i, h in enumerate(header)]
    line = lambda vals: "  ".join(cell(v).rjust(w) for v, w in zip(vals, widths))  # noqa: E731
    return "\n".join([line(header), line(["-" * w for w in widths])] + [line(r) for r in rows])


# ----------------------------------------------------------------------------------------------------
# (i) Theorem 2 tightness
# ----------------------------------------------------------------------------------------------------
def theorem2_tightness(n_mdps: int, seed: int) -> str:
    rng = np.random.default_rng(seed)
    rows = []
    for horizon in (2, 4, 6):
        for scale in (0.01, 0.1, 0.5, 2.0):
            rec = []
            for _ in range(n_mdps):
                mdp = toy_mdp.random_mdp(rng, n_states=3, n_actions=2, horizon=horizon)
                old = toy_mdp.random_policy(rng, mdp)
                new = toy_mdp.perturb_policy(rng, old, scale)
                rec.append(toy_mdp.theorem_terms(mdp, old, new))
            col = lambda k: np.array([t[k] for t in rec])  # noqa: E731
            abs_delta = np.abs(col("Delta"))
            nz = abs_delta > 1e-15
            rows.append([
                horizon, scale, float(np.median(col("tv_max"))), float(np.median(col("improvement"))),
                float(np.median(col("L_prime"))), float(np.median(abs_delta)),
                float(np.median(col("penalty_quadratic"))), float(np.median(col("penalty_linear"))),
                float(np.median(col("penalty_quadratic")[nz] / abs_delta[nz])) if nz.any() else math.nan,
                float(np.median(col("penalty_linear")[nz] / abs_delta[nz])) if nz.any() else math.nan,
                float(np.mean(col("penalty_quadratic") < col("penalty_linear"))),
                int(np.sum(col("improvement") < np.maximum(col("bound_quadratic"), col("bound_linear")) - 1e-12)),
            ])
    header = ["K-1", "scale", "TVmax", "J_θ-J_old", "L'", "|Δ|", "pen_quad", "pen_lin",
              "quad/|Δ|", "lin/|Δ|", "P(quad<lin)", "violations"]
    tight_rows = []
    for tv in (0.05, 0.2, 0.45):
        t = toy_mdp.theorem_terms(*toy_mdp.adversarial_example(2, 0.5, 0.5 + tv))
        tight_rows.append([tv, t["improvement"], t["L_prime"], t["bound_quadratic"], t["bound_linear"],
                           t["penalty_quadratic"] / abs(t["Delta"])])
    return (f"(i) Theorem 2 on random tabular MDPs (3 states, 2 actions, {n_mdps} MDP/policy pairs per row; "
            "medians; slack = penalty/|Δ|)\n" + _table(header, rows) +
            "\n\n    The two-decision example of analysis.theory.toy_mdp.adversarial_example attains Eq. 8:\n" +
            _table(["TV", "J_θ-J_old", "L'", "bound_quad", "bound_lin", "quad/|Δ|"], tight_rows))


# ----------------------------------------------------------------------------------------------------
# (ii) Ratio noise
# ----------------------------------------------------------------------------------------------------
def trip_fraction_lognormal(mu: float, sd: float, eps: float) -> float:
    """P(|e^L − 1| > ε) for L ~ N(mu, sd²)."""
    if sd == 0:
        return float(abs(math.exp(mu) - 1) > eps)
    cdf = lambda z: 0.5 * math.erfc(-z / math.sqrt(2))  # noqa: E731
    upper = 1.0 - cdf((math.log1p(eps) - mu) / sd)
    lower = cdf((math.log1p(-eps) - mu) / sd) if eps < 1 else 0.0
    return upper + lower


def log_ratio_samples(kl_dim: float, dims: int, n_samples: int, gen: torch.Generator, kernel: str = "flow_sde",
                      sigma: float = 0.7, sigma_next: float = 0.6, eta: float = 0.7,
                      chunk: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    """n_samples draws of log r under π_old, measured through flowdppo.sde.step, each from its own random state
    with the policy moved so that the exact KL per dim (flowdppo.divergence) equals `kl_dim`: (log r with summed
    log-probs, log r with per-dim-mean log-probs).  Eq. 13 / App. D predict N(−KL, 2·KL) for the first."""
    lr_sum, lr_dim = [], []
    std = sde.transition_std(kernel, sigma, sigma_next, eta)
    for start in range(0, n_samples, chunk):
        n = min(chunk, n_samples - start)
        x = torch.randn(n, dims, generator=gen, dtype=torch.float64)
        v_old = torch.randn(n, dims, generator=gen, dtype=torch.float64)
        dv = torch.randn(n, dims, generator=gen, dtype=torch.float64)
        unit = divergence.kl_per_dim(sde.transition_mean(kernel, x, v_old, sigma, sigma_next, eta),
                                     sde.transition_mean(kernel, x, v_old + dv, sigma, sigma_next, eta), std)
        v_new = v_old + dv * (kl_dim / unit).sqrt()[:, None]     # exact per-dim KL = kl_dim per sample
        old = sde.step(kernel, x=x, v=v_old, sigma=sigma, sigma_next=sigma_next, eta=eta, generator=gen)
        new = sde.step(kernel, x=x, v=v_new, sigma=sigma, sigma_next=sigma_next, eta=eta, x_next=old.x_next)
        lr_sum.append(new.logp_sum - old.logp_sum)
        lr_dim.append(new.logp_per_dim - old.logp_per_dim)
    return torch.cat(lr_sum), torch.cat(lr_dim)


def ratio_noise(n_samples: int, seed: int, kernel: str = "flow_sde", sigma: float = 0.7,
                sigma_next: float = 0.6, eta: float = 0.7, chunk: int = 64) -> str:
    gen = torch.Generator().manual_seed(seed)
    rows = []
    for dims in (64, 4096, 65536):
        for kl_dim in (1e-7, 1e-6, 1e-5, 1e-4):
            s, d = log_ratio_samples(kl_dim, dims, n_samples, gen, kernel, sigma, sigma_next, eta, chunk)
            kl_sum = kl_dim * dims
            row = [dims, kl_dim, kl_sum, float(s.mean()), -kl_sum, float(s.std()), math.sqrt(2 * kl_sum),
                   float(d.mean()), float(d.std()), math.sqrt(2 * kl_sum) / dims]
            for eps in (0.2, 1e-4):
                row += [float(((s.exp() - 1).abs() > eps).double().mean()),
                        trip_fraction_lognormal(-kl_sum, math.sqrt(2 * kl_sum), eps),
                        float(((d.exp() - 1).abs() > eps).double().mean()),
                        trip_fraction_lognormal(-kl_dim, math.sqrt(2 * kl_sum) / dims, eps)]
            rows.append(row)
    header = ["D", "KL/dim", "KL_sum", "E[logr]", "-KL", "sd[logr]", "√(2KL)", "E[logr̄]", "sd[logr̄]",
              "√(2KL)/D",
              "trip.2 r", "pred", "trip.2 r̄", "pred", "trip1e-4 r", "pred", "trip1e-4 r̄", "pred"]
    return (f"(ii) Ratio noise through sde.step ({kernel}, σ={sigma}→{sigma_next}, η={eta}, {n_samples} samples "
            "per row; r: summed log-probs, r̄: per-dim mean; trip = fraction with |r − 1| > ε, pred = from "
            "log r ~ N(−KL, 2KL))\n" + _table(header, rows))


# ----------------------------------------------------------------------------------------------------
# (iii) Marginals on Gaussian data
# ----------------------------------------------------------------------------------------------------
def marginal_errors() -> str:
    m = torch.tensor([0.5, -1.0, 2.0], dtype=torch.float64)
    s2 = torch.tensor([0.3, 1.2, 0.04], dtype=torch.float64)
    rows = []
    for kernel in ("ode", "dance_sde", "flow_sde", "cps"):
        for eta in ((0.0,) if kernel == "ode" else (0.3, 0.7, 1.0)):
            row = [kernel, eta]
            for k in (10, 100, 400, 1600):
                mean, var = propagate_exact(kernel, eta, m, s2, k)[-1]
                row.append(float(((var - s2) / s2).abs().max()))
            rows.append(row)
    return ("(iii) Max relative error of the final variance on Gaussian data (exact propagation; the mean is "
            "exact for every kernel)\n" + _table(["kernel", "η", "K=10", "K=100", "K=400", "K=1600"], rows))


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mdps", type=int, default=200, help="MDP/policy pairs per row of table (i)")
    parser.add_argument("--samples", type=int, default=1000, help="samples per row of table (ii)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    print(theorem2_tightness(args.mdps, args.seed), end="\n\n")
    print(ratio_noise(args.samples, args.seed), end="\n\n")
    print(marginal_errors())


if __name__ == "__main__":
    main()
