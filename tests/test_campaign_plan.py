"""The claims campaign's registry (analysis/campaign/plan.py), its runner mode, and the verdict pipeline
(analysis/runs/campaign_claims.py) on synthetic runs whose effects are known."""
from __future__ import annotations

import json
import os
import math

from dataclasses import replace

import numpy as np
import pandas as pd
import pytest

from analysis.campaign import plan as cplan
from analysis.campaign import runner
from analysis.runs import campaign_claims as CC
from analysis.runs import verdicts as V
from analysis.runs.load_runs import Run
from flowdppo.config import make_config

CAL = {"n_seeds": 8, "eps_fire": 8.3e-4, "delta_hi": 1e-6, "pilot_seeds": [100, 109], "mask_blocked_rate": 0.05,
       "kl_old_median_per_dim": 2.5e-5, "sd_paired_diff": 0.02, "gain_grpo": 0.27, "paper_relative_gain_median": 0.045,
       "effect": 0.012, "n_needed_at_effect": 30, "n_needed_at_optimistic_effect": 5, "effect_optimistic": 0.05,
       "power_at_n_seeds": 0.4, "budget": {"core_hours_all_n": 12.0, "core_hours_reuse_at_8": 10.0},
       "budget_core_hours": 15.0, "n_seeds_reuse": 8}


def test_eps_fire_interpolates_log_linearly_between_the_bracketing_grid_points():
    grid = {1e-5: 0.37, 1e-4: 0.28, 8.8e-4: 0.044, 1e-3: 0.036, 1e-2: 0.0}
    target = 0.049
    w = (0.28 - target) / (0.28 - 0.044)
    want = float(f"{math.exp(math.log(1e-4) + w * math.log(8.8)):.1e}")
    assert cplan.eps_fire_from_rates(grid, target) == want
    assert cplan.eps_fire_from_rates(grid, 0.28) == 1e-4          # a grid point is its own ε
    with pytest.raises(ValueError, match="bracket"):
        cplan.eps_fire_from_rates(grid, 0.9)


@pytest.mark.parametrize("median,want", [(2.6e-5, 1e-6), (9.9e-5, 1e-6), (1e-4, 1e-5), (3e-7, 1e-8)])
def test_delta_hi_is_a_tenth_of_the_median_rounded_down_to_a_power_of_ten(median, want):
    assert math.isclose(cplan.delta_hi_from_median(median), want)


def test_every_cell_is_a_valid_config_and_the_calibrated_cells_wait_for_the_calibration():
    assert not {"asym_hi", "sym_hi", "clip_fire"} & set(cplan.cells(None))
    cells = cplan.cells(CAL)
    for cell in cells.values():
        make_config({**cell.overrides, "seed": 0})
    assert cells["grpo"].overrides["clip_range"] == 1.6e-3
    assert cells["clip_fire"].overrides["clip_range"] == CAL["eps_fire"]
    assert cells["sym_hi"].overrides == {**cplan.RUN, "loss": "flow_dppo_symmetric", "delta": 1e-6}
    assert cells["reuse_dppo"].overrides["iterations"] == 300
    # the plan's primary cells are all there
    primary = {n for n, c in cells.items() if c.role == "primary"}
    assert primary == {"dppo", "grpo", "multi_dppo", "multi_grpo", "multi_dppo_b0", "reuse_dppo",
                       "reuse_grpo_noise", "asym_hi", "sym_hi", "clip_fire"}


def test_campaign_runs_are_seed_major_with_n_seeds_and_never_a_pilot_seed():
    runs = cplan.campaign_runs(CAL)
    seeds = [r.seed for r in runs]
    assert seeds == sorted(seeds)
    assert not set(seeds) & set(cplan.PILOT_SEEDS)
    by_cell: dict[str, list[int]] = {}
    for r in runs:
        by_cell.setdefault(r.cell, []).append(r.seed)
    assert by_cell["dppo"] == list(range(8)) and by_cell["x_guard"] == [0, 1, 2]
    assert by_cell["reuse_grpo_value"] == list(range(8))
    assert len({r.run_id for r in runs}) == len(runs)
    with pytest.raises(ValueError, match="unknown campaign cell"):
        cplan.campaign_runs(None, only=["clip_fire"])


def test_the_pilot_registry_matches_the_committed_pilot_configs():
    """The committed pilot runs were started by hand; the registry's pilot cells must be their configs."""
    for spec in cplan.pilot_runs():
        d = cplan.STORE / "pilot" / spec.run_id
        if (d / "config.json").exists():
            assert runner.config_conflict(spec, d, base={}, run_dir_of_saved=True) == "", spec.run_id


