"""The world's trust-region check (docs/world_trust_region.md), read from campaign_runs/world/.

Does `loss=no_trust_region` end clearly worse than Flow-DPPO at the default lr within 200 iterations?  The doc
fixed the endpoint (E_test over the evaluations at 150 and 200), the test (paired one-sided t at α = 0.05), the
margin (0.02) and the four readings before any run; this module applies them, and reports the secondary
endpoints with 95 % t-intervals and no test.  It is outside the Holm family of C1–C7.
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import numpy as np

from analysis.campaign import plan as cplan
from analysis.runs import campaign_claims as CC
from analysis.runs import verdicts as V
from analysis.runs.load_runs import Run

ALPHA = 0.05
MARGIN = cplan.MARGINS["tifa"]
DPPO, NO_TR = "w200_dppo", "w200_no_tr"
PENDING, CLEARLY, WORSE_SMALL, NO_DIFF, NOT_SHOWN = (
    "pending", "clearly worse without a trust region", "worse without a trust region, by less than the margin",
    "no difference beyond the margin", "not shown")


def largest_fall(run: Run, window: int = 10) -> float:
    """Instability: the largest fall of the `window`-iteration trailing mean of training tifa below its running
    maximum (0 for a curve that never falls back)."""
    _, v = run.series("reward/tifa_mean")
    v = v[np.isfinite(v)]
    if v.size < window:
        return np.nan
    trailing = np.convolve(v, np.ones(window) / window, mode="valid")
    return float(np.max(np.maximum.accumulate(trailing) - trailing))


SECONDARY = {
    "test accuracy": lambda r: CC.e_metric(r, "accuracy"),
    "OOD accuracy": lambda r: CC.e_metric(r, "accuracy", "ood"),
    "test FID": lambda r: CC.e_metric(r, "fid"),
    "OOD FID": lambda r: CC.e_metric(r, "fid", "ood"),
    "reference KL per dim": lambda r: CC.iter_tail(r, "ref_kl_per_dim"),
    "largest fall of training tifa (10-it mean)": largest_fall,
}


def load(store: Path = cplan.STORE / "world") -> dict[str, Run]:
    """Complete runs of the store by run id (a partial run, e.g. one still training, does not count)."""
    return CC.Campaign.load(store).runs


def _by_seed(runs: dict[str, Run], cell: str, fn) -> dict[int, float]:
    return {s: fn(runs[f"{cell}-s{s}"]) for s in cplan.WORLD_SEEDS if f"{cell}-s{s}" in runs}


def paired(runs: dict[str, Run], fn) -> tuple[list[int], np.ndarray]:
    a, b = _by_seed(runs, DPPO, fn), _by_seed(runs, NO_TR, fn)
    seeds = sorted(set(a) & set(b))
    return seeds, np.array([a[s] - b[s] for s in seeds], float)


def decide(runs: dict[str, Run]) -> dict:
    """The doc's reading of E_test(w200_dppo) − E_test(w200_no_tr) > 0, with the secondary endpoints."""
    expected = [s.run_id for s in cplan.world_runs()]
    missing = [r for r in expected if r not in runs]
    seeds, d = paired(runs, lambda r: CC.e_metric(r, "tifa"))
    out = {"n": int(d.size), "seeds": seeds, "missing": missing, "mean": float(d.mean()) if d.size else np.nan,
           "ci95": V.t_ci(d, 0.95), "ci90": V.t_ci(d, 0.90), "p": V.one_sided_p(d),
           "dppo_ahead": int((d > 0).sum()), "secondary": {}}
    sd = float(d.std(ddof=1)) if d.size > 1 else np.nan
    out["mde"] = V.mde(sd, int(d.size), ALPHA)
    for name, fn in SECONDARY.items():
        _, x = paired(runs, fn)
        out["secondary"][name] = {"mean": float(np.mean(x)) if x.size else np.nan, "ci95": V.t_ci(x, 0.95),
                                  "n": int(x.size)}
    if missing:
        out["reading"] = PENDING
    elif out["p"] <= ALPHA:
        out["reading"] = CLEARLY if out["mean"] >= MARGIN else WORSE_SMALL
    elif -MARGIN < out["ci90"][0] and out["ci90"][1] < MARGIN:
        out["reading"] = NO_DIFF
    else:
        out["reading"] = NOT_SHOWN
    return out


def markdown(res: dict, store_shown: str = "campaign_runs/world") -> list[str]:
    est = CC._est(res["mean"], res["ci95"], res["n"])
    planned = len(cplan.world_runs())
    head = (f"Runs: `{store_shown}` ({planned - len(res['missing'])} of {planned}). Primary: E_test(w200_dppo) − "
            f"E_test(w200_no_tr) > 0, paired one-sided t at α = {ALPHA}, margin {MARGIN}")
    if res["n"] < 2:
        result = f"**{res['reading']}**"
    else:
        result = (f"{est}, p = {res['p']:.3g}, Flow-DPPO ahead on {res['dppo_ahead']}/{res['n']} seeds, 90 % interval "
                  f"[{res['ci90'][0]:+.4f}, {res['ci90'][1]:+.4f}], MDE at 80 % power {res['mde']:.3g}: "
                  f"**{res['reading']}**" + (" (so far; not a result until every run is in)" if res["missing"] else ""))
    lines = ["## The world's trust-region check at 200 iterations (docs/world_trust_region.md)", "",
             f"{head}: {result}.",
             "", "Secondary (Flow-DPPO − no trust region, 95 % t-intervals, no test):", ""]
    for name, s in res["secondary"].items():
        lines.append(f"- {name}: {CC._est(s['mean'], s['ci95'], s['n'])}")
    return lines + [""]


def main(store: Optional[Path] = None) -> dict:
    res = decide(load(store or cplan.STORE / "world"))
    print("\n".join(markdown(res)))
    return res


if __name__ == "__main__":
    main()
