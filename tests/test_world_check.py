"""The world's trust-region check (analysis/runs/world_check.py, docs/world_trust_region.md) on synthetic runs
whose effects are known: each of the doc's four readings, pending while a run is missing, the instability
statistic, and the section make_figures writes."""
from __future__ import annotations

import numpy as np
import pandas as pd

from analysis.campaign import plan as cplan
from analysis.runs import world_check as W
from analysis.runs.load_runs import Run
from flowdppo.config import make_config


def _run(cell: str, seed: int, e_test: float, curve=None) -> Run:
    spec = cplan.world_cells()[cell].spec(seed)
    it = np.arange(200)
    tifa = np.full(200, e_test) if curve is None else np.asarray(curve, float)
    iters = pd.DataFrame({"iteration": it, "reward/tifa_mean": tifa, "ref_kl_per_dim": np.full(200, 1e-3)})
    evals = pd.DataFrame([{"iteration": e, "split": split, "tifa": e_test, "accuracy": e_test, "fid": 10.0}
                          for e in (0, *cplan.WORLD_EVALS) for split in ("test", "ood")])
    evals.loc[evals["iteration"] == 0, "tifa"] = 0.0        # outside the last quarter: must not count
    config = make_config({**spec.overrides, "seed": seed}).to_dict()
    return Run(spec.run_id, None, config, {"latent_dim": 256}, iters, evals, True)


def _runs(gap: float, noise_sd: float, seed: int = 0, drop=()) -> dict[str, Run]:
    """Seed s: E_test(dppo) = 0.8 + shared_s, E_test(no_tr) = 0.8 + shared_s − gap + own_s, where own is noise of
    sd `noise_sd` centred to mean 0 (rng seed `seed`), so the paired mean difference is exactly `gap`."""
    rng = np.random.default_rng(seed)
    shared = rng.normal(0, 0.05, len(cplan.WORLD_SEEDS))
    own = rng.normal(0, noise_sd, len(cplan.WORLD_SEEDS))
    own -= own.mean()
    out = {}
    for s in cplan.WORLD_SEEDS:
        for cell, e in ((W.DPPO, 0.8 + shared[s]), (W.NO_TR, 0.8 + shared[s] - gap + own[s])):
            r = _run(cell, s, e)
            if r.run_id not in drop:
                out[r.run_id] = r
    return out


def test_each_reading_of_the_doc_follows_from_the_simulated_gap():
    # sd 0.005 at n = 8: the standard error is ≈ 0.0018, so each case sits many standard errors from its edges
    assert W.decide(_runs(0.05, 0.005))["reading"] == W.CLEARLY
    assert W.decide(_runs(0.01, 0.005))["reading"] == W.WORSE_SMALL
    assert W.decide(_runs(0.0, 0.005))["reading"] == W.NO_DIFF
    res = W.decide(_runs(0.0, 0.08))        # sd 0.08: the 90 % interval is ≈ ±0.054, wider than the margin
    assert res["reading"] == W.NOT_SHOWN and res["mde"] > W.MARGIN
    assert W.decide(_runs(-0.05, 0.005))["reading"] == W.NOT_SHOWN    # Flow-DPPO behind: never 'worse without'


def test_the_endpoint_averages_only_the_evaluations_at_150_and_200_and_pairs_by_seed():
    res = W.decide(_runs(0.05, 0.0))
    assert res["n"] == 8 and res["seeds"] == list(cplan.WORLD_SEEDS)
    assert np.isclose(res["mean"], 0.05) and res["dppo_ahead"] == 8      # the iteration-0 tifa of 0 is ignored
    assert np.isclose(W.decide(_runs(0.03, 0.01))["mean"], 0.03)


def test_a_missing_run_makes_the_check_pending_and_it_is_never_read_early():
    res = W.decide(_runs(0.05, 0.005, drop=("w200_no_tr-s7",)))
    assert res["reading"] == W.PENDING and res["missing"] == ["w200_no_tr-s7"] and res["n"] == 7
    text = "\n".join(W.markdown(res))
    assert "**pending**" in text and "so far; not a result" in text and "15 of 16" in text


def test_largest_fall_measures_how_far_the_trailing_mean_drops_below_its_best():
    rise_fall = np.concatenate([np.linspace(0.5, 0.9, 100), np.full(100, 0.6)])
    best = rise_fall[90:100].mean()             # the trailing mean peaks over the last 10 rising iterations
    assert np.isclose(W.largest_fall(_run(W.DPPO, 0, 0.8, rise_fall)), best - 0.6)
    assert W.largest_fall(_run(W.DPPO, 0, 0.8, np.linspace(0.5, 0.9, 200))) == 0.0


def test_make_figures_reports_the_world_check_from_the_store_beside_the_campaign(tmp_path):
    """report.make reads <campaign store>/../world: pending (naming what is missing) when that store is empty."""
    from analysis.runs import report
    (tmp_path / "claims").mkdir()
    manifest = report.make(tmp_path / "no_archive", tmp_path / "out", tmp_path / "claims", verbose=False)
    readme = (tmp_path / "out" / "README.md").read_text()
    assert "## The world's trust-region check at 200 iterations" in readme
    assert manifest["world_check"]["reading"] == W.PENDING and len(manifest["world_check"]["missing"]) == 16