def _stored_run(store, spec, iterations, seed_override=None):
    d = store / spec.run_id
    d.mkdir(parents=True)
    cfg = make_config({**spec.config_overrides({}), "run_dir": f"runs/campaign/claims/{spec.run_id}"})
    if seed_override is not None:
        cfg = cfg.replace(seed=seed_override)
    (d / "config.json").write_text(json.dumps(cfg.to_dict()))
    (d / "compaction.json").write_text(json.dumps({"iterations": iterations}))


def test_runner_counts_a_stored_run_as_done_and_refuses_a_changed_config(tmp_path):
    specs = cplan.campaign_runs(CAL, only=["dppo"])[:3]
    store, raw = tmp_path / "store", tmp_path / "raw"
    _stored_run(store, specs[0], 100)
    _stored_run(store, specs[1], 50)                   # a compact copy of a shorter run does not count
    jobs = runner.plan(specs, raw, None, base={}, store=store)
    assert [j.state for j in jobs] == ["done", "new", "new"]
    other = cplan.campaign_runs(CAL, only=["grpo"])[0]
    _stored_run(store, type(other)(specs[2].run_id, "dppo", specs[2].seed, other.overrides), 100)
    jobs = runner.plan(specs, raw, None, base={}, store=store)
    assert jobs[2].state == "conflict" and "loss" in jobs[2].detail


def test_the_remaining_cost_prices_each_run_at_its_cells_measured_wall_time(tmp_path):
    dppo, grpo = cplan.campaign_runs(CAL, only=["dppo"])[:3], cplan.campaign_runs(CAL, only=["grpo"])[:2]
    store, raw = tmp_path / "store", tmp_path / "raw"
    for spec, wall in ((dppo[0], 360.0), (dppo[1], 180.0)):      # dppo: 2.7 s per iteration
        _stored_run(store, spec, 100)
        info = json.loads((store / spec.run_id / "compaction.json").read_text())
        (store / spec.run_id / "compaction.json").write_text(json.dumps({**info, "wall_seconds": wall}))
    todo = [j for j in runner.plan(dppo + grpo, raw, None, base={}, store=store) if j.state == "new"]
    hours, guessed = runner.remaining_core_hours(todo, store)
    # dppo-s2 at its cell's 2.7 s/it; the two grpo runs have no cell data and take the all-run mean (2.7 s/it too)
    assert guessed == 2 and math.isclose(hours, 3 * 100 * 2.7 / 3600)
    todo[0].done_iterations = 50                                  # a resumed run costs only what is left
    assert math.isclose(runner.remaining_core_hours(todo, store)[0], 2.5 * 100 * 2.7 / 3600)
    assert math.isclose(todo[0].est_seconds, 50 * 2.7) and math.isclose(todo[1].est_seconds, 100 * 2.7)


# ---------------------------------------------------------------------------------------------------
# The verdict pipeline on synthetic runs
# ---------------------------------------------------------------------------------------------------
def _synthetic_run(rid, seed, cell_overrides, e_test, k_ref=1e-3, fid=1.0, iters=100):
    it = np.arange(iters)
    iters_df = pd.DataFrame({"iteration": it, "reward/tifa_mean": np.full(iters, e_test),
                             "reward/ink_mean": np.full(iters, 0.25), "ref_kl_per_dim": np.full(iters, k_ref)})
    rows = []
    for e in (75, 100) if iters == 100 else (iters,):
        for split in ("test", "ood"):
            rows.append({"iteration": e, "split": split, "tifa": e_test, "accuracy": e_test, "agreement": 0.5,
                         "realism": -1.0, "ink": 0.25, "fid": fid})
    config = make_config({**cell_overrides, "seed": seed}).to_dict()     # as a run's config.json holds it
    return Run(rid, None, config, {"latent_dim": 256}, iters_df, pd.DataFrame(rows), True)


def _campaign(effects, n=8, sd=0.01, drop=()):
    """Every cell's runs with E_test = 0.8 + effect[cell] + seed noise shared by all cells (paired) + own noise."""
    rng = np.random.default_rng(0)
    shared = rng.normal(0, 0.03, n)
    c = CC.Campaign(store=None, calibration=CAL)
    for name, cell in cplan.cells(CAL).items():
        for s in cplan.seeds_of(cell, n):
            rid = f"{name}-s{s}"
            if rid in drop:
                continue
            e = 0.8 + effects.get(name, 0.0) + (shared[s] if s < n else 0) + rng.normal(0, sd)
            c.runs[rid] = _synthetic_run(rid, s, cell.overrides, e, k_ref=2e-3 if name == "grpo" else 1e-3,
                                         iters=int(cell.overrides["iterations"]))
    return c


