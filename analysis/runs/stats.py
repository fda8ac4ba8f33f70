"""Pure statistics over seeds (numpy only; no I/O, no pandas, no plotting).

Array convention (rliable's): a curve set is `[num_seeds, num_points]`, NaN where a seed has no value
(a shorter or missing run); a per-seed scalar set is `[num_seeds]`.  Confidence intervals are over
SEEDS, the unit of replication.  With 3 seeds a bootstrap interval is too narrow to be honest (it can
only resample three numbers), so the default is Student's t; `bootstrap_ci` is there for larger n.

The verdict rule used for every claim (`verdict`): with the 95 % CI [lo, hi] of a difference oriented so
that the claim predicts > 0,
    supported      lo > 0          (the whole interval agrees with the claim)
    not supported  hi < 0          (the whole interval contradicts it)
    inconclusive   otherwise, or fewer than 2 seeds.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterable, Sequence

import numpy as np
from scipy import stats as _st

LEVEL = 0.95
SUPPORTED, NOT_SUPPORTED, INCONCLUSIVE = "supported", "not supported", "inconclusive"


@dataclass(frozen=True)
class Interval:
    """Mean and confidence interval of n values."""
    mean: float
    lo: float
    hi: float
    n: int

    def fmt(self, scale: float = 1.0, digits: int = 3) -> str:
        if self.n == 0:
            return "–"
        m = self.mean * scale
        if self.n < 2:
            return f"{m:.{digits}g} (n=1)"
        return f"{m:.{digits}g} [{self.lo * scale:.{digits}g}, {self.hi * scale:.{digits}g}]"


def t_interval(values: Sequence[float], level: float = LEVEL) -> Interval:
    """Mean ± t_{(1+level)/2, n−1}·s/√n over the finite values (NaN dropped)."""
    x = np.asarray(values, dtype=float)
    x = x[np.isfinite(x)]
    n = x.size
    if n == 0:
        return Interval(np.nan, np.nan, np.nan, 0)
    m = float(x.mean())
    if n == 1:
        return Interval(m, np.nan, np.nan, 1)
    half = float(_st.t.ppf(0.5 + level / 2, n - 1) * x.std(ddof=1) / np.sqrt(n))
    return Interval(m, m - half, m + half, n)


def bootstrap_ci(values: Sequence[float], stat: Callable[[np.ndarray], float] = np.mean, n_boot: int = 2000,
                 level: float = LEVEL, seed: int = 0) -> Interval:
    """Percentile bootstrap of `stat` over the finite values (for n ≳ 10 seeds)."""
    x = np.asarray(values, dtype=float)
    x = x[np.isfinite(x)]
    if x.size == 0:
        return Interval(np.nan, np.nan, np.nan, 0)
    rng = np.random.default_rng(seed)
    boots = np.array([stat(x[rng.integers(0, x.size, x.size)]) for _ in range(n_boot)])
    a = (1 - level) / 2
    return Interval(float(stat(x)), float(np.quantile(boots, a)), float(np.quantile(boots, 1 - a)), x.size)


def curve_band(curves: np.ndarray, level: float = LEVEL) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """[num_seeds, num_points] → (mean, lo, hi, n) per point, each [num_points] (t-interval over seeds)."""
    curves = np.atleast_2d(np.asarray(curves, dtype=float))
    out = [t_interval(curves[:, j], level) for j in range(curves.shape[1])]
    return (np.array([o.mean for o in out]), np.array([o.lo for o in out]), np.array([o.hi for o in out]),
            np.array([o.n for o in out]))


def paired_difference(a: dict[int, float], b: dict[int, float], level: float = LEVEL) -> Interval:
    """t-interval of a − b over the seeds both have.  Runs with the same seed share prompts, rollout
    noise and evaluation seeds, so the per-seed difference removes that shared variation."""
    common = sorted(set(a) & set(b))
    return t_interval([a[s] - b[s] for s in common], level)


def smooth(y: np.ndarray, window: int) -> np.ndarray:
    """Centred moving average along the last axis, NaN-aware, shrinking at the edges (window 1 = copy)."""
    y = np.asarray(y, dtype=float)
    if window <= 1:
        return y.copy()
    half = window // 2
    finite = np.isfinite(y)
    vals = np.where(finite, y, 0.0)
    pad = [(0, 0)] * (y.ndim - 1) + [(1, 0)]
    cs = np.cumsum(np.pad(vals, pad), axis=-1)
    cn = np.cumsum(np.pad(finite.astype(float), pad), axis=-1)
    n = y.shape[-1]
    lo = np.clip(np.arange(n) - half, 0, n)
    hi = np.clip(np.arange(n) + window - half, 0, n)
    tot = cs[..., hi] - cs[..., lo]
    cnt = cn[..., hi] - cn[..., lo]
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(cnt > 0, tot / np.where(cnt > 0, cnt, 1), np.nan)


def _edge_mean(y: np.ndarray, frac: float, last: bool) -> np.ndarray:
    """Mean of the first or last ⌈frac·n⌉ finite points along the last axis, one value per row."""
    y = np.atleast_2d(np.asarray(y, dtype=float))
    out = []
    for row in y:
        f = row[np.isfinite(row)]
        k = max(1, int(np.ceil(frac * f.size)))
        out.append((f[-k:] if last else f[:k]).mean() if f.size else np.nan)
    return np.array(out)


def tail_mean(y: np.ndarray, frac: float = 0.1) -> np.ndarray:
    """Mean of the last ⌈frac·n⌉ finite points along the last axis (an end-of-training value)."""
    return _edge_mean(y, frac, last=True)


def head_mean(y: np.ndarray, frac: float = 0.25) -> np.ndarray:
    """Mean of the first ⌈frac·n⌉ finite points (an early-training value)."""
    return _edge_mean(y, frac, last=False)


def peak_to_final_drop(y: np.ndarray, window: int, frac: float = 0.1) -> np.ndarray:
    """max(smoothed curve) − end-of-training value, per row: how much a run lost after its best point."""
    y = np.atleast_2d(np.asarray(y, dtype=float))
    s = smooth(y, window)
    with np.errstate(all="ignore"):
        peak = np.nanmax(np.where(np.isfinite(s), s, -np.inf), axis=-1)
    peak = np.where(np.isfinite(peak), peak, np.nan)
    return peak - tail_mean(s, frac)


def verdict(diff: Interval) -> str:
    """The claim's verdict from the CI of a difference oriented so that the claim predicts > 0."""
    if diff.n < 2 or not np.isfinite(diff.lo):
        return INCONCLUSIVE
    if diff.lo > 0:
        return SUPPORTED
    if diff.hi < 0:
        return NOT_SUPPORTED
    return INCONCLUSIVE


