"""Claims C1–C7: each is turned into paired per-seed differences and a verdict by the stated rule
(analysis.runs.stats.verdict: the 95 % t-interval over seeds of a difference oriented so the claim predicts
> 0; supported if it excludes 0 on the claim's side, not supported if on the other, else inconclusive).
A claim with several parts is supported only if every part is (stats.combine).

Nothing here is typed by hand: every number comes from the runs through `Run` accessors.  Only complete
runs count (a partial run's last value is not an end-of-training value); a part whose runs are missing
or partial is reported as inconclusive with the n it has.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from analysis.campaign import experiments
from analysis.runs import stats
from analysis.campaign.experiments import RunSpec
from analysis.runs.load_runs import Run, RunSet

TAIL = 0.1        # end-of-training value of a per-iteration curve: mean of its last 10 % of iterations
HEAD = 0.25       # early-training value: mean of its first 25 % of iterations
SIGN_RULE_LEVEL = 0.9  # "the mask is the sign rule" when ≥ 90 % of sign-matched samples are blocked


@dataclass
class Part:
    """One tested difference: `value` is oriented so that the claim predicts > 0."""
    label: str
    value: stats.Interval
    verdict: str
    runs: list[str] = field(default_factory=list)
    scale: float = 1.0
    unit: str = ""


@dataclass
class Claim:
    key: str
    statement: str
    rule: str
    parts: list[Part]
    notes: list[str] = field(default_factory=list)
    combiner: Callable = stats.combine   # how part verdicts make the claim's verdict

    @property
    def verdict(self) -> str:
        return self.combiner([p.verdict for p in self.parts])


# ---------------------------------------------------------------------------------------------------
# Per-seed endpoints
# ---------------------------------------------------------------------------------------------------
def final_eval(metric: str, split: str = "test") -> Callable[[Run], float]:
    return lambda run: run.final_eval(metric, split)


def tail_of(column: str, frac: float = TAIL) -> Callable[[Run], float]:
    return lambda run: float(stats.tail_mean(run.series(column)[1], frac)[0])


def head_of(column: str, frac: float = HEAD) -> Callable[[Run], float]:
    return lambda run: float(stats.head_mean(run.series(column)[1], frac)[0])


def drop_of(column: str) -> Callable[[Run], float]:
    """Peak-to-final drop of a training curve (smoothing window ≈ 1/15 of the run)."""
    def f(run: Run) -> float:
        y = run.series(column)[1]
        return float(stats.peak_to_final_drop(y, max(1, y.size // 15), TAIL)[0])
    return f


def per_seed(runs: RunSet, specs: list[RunSpec], endpoint: Callable[[Run], float]) -> dict[int, float]:
    """{seed: endpoint(run)} over the COMPLETE runs (a partial run's last value is not end-of-training)."""
    out = {}
    for s in specs:
        r = runs.get(s.run_id)
        if r is not None and not r.partial:
            v = endpoint(r)
            if np.isfinite(v):
                out[s.seed] = v
    return out


def _cell(reg_runs: list[RunSpec], cell: str) -> list[RunSpec]:
    return [r for r in reg_runs if r.cell == cell]


def compare(runs: RunSet, label: str, a: list[RunSpec], b: list[RunSpec], endpoint: Callable[[Run], float], *,
            sign: float = 1.0, scale: float = 1.0, unit: str = "") -> Part:
    """Part for "a beats b" on `endpoint` (sign = −1 when lower is better)."""
    da, db = per_seed(runs, a, endpoint), per_seed(runs, b, endpoint)
    d = stats.paired_difference({k: sign * v for k, v in da.items()}, {k: sign * v for k, v in db.items()})
    return Part(label, d, stats.verdict(d), [s.run_id for s in a + b], scale, unit)


# ---------------------------------------------------------------------------------------------------
# The claims
# ---------------------------------------------------------------------------------------------------
PRIMARY_PAIRS = (("Flow-DPPO", "Flow-GRPO"), ("Flow-DPPO", "GRPO-Guard"), ("Flow-DPPO + CPS", "Flow-CPS"))


def c1(runs: RunSet, reg) -> Claim:
    single = reg["fig2"]
    parts = []
    for ours, base in PRIMARY_PAIRS:
        parts.append(compare(runs, f"{ours} − {base}: final test tifa (×100)", _cell(single, ours),
                             _cell(single, base), final_eval("tifa"), scale=100))
        parts.append(compare(runs, f"{base} − {ours}: KL to reference (×1e-3 per dim, last 10 %)",
                             _cell(single, ours), _cell(single, base), tail_of("ref_kl_per_dim"), sign=-1,
                             scale=1e3))
    return Claim("C1", "Higher in-domain reward at lower KL to the reference (single reward).",
                 "each DPPO variant vs each same-kernel baseline: Δ final test tifa > 0 AND Δ reference KL < 0",
                 parts)


def c2(runs: RunSet, reg) -> Claim:
    single = reg["fig2"]
    parts = [compare(runs, f"{ours} − {base}: final OOD diversity", _cell(single, ours), _cell(single, base),
                     final_eval("diversity", "ood")) for ours, base in PRIMARY_PAIRS]
    notes = []
    for metric in ("realism", "agreement"):
        for ours, base in PRIMARY_PAIRS:
            p = compare(runs, "", _cell(single, ours), _cell(single, base), final_eval(metric, "ood"))
            notes.append(f"secondary, OOD {metric}: {ours} − {base} = {p.value.fmt()} ({p.verdict})")
    return Claim("C2", "Less forgetting on out-of-domain prompts (single reward).",
                 "same base and evaluation seeds for all runs, so a higher final OOD diversity = a smaller drop "
                 "from the base; each DPPO variant vs each same-kernel baseline", parts, notes)


def c3(runs: RunSet, reg) -> Claim:
    multi = reg["fig4"]
    parts, notes = [], []
    for ours, base in PRIMARY_PAIRS:
        parts.append(compare(runs, f"{ours} − {base}: final test tifa (×100)", _cell(multi, ours),
                             _cell(multi, base), final_eval("tifa"), scale=100))
        for metric in ("agreement", "realism", "ink"):
            p = compare(runs, f"{ours} − {base}: final test {metric}", _cell(multi, ours), _cell(multi, base),
                        final_eval(metric))
            # "without sacrificing any objective": a part only fails if it is significantly worse
            v = stats.NOT_SUPPORTED if p.verdict == stats.NOT_SUPPORTED else stats.SUPPORTED
            parts.append(Part(p.label + " (must not be worse)", p.value, v if p.value.n >= 2 else stats.INCONCLUSIVE,
                              p.runs))
    return Claim("C3", "Balanced multi-objective optimisation under GDPO (tifa, agreement, realism, ink).",
                 "Δ final test tifa > 0, and no other reward significantly lower (its CI not entirely < 0)",
                 parts, notes)


def c4(runs: RunSet, reg) -> Claim:
    fig5 = reg["fig5"]
    parts, notes = [], []
    for kernel, (clip_key, dppo_key) in experiments.KERNEL_PAIRS.items():
        clip_l, dppo_l = experiments.METHODS[clip_key].label, experiments.METHODS[dppo_key].label
        for paper, (label, extra) in experiments.REUSE_SETTINGS.items():
            a, b = _cell(fig5, f"{dppo_l} | {label}"), _cell(fig5, f"{clip_l} | {label}")
            if extra:  # the sample-reuse settings
                parts.append(compare(runs, f"{kernel} {label}: drop(clip) − drop(DPPO), training tifa peak→final",
                                     a, b, drop_of("reward/tifa_mean"), sign=-1))
            p = compare(runs, "", a, b, tail_of("reward/tifa_mean"))
            notes.append(f"{kernel} {label} (paper {paper}): final training tifa DPPO − clip = {p.value.fmt()} "
                         f"({p.verdict})")
    return Claim("C4", "Stable multi-epoch training where ratio clipping degrades (Fig. 5).",
                 "in each sample-reuse setting (I2) and kernel, the clipping baseline loses more training reward "
                 "after its peak than DPPO: drop(clip) − drop(DPPO) > 0", parts, notes)


def c5(runs: RunSet, reg) -> Claim:
    fig3 = reg["fig3"]
    by_tag = {tag: [r for r in fig3 if r.cell.startswith(f"δ_{tag}")] for tag in ("lo", "mid", "hi")}
    sym = _cell(fig3, "w/o asymmetry")
    parts = [compare(runs, "asymmetric − symmetric (δ_mid): final training tifa", by_tag["mid"], sym,
                     tail_of("reward/tifa_mean")),
             compare(runs, "δ_hi − δ_lo: early training tifa (first 25 %)", by_tag["hi"], by_tag["lo"],
                     head_of("reward/tifa_mean")),
             compare(runs, "drop(δ_hi) − drop(δ_lo): training tifa peak→final", by_tag["lo"], by_tag["hi"],
                     drop_of("reward/tifa_mean"), sign=-1)]
    p = compare(runs, "", by_tag["lo"], by_tag["hi"], tail_of("reward/tifa_mean"))
    notes = [f"final training tifa δ_lo − δ_hi = {p.value.fmt()} ({p.verdict}); the paper reports the tighter δ "
             f"ending slightly better"]
    return Claim("C5", "The asymmetry is necessary, and δ trades early speed for stability (Fig. 3, CPS).",
                 "asymmetric beats symmetric at the end; the looser δ is ahead early; the tighter δ loses less "
                 "after its peak", parts, notes)


def c6(runs: RunSet, reg) -> Claim:
    fig11 = reg["fig11"]
    b0 = _cell(fig11, "β = 0 (no KL reg.)")
    b1 = [r for r in fig11 if r.cell == f"β = {1e-3:g}"]
    parts = [compare(runs, "β=0 − β=1e-3: early gain of the hackable ink reward (first 25 %)", b0, b1,
                     lambda r: head_of("reward/ink_mean")(r) - r.series("reward/ink_mean")[1][0])]
    for metric in ("tifa", "agreement", "realism", "ink"):
        p = compare(runs, f"β=1e-3 − β=0: final test {metric}", b1, b0, final_eval(metric))
        v = stats.NOT_SUPPORTED if p.verdict == stats.NOT_SUPPORTED else stats.SUPPORTED
        parts.append(Part(p.label + " (must not be worse)", p.value, v if p.value.n >= 2 else stats.INCONCLUSIVE,
                          p.runs))
    return Claim("C6", "A moderate β suppresses early reward hacking without hurting final rewards (Figs 11, 13).",
                 "β = 1e-3 gains less of the hackable ink reward early than β = 0, and no final reward is "
                 "significantly lower", parts)


def sign_rule_share(run: Run, delta: float) -> float:
    """Fraction of sign-matched samples (Â·(r−1) > 0) that the mask at δ blocks, pooled over iterations."""
    return stats.ratio_of_means(run.series(f"cf/mask_fire@{delta:g}")[1], run.series("cf/sign_rule")[1])


def c7(runs: RunSet, reg) -> Claim:
    roles: dict[str, list[RunSpec]] = {}
    for r in reg["c7"]:
        roles.setdefault(experiments.c7_role(r), []).append(r)
    parts, notes = [], []
    for dppo, clip, what in (("dppo_mid", "clip_matched_mid", "δ_mid vs matched ε"),
                             ("dppo_published", "clip_matched_published", "δ=1e-7 vs matched ε")):
        for label, endpoint, sign, scale in (("final test tifa (×100)", final_eval("tifa"), 1, 100),
                                             ("KL to reference, lower (×1e-3)", tail_of("ref_kl_per_dim"), -1, 1e3),
                                             ("final test diversity", final_eval("diversity"), 1, 1)):
            p = compare(runs, f"{what}: DPPO − clip, {label}", roles.get(dppo, []), roles.get(clip, []), endpoint,
                        sign=sign, scale=scale)
            parts.append(p)
    for label, endpoint, sign, scale in (("final test tifa (×100)", final_eval("tifa"), 1, 100),
                                         ("KL to reference, lower (×1e-3)", tail_of("ref_kl_per_dim"), -1, 1e3)):
        p = compare(runs, "", roles.get("dppo_mid", []), roles.get("clip_paper_rel", []), endpoint, sign=sign,
                    scale=scale)
        notes.append(f"at the paper's relative tightness (clip ε_paper·√(65536/D)) DPPO − clip, {label}: "
                     f"{p.value.fmt(scale)} ({p.verdict})")
    dppo_runs = [runs.get(r.run_id) for r in reg["fig2"] if r.cell in ("Flow-DPPO", "Flow-DPPO + CPS")]
    dppo_runs = [r for r in dppo_runs if r is not None and not r.partial]
    for delta in (1e-7, 1e-6):
        shares = [sign_rule_share(r, delta) for r in dppo_runs]
        ci = stats.t_interval(shares)
        notes.append(f"mask at the published δ={delta:g} blocks {ci.fmt(100)} % of the sign-matched samples "
                     f"(single-reward DPPO runs; verdict for 'the mask is the plain sign rule', ≥ "
                     f"{SIGN_RULE_LEVEL:.0%}: {stats.verdict_at_least(ci, SIGN_RULE_LEVEL)})")
    c = Claim("C7", "Does the KL criterion itself matter, or only the trust region's tightness?",
              "question read as 'the KL criterion helps beyond tightness': at MATCHED tightness (ε = √(2δ/D)) "
              "supported if DPPO is better on some endpoint (tifa, reference KL, diversity) and worse on none; "
              "not supported if clipping is better on any; inconclusive if no endpoint separates (then only "
              "the tightness is shown to matter at our scale)", parts, notes, combiner=stats.any_better_none_worse)
    return c


def all_claims(runs: RunSet, reg) -> list[Claim]:
    return [c1(runs, reg), c2(runs, reg), c3(runs, reg), c4(runs, reg), c5(runs, reg), c6(runs, reg), c7(runs, reg)]