def test_a_large_dppo_advantage_is_supported_and_no_effect_is_underpowered_or_equivalent():
    verdicts, control = CC.decide(_campaign({"grpo": -0.05, "clip_fire": -0.05, "no_tr": -0.05}))
    by = {v.key: v for v in verdicts}
    assert by["C1"].verdict == V.SUPPORTED            # +0.05 at sd_d ≈ 0.014, K_ref ordering 2e-3 > 1e-3
    assert by["C7"].verdict == V.SUPPORTED
    assert by["C5"].verdict in (V.UNDERPOWERED, V.EQUIVALENT)   # no effect simulated
    assert control["verdict"] == "a trust region matters here"


def test_a_reversed_effect_is_refuted():
    verdicts, _ = CC.decide(_campaign({"grpo": +0.05}))
    assert {v.key: v for v in verdicts}["C1"].verdict == V.REFUTED


def test_the_paper_section_reads_each_verdict_against_the_paper():
    for effects, key, want in (({"grpo": -0.05}, "C1", "**we agree**"), ({"grpo": +0.05}, "C1", "**we disagree**: E_test(dppo) − E_test(grpo) > 0 goes the other way"),
                               ({}, "C5", None)):
        c = _campaign(effects)
        verdicts, _ = CC.decide(c)
        v = {v.key: v for v in verdicts}[key]
        line = CC.reading(c, v)
        if want is None:     # no effect simulated: underpowered names its detectable effect, equivalent its margin
            want = "**we cannot tell**" if v.verdict == V.UNDERPOWERED else "inside ±0.02"
        assert want in line, (v.verdict, line)
        assert f"- **{key}** (" in "\n".join(CC.paper_section(c, verdicts))
    md = CC.markdown(_campaign({}, drop=("grpo-s3",)))
    assert "## Where we stand on the paper's claims" in md and "not decided yet: 1 of the plan's runs" in md


def test_a_missing_run_makes_its_claims_pending_and_names_the_run():
    verdicts, control = CC.decide(_campaign({"grpo": -0.05}, drop=("grpo-s3",)))
    by = {v.key: v for v in verdicts}
    assert by["C1"].verdict == V.PENDING and by["C1"].missing == ["grpo-s3"]
    assert by["C2"].verdict == V.PENDING
    assert by["C5"].verdict != V.PENDING
    md = CC.markdown(_campaign({}, drop=("grpo-s3",)))
    assert "pending" in md and "| `grpo` | primary | 7 / 8 |" in md
    # a claim decided while others are pending is provisional: its Holm rank (and level) can still change
    assert by["C5"].provisional and not by["C1"].provisional
    assert "| C5 | **" in md and "(provisional)" in md.split("| C5 |")[1].split("\n")[0]
    assert "provisional until C1, C2" in md and "*provisional* (the Holm family is not complete)" in md
    complete, _ = CC.decide(_campaign({"grpo": -0.05}))
    assert not any(v.provisional for v in complete)
    full = CC.markdown(_campaign({"grpo": -0.05}))
    assert "(provisional)" not in full and "provisional until" not in full and "*provisional* (" not in full
    assert "Compute (1-thread" in full and "Compute so far" in md     # "so far" only while runs are missing
    assert "| `reuse_grpo_value` | exploratory (C4's mechanism: 8 seeds) | 8 / 8 |" in md    # no raw role name


def test_endpoints_average_the_last_quarter():
    run = _synthetic_run("x", 0, {"iterations": 100}, 0.7)
    run.evals.loc[run.evals["iteration"] == 75, "tifa"] = 0.6
    assert math.isclose(CC.e_metric(run, "tifa"), 0.65)
    run.iters.loc[run.iters["iteration"] >= 75, "reward/tifa_mean"] = 0.9
    assert math.isclose(CC.iter_tail(run, "reward/tifa_mean"), 0.9)
    run.iters.loc[run.iters["iteration"] < 25, "reward/ink_mean"] = np.linspace(0.25, 0.35, 25)
    assert math.isclose(CC.r_early_ink(run), 0.05, rel_tol=1e-9)