def verdict_at_least(ci: Interval, threshold: float) -> str:
    """Verdict for "the quantity is ≥ threshold": the CI of (value − threshold) by `verdict`."""
    return verdict(Interval(ci.mean - threshold, ci.lo - threshold, ci.hi - threshold, ci.n))


def combine(verdicts: Iterable[str]) -> str:
    """A claim made of parts: supported if every part is, not supported if any part is, else inconclusive."""
    v = list(verdicts)
    if not v:
        return INCONCLUSIVE
    if all(x == SUPPORTED for x in v):
        return SUPPORTED
    if any(x == NOT_SUPPORTED for x in v):
        return NOT_SUPPORTED
    return INCONCLUSIVE


def any_better_none_worse(verdicts: Iterable[str]) -> str:
    """A comparison over several endpoints: supported if one part is and none is not supported."""
    v = list(verdicts)
    if any(x == NOT_SUPPORTED for x in v):
        return NOT_SUPPORTED
    return SUPPORTED if any(x == SUPPORTED for x in v) else INCONCLUSIVE


def ratio_of_means(num: np.ndarray, den: np.ndarray) -> float:
    """Σ num / Σ den over finite pairs (a pooled fraction, e.g. mask firings per sign-matched sample)."""
    num, den = np.asarray(num, dtype=float), np.asarray(den, dtype=float)
    ok = np.isfinite(num) & np.isfinite(den)
    d = den[ok].sum()
    return float(num[ok].sum() / d) if d > 0 else np.nan


def align(curves: dict[int, tuple[np.ndarray, np.ndarray]]) -> tuple[np.ndarray, np.ndarray, list[int]]:
    """{seed: (x, y)} → (x_union [P], Y [num_seeds, P] with NaN where a seed lacks a point, seeds)."""
    if not curves:
        return np.array([]), np.empty((0, 0)), []
    xs = np.unique(np.concatenate([np.asarray(x, dtype=float) for x, _ in curves.values()]))
    seeds = sorted(curves)
    out = np.full((len(seeds), xs.size), np.nan)
    for i, s in enumerate(seeds):
        x, y = curves[s]
        out[i, np.searchsorted(xs, np.asarray(x, dtype=float))] = np.asarray(y, dtype=float)
    return xs, out, seeds
