"""The decision rules of docs/analysis_plan.md §3, as pure functions (numpy/scipy; no I/O).  The campaign's claims
(analysis/runs/campaign_claims.py) feed them paired differences read from campaign_runs/claims/.

A primary hypothesis is a list of parts, each a set of per-seed paired differences `d_s = E(A, s) − E(B, s)`
oriented so that the claim predicts d > 0 (superiority) or d > −M (non-inferiority at margin M). A hypothesis
made of several parts is an intersection–union test (its p-value is the largest part p-value). The seven
primary p-values are corrected together by Holm's step-down procedure; every hypothesis then gets the level
α_k at which Holm tests it, and one of four verdicts:

    supported      its p-value survives Holm at family-wise α
    refuted        at α_k, the superiority part goes the other way, or a non-inferiority part is shown inferior
    equivalent     (where a margin is stated for the superiority part) its (1 − 2α_k) CI lies inside ±M (TOST)
    underpowered   none of these; the minimal detectable effect at 80 % power is reported with it
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional, Sequence

import numpy as np
from scipy import stats as _st

ALPHA = 0.05
POWER = 0.8
SUPPORTED, REFUTED, EQUIVALENT, UNDERPOWERED, PENDING = (
    "supported", "refuted", "equivalent within the margin", "underpowered", "pending")


def _finite(d: Sequence[float]) -> np.ndarray:
    x = np.asarray(d, dtype=float)
    return x[np.isfinite(x)]


def one_sided_p(d: Sequence[float], shift: float = 0.0, greater: bool = True) -> float:
    """p-value of the paired t-test of H1: mean(d) + shift > 0 (greater) or < 0; NaN below 2 values."""
    x = _finite(d) + shift
    if x.size < 2:
        return float("nan")
    if np.all(x == x[0]):      # zero variance: the t statistic is ±inf or undefined
        return 0.0 if (x[0] > 0) == greater and x[0] != 0 else 1.0
    return float(_st.ttest_1samp(x, 0.0, alternative="greater" if greater else "less").pvalue)


def two_sided_p(d: Sequence[float]) -> float:
    x = _finite(d)
    if x.size < 2:
        return float("nan")
    return float(_st.ttest_1samp(x, 0.0).pvalue)


def t_ci(d: Sequence[float], level: float) -> tuple[float, float]:
    """Two-sided `level` t-interval of the mean of d."""
    x = _finite(d)
    if x.size < 2:
        return float("nan"), float("nan")
    half = _st.t.ppf(0.5 + level / 2, x.size - 1) * x.std(ddof=1) / np.sqrt(x.size)
    return float(x.mean() - half), float(x.mean() + half)


def holm_levels(pvalues: dict[str, float], alpha: float = ALPHA) -> dict[str, tuple[float, bool]]:
    """{name: (α_k, rejected)}: Holm's step-down procedure. The hypothesis with the r-th smallest p-value
    (r = 1, …, m) is tested at α_k = α / (m − r + 1), and rejected only if it and every hypothesis with a
    smaller p-value are below their levels. A NaN p-value (a pending claim) counts in m and is never rejected."""
    m = len(pvalues)
    order = sorted(pvalues, key=lambda k: (not np.isfinite(pvalues[k]), pvalues[k] if np.isfinite(pvalues[k]) else 0))
    out, still = {}, True
    for r, name in enumerate(order, start=1):
        level = alpha / (m - r + 1)
        p = pvalues[name]
        still = still and bool(np.isfinite(p) and p <= level)
        out[name] = (level, still)
    return out


def mde(sd: float, n: int, alpha: float, power: float = POWER) -> float:
    """Minimal detectable effect of a one-sided paired t-test at `alpha` with `power`:
    (t_{1−α, n−1} + t_{power, n−1}) · sd / √n."""
    if n < 2 or not np.isfinite(sd):
        return float("nan")
    return float((_st.t.ppf(1 - alpha, n - 1) + _st.t.ppf(power, n - 1)) * sd / np.sqrt(n))


def power_t(effect: float, sd: float, n: int, alpha: float) -> float:
    """Exact power of the one-sided paired t-test (noncentral t): P(T > t_{1−α, n−1}), T ~ nct(n−1, effect·√n/sd)."""
    if n < 2:
        return 0.0
    crit = _st.t.ppf(1 - alpha, n - 1)
    return float(_st.nct.sf(crit, n - 1, effect * np.sqrt(n) / sd))


def seeds_for_power(effect: float, sd: float, alpha: float, power: float = POWER, n_max: int = 10_000) -> int:
    """Smallest n ≥ 2 at which `power_t` reaches `power` (n_max + 1 if none up to n_max)."""
    for n in range(2, n_max + 1):
        if power_t(effect, sd, n, alpha) >= power:
            return n
    return n_max + 1


@dataclass
class Part:
    """One tested difference. margin = None: superiority (d > 0); margin M: non-inferiority (d > −M).
    two_sided: the superiority part of a question asked both ways (C7)."""
    label: str
    d: Sequence[float]
    margin: Optional[float] = None
    two_sided: bool = False
    equivalence_margin: Optional[float] = None

    @property
    def n(self) -> int:
        return int(_finite(self.d).size)

    def p(self) -> float:
        if self.margin is not None:
            return one_sided_p(self.d, shift=self.margin)
        return two_sided_p(self.d) if self.two_sided else one_sided_p(self.d)


@dataclass
class Hypothesis:
    key: str
    parts: list[Part]
    expected_n: int = 0           # seeds per cell the plan asks for; fewer = pending
    notes: list[str] = field(default_factory=list)

    def complete(self) -> bool:
        return bool(self.parts) and all(p.n >= max(2, self.expected_n) for p in self.parts)

    def p(self) -> float:
        """IUT: the largest part p-value (NaN while pending)."""
        return max(p.p() for p in self.parts) if self.complete() else float("nan")


@dataclass
class Decision:
    key: str
    verdict: str
    p: float
    level: float
    detail: str


def decide(hypotheses: Sequence[Hypothesis], alpha: float = ALPHA) -> list[Decision]:
    """Holm over the hypotheses' p-values, then each hypothesis's verdict at its Holm level."""
    ps = {h.key: h.p() for h in hypotheses}
    levels = holm_levels(ps, alpha)
    out = []
    for h in hypotheses:
        level, rejected = levels[h.key]
        sup = next((p for p in h.parts if p.margin is None), h.parts[0] if h.parts else None)
        if not h.complete():
            out.append(Decision(h.key, PENDING, float("nan"), level,
                                f"needs {h.expected_n} seeds per cell; has {[p.n for p in h.parts]}"))
            continue
        x = _finite(sup.d)
        if rejected and (not sup.two_sided or x.mean() > 0):
            verdict = SUPPORTED
        elif _refuted(h, level):
            verdict = REFUTED
        elif sup.equivalence_margin is not None and _inside(sup.d, sup.equivalence_margin, level):
            verdict = EQUIVALENT
        else:
            verdict = UNDERPOWERED
        sd = float(x.std(ddof=1))
        lo, hi = t_ci(sup.d, 1 - 2 * level)
        detail = (f"{sup.label}: mean {x.mean():.4g}, {100 * (1 - 2 * level):.1f} % CI [{lo:.4g}, {hi:.4g}], "
                  f"n = {x.size}, sd {sd:.3g}; MDE at 80 % power {mde(sd, x.size, level):.3g}")
        out.append(Decision(h.key, verdict, ps[h.key], level, detail))
    return out


def refuting_parts(parts: Sequence[Part], level: float) -> list[tuple[Part, str]]:
    """The parts that refute their hypothesis at `level`, each with why: a superiority part rejected the other way
    ("reversed"; a two-sided one at level/2 per side), or a non-inferiority part shown inferior ("inferior")."""
    out = []
    for part in parts:
        if part.margin is None and one_sided_p(part.d, greater=False) <= (level / 2 if part.two_sided else level):
            out.append((part, "reversed"))
        elif part.margin is not None and one_sided_p(part.d, shift=part.margin, greater=False) <= level:
            out.append((part, "inferior"))
    return out


def _refuted(h: Hypothesis, level: float) -> bool:
    return bool(refuting_parts(h.parts, level))


def _inside(d: Sequence[float], margin: float, level: float) -> bool:
    """TOST at `level`: both one-sided tests (d > −M and d < M) reject ⇔ the (1 − 2·level) CI is inside ±M."""
    return one_sided_p(d, shift=margin) <= level and one_sided_p(d, shift=-margin, greater=False) <= level