def test_the_reuse_cells_keep_their_own_seed_count_when_the_budget_binds():
    runs = cplan.campaign_runs({**CAL, "n_seeds": 16, "n_seeds_reuse": 8})
    count = {c: sum(r.cell == c for r in runs) for c in ("dppo", "reuse_dppo", "reuse_grpo_noise", "reuse_grpo_value")}
    assert count == {"dppo": 16, "reuse_dppo": 8, "reuse_grpo_noise": 8, "reuse_grpo_value": 8}
    c = CC.Campaign(store=None, calibration={**CAL, "n_seeds": 16, "n_seeds_reuse": 8})
    assert len(c.expected("reuse_dppo")) == 8 and len(c.expected("dppo")) == 16


def test_the_committed_calibration_follows_the_plan_rules_from_the_committed_pilot():
    """analysis/data/campaign_calibration.json is what plan.calibrate computes from campaign_runs/pilot/."""
    committed = cplan.load_calibration()
    if committed is None:
        pytest.skip("no calibration committed yet")
    fresh = cplan.calibrate()
    for key in ("eps_fire", "delta_hi", "n_seeds", "n_seeds_reuse", "n_needed_at_effect"):
        assert fresh[key] == committed[key], key
    assert math.isclose(fresh["sd_paired_diff"], committed["sd_paired_diff"], rel_tol=1e-9)


def test_smoothing_is_a_trailing_mean_over_five_iterations():
    from analysis.runs.campaign_figures import smooth
    v = np.arange(10.0)
    want = [np.mean(v[max(0, i - 4):i + 1]) for i in range(10)]
    np.testing.assert_allclose(smooth(v), want)


def test_campaign_figures_draw_on_a_partial_campaign(tmp_path):
    from analysis.runs import campaign_figures as CF
    c = _campaign({"grpo": -0.02}, drop=("grpo-s3", "dppo-s5"))
    it, d, seeds = CF.paired_curves(c, "grpo", "dppo", "reward/tifa_mean")
    assert seeds == [0, 1, 2, 4, 6, 7] and d.shape == (6, 100)
    np.testing.assert_allclose(d[:, -1], [c.runs[f"grpo-s{s}"].iters["reward/tifa_mean"].iloc[-1]
                                          - c.runs[f"dppo-s{s}"].iters["reward/tifa_mean"].iloc[-1] for s in seeds])
    made = CF.make(c, cplan.STORE / "pilot", tmp_path)
    assert {"campaign_paired_curves.png", "campaign_endpoints.png"} <= set(made)
    assert all((tmp_path / f).stat().st_size > (10_000 if f.endswith(".png") else 300) for f in made)
    assert made["campaign_endpoints.png"]["C1"]["n"] == 6
    assert made["campaign_table1_multi_reward.md"] == {"multi_dppo": 8, "multi_grpo": 8}
    table = (tmp_path / "campaign_table1_multi_reward.md").read_text()
    assert "| Flow-DPPO | " in table and "(n=8)" in table


def test_make_figures_writes_the_campaign_at_the_top_and_the_first_world_as_an_archive(tmp_path):
    """analysis/make_figures.py on the committed (partial) campaign and an empty archive store: verdicts or
    pending at the top, every campaign figure drawn, the archive in first_world/, within the 60 s budget."""
    import time
    from analysis.runs import report
    (tmp_path / "no_runs").mkdir()
    t0 = time.perf_counter()
    manifest = report.make(tmp_path / "no_runs", tmp_path / "figs", cplan.STORE / "claims", verbose=False)
    assert time.perf_counter() - t0 < 60
    readme = (tmp_path / "figs" / "README.md").read_text()
    assert "## Claims campaign" in readme and "first_world/README.md" in readme
    assert set(manifest["campaign"]["verdicts"]) == {f"C{i}" for i in range(1, 8)}
    for f in manifest["campaign"]["outputs"]:
        assert (tmp_path / "figs" / f).exists(), f
    assert (tmp_path / "figs" / "first_world" / "README.md").exists()
    assert (tmp_path / "figs" / "theory_ratio_noise.png").exists()


