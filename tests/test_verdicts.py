"""The decision rules of docs/analysis_plan.md (analysis/runs/verdicts.py) against independent oracles: Holm's adjusted p-values,
Monte-Carlo power and false-alarm rates, TOST's interval form.  Seeds and tolerances are stated per test."""
import numpy as np
import pytest
from scipy import stats as st

from analysis.runs import verdicts as V


def _holm_adjusted(p):
    """Independent oracle: Holm-adjusted p-values, adj_(i) = max_{j ≤ i} min(1, (m − j + 1) p_(j))."""
    order = np.argsort(p)
    m = len(p)
    adj = np.empty(m)
    run = 0.0
    for i, k in enumerate(order):
        run = max(run, min(1.0, (m - i) * p[k]))
        adj[k] = run
    return adj


@pytest.mark.parametrize("seed", range(20))
def test_holm_matches_adjusted_p_values(seed):
    rng = np.random.default_rng(seed)
    p = rng.uniform(0, 0.1, size=7) ** rng.uniform(0.5, 2)
    got = V.holm_levels({f"C{i}": float(v) for i, v in enumerate(p)})
    want = _holm_adjusted(p) <= 0.05
    assert [got[f"C{i}"][1] for i in range(7)] == list(want)


def test_holm_pending_counts_but_is_never_rejected():
    got = V.holm_levels({"a": 0.001, "b": float("nan")})
    assert got["a"] == (0.025, True) and got["b"][1] is False


def test_power_matches_monte_carlo():
    """n = 8, effect = sd, α = 0.05: exact noncentral-t power vs 20 000 simulated paired t-tests
    (seed 0; binomial sd of the estimate ≈ 0.003, tolerance 0.012 = 4 sd)."""
    rng = np.random.default_rng(0)
    x = rng.normal(1.0, 1.0, size=(20_000, 8))
    mc = (st.ttest_1samp(x, 0.0, axis=1, alternative="greater").pvalue <= 0.05).mean()
    assert abs(V.power_t(1.0, 1.0, 8, 0.05) - mc) < 0.012


def test_seeds_for_power_is_the_smallest_n():
    n = V.seeds_for_power(0.5, 1.0, 0.05)
    assert V.power_t(0.5, 1.0, n, 0.05) >= 0.8 > V.power_t(0.5, 1.0, n - 1, 0.05)
    assert V.seeds_for_power(1.0, 1.0, 0.05) == 8     # textbook: d = 1, one-sided 5 %, 80 % → 8 pairs


def test_mde_is_where_the_normal_approximation_puts_80_percent():
    """At the MDE the exact power is ≈ 0.8 (the t-quantile formula is an approximation: within 0.03)."""
    for n in (8, 12, 16):
        e = V.mde(1.0, n, 0.0071)
        assert abs(V.power_t(e, 1.0, n, 0.0071) - 0.8) < 0.03


def _hyp(key, d, **kw):
    return V.Hypothesis(key, [V.Part(key, d, **kw)], expected_n=len(d))


def test_family_wise_false_alarm_rate_under_the_null():
    """Seven true nulls, 8 seeds each, 2000 simulated campaigns (seed 1): P(any "supported") ≤ 0.05
    (Holm's guarantee; MC sd ≈ 0.005 → tolerance +0.015 = 3 sd; false-alarm rate of this check ≈ 0.1 %)."""
    rng = np.random.default_rng(1)
    hits = 0
    for _ in range(2000):
        hs = [_hyp(f"C{i}", rng.normal(0, 1, 8)) for i in range(7)]
        hits += any(d.verdict == V.SUPPORTED for d in V.decide(hs))
    assert hits / 2000 <= 0.05 + 0.015


def test_verdicts_on_clear_cases():
    rng = np.random.default_rng(2)
    hs = [_hyp("up", 1.0 + 0.1 * rng.normal(size=10)),
          _hyp("down", -1.0 + 0.1 * rng.normal(size=10)),
          _hyp("flat", 0.001 * rng.normal(size=10), two_sided=True, equivalence_margin=0.02),
          _hyp("noisy", rng.normal(0, 5, size=10))]
    got = {d.key: d.verdict for d in V.decide(hs)}
    assert got == {"up": V.SUPPORTED, "down": V.REFUTED, "flat": V.EQUIVALENT, "noisy": V.UNDERPOWERED}


def test_intersection_union_needs_every_part():
    good = np.full(8, 1.0) + np.linspace(-0.01, 0.01, 8)
    worse = np.full(8, -0.5) + np.linspace(-0.01, 0.01, 8)       # clearly below the −0.02 margin
    h = V.Hypothesis("C3", [V.Part("tifa", good), V.Part("ink", worse, margin=0.02)], expected_n=8)
    assert V.decide([h])[0].verdict == V.REFUTED
    fine = np.linspace(-0.005, 0.005, 8)                           # inside the margin, tightly
    h = V.Hypothesis("C3", [V.Part("tifa", good), V.Part("ink", fine, margin=0.02)], expected_n=8)
    assert V.decide([h])[0].verdict == V.SUPPORTED


def test_tost_is_the_interval_inside_the_margin():
    rng = np.random.default_rng(3)
    for _ in range(200):
        d = rng.normal(rng.uniform(-0.03, 0.03), 0.02, size=10)
        lo, hi = V.t_ci(d, 1 - 2 * 0.05)
        assert V._inside(d, 0.02, 0.05) == (lo > -0.02 and hi < 0.02)


def test_too_few_seeds_is_pending():
    h = V.Hypothesis("C1", [V.Part("x", [0.1, 0.2, 0.3])], expected_n=8)
    assert V.decide([h])[0].verdict == V.PENDING