def test_make_figures_leaves_a_committed_archive_alone_once_the_first_worlds_runs_are_removed(tmp_path):
    """With no first-world store (paper_runs/ removed once the campaign replaces it), make_figures keeps
    paper_figures/first_world/ exactly as committed instead of overwriting it with an empty archive, and says so."""
    from analysis.runs import report
    archive = tmp_path / "figs" / report.ARCHIVE
    archive.mkdir(parents=True)
    (archive / "README.md").write_text("the first world's verdicts, as committed\n")
    (archive / "fig01_qualitative.png").write_bytes(b"not regenerated")
    (tmp_path / "empty_campaign").mkdir()
    manifest = report.make(tmp_path / "absent", tmp_path / "figs", tmp_path / "empty_campaign", verbose=False)
    assert (archive / "README.md").read_text() == "the first world's verdicts, as committed\n"
    assert (archive / "fig01_qualitative.png").read_bytes() == b"not regenerated"
    assert sorted(p.name for p in archive.iterdir()) == ["README.md", "fig01_qualitative.png"]
    assert manifest["archive"] == {"dir": report.ARCHIVE, "static": True}
    assert "no longer regenerated" in (tmp_path / "figs" / "README.md").read_text()


def test_run_pool_starts_nothing_after_its_deadline_and_records_each_process_wall_time(tmp_path):
    import sys
    import time

    class Quick(runner.Job):
        def command(self):
            return [sys.executable, "-c", "pass"]

    specs = cplan.campaign_runs(CAL, only=["dppo"])[:3]
    jobs = [Quick(spec, tmp_path / spec.run_id, "new", 0, 1) for spec in specs]
    for j in jobs:
        j.run_dir.mkdir()
    assert runner.run_pool(jobs, 1, tmp_path / "logs", start_before=time.time() - 1) == {}
    done = []
    codes = runner.run_pool(jobs, 2, tmp_path / "logs", on_success=done.append, start_before=time.time() + 600)
    assert codes == {s.run_id: 0 for s in specs} and sorted(done) == sorted(s.run_id for s in specs)
    for j in jobs:
        (entry,) = json.loads((j.run_dir / "wall_seconds.json").read_text())
        assert entry["rc"] == 0 and 0 < entry["seconds"] < 60


def test_run_pool_with_finish_by_starts_only_runs_whose_estimate_fits_passing_over_longer_ones(tmp_path, capsys):
    """--finish-by-min: a run starts only if FINISH_SLACK × its estimate ends before the finish-by time; a run
    that does not fit is passed over for a later one that does, and a run with no estimate never starts."""
    import sys
    import time

    class Quick(runner.Job):
        def command(self):
            return [sys.executable, "-c", "pass"]

    specs = cplan.campaign_runs(CAL, only=["dppo"])[:5]
    estimates = [3600.0, 1.0, None, float("nan"), 40.0]   # 40 s × 1.25 = 50 s fits in 60 s; 3600 s does not
    jobs = [Quick(spec, tmp_path / spec.run_id, "new", 0, 1, est_seconds=e) for spec, e in zip(specs, estimates)]
    for j in jobs:
        j.run_dir.mkdir()
    codes = runner.run_pool(jobs, 1, tmp_path / "logs", finish_by=time.time() + 60)
    assert set(codes) == {specs[1].run_id, specs[4].run_id}
    assert "3 runs left for later" in capsys.readouterr().out
    # at 45 s × 1.25 = 56 s the last run no longer fits either when only 50 s remain
    jobs[4].est_seconds = 45.0
    assert set(runner.run_pool(jobs[4:], 1, tmp_path / "logs", finish_by=time.time() + 50)) == set()
    # with no finish-by time every run starts, estimate or not
    assert len(runner.run_pool(jobs, 2, tmp_path / "logs")) == 5


def test_a_background_runner_stops_on_sigterm_terminating_its_trainers_and_recording_their_wall_time(tmp_path):
    """`kill <runner>` (SIGTERM), or SIGINT to a runner that a shell started in the background with SIGINT
    ignored: the pool terminates its trainers at once (they resume from their checkpoints) and records their
    wall time; without the handler the runner would die and leave the trainers running."""
    import signal
    import subprocess
    import sys
    import time
    for sig in (signal.SIGTERM, signal.SIGINT):
        d = tmp_path / sig.name
        d.mkdir()
        script = f"""
import signal, sys, time
signal.signal(signal.SIGINT, signal.SIG_IGN)      # as `cmd &` in a non-interactive shell leaves it
from pathlib import Path
from analysis.campaign import plan as cplan, runner
class Sleeper(runner.Job):
    def command(self):
        return [sys.executable, "-c", "import time, pathlib; pathlib.Path('{d}/child.pid').write_text("
                "str(__import__('os').getpid())); time.sleep(120)"]
spec = cplan.campaign_runs({CAL!r}, only=["dppo"])[0]
job = Sleeper(spec, Path("{d}") / "run", "new", 0, 1)
job.run_dir.mkdir()
try:
    runner.run_pool([job], 1, Path("{d}") / "logs")
except KeyboardInterrupt:
    sys.exit(130)
"""
        proc = subprocess.Popen([sys.executable, "-c", script], cwd=runner.ROOT)
        for _ in range(300):
            if (d / "child.pid").exists():
                break
            time.sleep(0.1)
        child = int((d / "child.pid").read_text())
        time.sleep(0.5)
        proc.send_signal(sig)
        assert proc.wait(timeout=40) == 130
        (entry,) = json.loads((d / "run" / "wall_seconds.json").read_text())
        assert entry["rc"] != 0 and entry["seconds"] < 60
        try:
            os.kill(child, signal.SIGKILL)     # succeeds only if the trainer outlived its runner
            alive = True
        except ProcessLookupError:
            alive = False
        assert not alive, "the trainer outlived its runner"


def test_run_experiments_with_no_campaign_flag_plans_the_claims_campaign_not_the_first_world(capsys, monkeypatch):
    """`python analysis/run_experiments.py --dry-run` plans the claims campaign from its committed store; the first
    world's registry (whose store is no longer committed) runs only when asked for by name."""
    monkeypatch.setattr(runner, "plan", lambda specs, *a, **k: [])   # plan nothing: only which registry is asked for
    seen = {}
    monkeypatch.setattr(cplan, "campaign_runs", lambda cal, only=None, max_seed=None: seen.setdefault("claims", []))
    monkeypatch.setattr(runner.experiments, "all_runs", lambda reg, only=None: seen.setdefault("first_world", []))
    assert runner.main(["--dry-run"]) == 0 and set(seen) == {"claims"}
    seen.clear()
    assert runner.main(["--campaign", "first_world", "--dry-run"]) == 0 and set(seen) == {"first_world"}
    capsys.readouterr()


def test_a_decided_verdict_says_whether_it_rests_on_its_holm_rank():
    """A verdict decided at α/k is re-tested at the next level down, α/(k+1): a refutation whose reverse p lies
    between the two is flagged as resting on its rank; one far below both, or a supported p below α/(k+1), is not."""
    z = np.array([-1.5, -1.0, -0.5, -0.1, 0.1, 0.5, 1.0, 1.5])
    v = next(v for v in CC.decide(_campaign({"grpo": +0.05}))[0] if v.key == "C4")
    for shift, rests in ((-0.7, True), (-3.0, False)):
        part = V.Part("d > 0", list(shift + z))
        p_rev = V.one_sided_p(part.d, greater=False)
        assert (0.025 < p_rev <= 0.05) if rests else p_rev < 1e-3        # the cases are what they claim to be
        note = CC._rank_note(replace(v, verdict=V.REFUTED, level=0.05, p=1 - p_rev), [part])
        assert ("rests on its Holm rank" in note) == rests and ("still hold" in note) == (not rests)
    supported = replace(v, verdict=V.SUPPORTED, level=0.05 / 3)
    assert "rests on its Holm rank" in CC._rank_note(replace(supported, p=0.015), [])          # 0.0125 < p ≤ 0.0167
    assert "still hold" in CC._rank_note(replace(supported, p=0.01), [])
    assert CC._rank_note(replace(supported, level=0.05 / 7, p=0.001), []) == ""                # no level below α/7


def test_the_world_check_is_two_paired_cells_of_eight_seeds_at_200_iterations_seed_major():
    """docs/world_trust_region.md: w200_dppo and w200_no_tr, seeds 0–7, evaluations at 150 and 200 only."""
    runs = cplan.world_runs()
    assert [r.run_id for r in runs[:4]] == ["w200_dppo-s0", "w200_no_tr-s0", "w200_dppo-s1", "w200_no_tr-s1"]
    assert len(runs) == 16 and {r.seed for r in runs} == set(range(8))
    for r in runs:
        cfg = make_config({**r.config_overrides({}), "run_dir": f"runs/campaign/world/{r.run_id}"})
        assert cfg.iterations == 200 and cfg.loss == ("no_trust_region" if "no_tr" in r.run_id else "flow_dppo")
        evals = [i for i in range(cfg.iterations + 1) if i >= cfg.eval_from and i % cfg.eval_every == 0]
        assert tuple(evals) == cplan.WORLD_EVALS
    with pytest.raises(ValueError, match="unknown world-check cell"):
        cplan.world_runs(only=["dppo"])
