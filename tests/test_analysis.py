"""analysis/: log loading (torn last line), statistics against hand-computed values, the registry's
invariants, compaction round trip, plot smoke tests and make_figures end to end on FIXTURE runs.

Fixture runs are real trainer runs (flowdppo.trainer.train) of the toy policy (flowdppo/testing/toy.py) under the
registry's run ids and config overrides, scaled down (FIXTURE_BASE), with the world's reward and metric
NAMES computed by toy stand-ins so every figure finds its keys."""
from __future__ import annotations

import json
import math
import shutil
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]

from analysis.runs import compact, load_runs, plots, stats  # noqa: E402
from analysis.campaign import experiments  # noqa: E402
from flowdppo import runlog  # noqa: E402
from flowdppo.config import make_config  # noqa: E402
from flowdppo.errors import CorruptLogError  # noqa: E402
from flowdppo.scores import within_prompt_diversity
from flowdppo.trainer import Components, train  # noqa: E402
from flowdppo.testing.toy import BrightnessReward, toy_components  # noqa: E402

FIXTURE_BASE = {**experiments.BASE, "iterations": 6, "prompts_per_iter": 4, "group_size": 4, "num_minibatches": 2,
                "num_steps": 6, "sde_steps_per_traj": 2, "eval_every": 3, "eval_prompts": 4,
                "eval_samples_per_prompt": 2, "checkpoint_every": 3, "threads": 1, "progress": False}


# ---------------------------------------------------------------------------------------------------
# Fixture runs
# ---------------------------------------------------------------------------------------------------
class _Scaled:
    """A toy reward with a world reward's name and range: f(brightness closeness)."""

    def __init__(self, name, fn):
        self.name, self.fn, self.base = name, fn, BrightnessReward()

    def __call__(self, images, items):
        return self.fn(self.base(images, items), images).float()


def _world_like_rewards():
    return {"tifa": _Scaled("tifa", lambda b, im: torch.exp(4 * b)),
            "agreement": _Scaled("agreement", lambda b, im: 1 + b),
            "realism": _Scaled("realism", lambda b, im: -1 + 0.5 * b - im.flatten(1).std(1)),
            "ink": _Scaled("ink", lambda b, im: im.flatten(1).mean(1))}


def _world_like_eval(images, items, group_size):
    r = {k: float(fn(images, items).mean()) for k, fn in _world_like_rewards().items()}
    r["accuracy"] = float((_world_like_rewards()["tifa"](images, items) > 0.8).float().mean())
    r["fid"] = float(images.mean() * 10)
    r["diversity"] = within_prompt_diversity(images, group_size)
    return r


def fixture_components(reward_names) -> Components:
    comps = toy_components()
    every = _world_like_rewards()
    return Components(policy=comps.policy, splits=comps.splits, rewards={n: every[n] for n in reward_names},
                      evaluate_images=_world_like_eval)


def _cli_value(v) -> str:
    if isinstance(v, (tuple, list)):
        return ",".join(str(x) for x in v)
    if isinstance(v, bool):
        return "true" if v else "false"
    return str(v)


def make_fixture_runs(root: Path, specs, base=FIXTURE_BASE) -> list[Path]:
    """Train each RunSpec with the toy policy under root/<run_id> (in-process, ~0.3 s a run)."""
    out = []
    for spec in specs:
        fields = spec.config_overrides(base)
        cfg = make_config({}, [f"{k}={_cli_value(v)}" for k, v in fields.items()] + [f"run_dir={root / spec.run_id}"])
        torch.manual_seed(0)
        out.append(train(cfg, components=fixture_components(cfg.rewards)))
    return out


@pytest.fixture(scope="module")
def fixture_root(tmp_path_factory):
    """Seeds 0 and 1 of Figs 2/7/9, 3 and C7 (other figures stay missing on purpose)."""
    root = tmp_path_factory.mktemp("runs")
    reg = experiments.registry(seeds=(0, 1))
    specs = experiments.all_runs(reg, only=["fig2", "fig3", "c7"])
    make_fixture_runs(root, specs)
    return root


# ---------------------------------------------------------------------------------------------------
# Log loading
# ---------------------------------------------------------------------------------------------------
def test_read_jsonl_skips_only_a_torn_last_line(tmp_path):
    p = tmp_path / "m.jsonl"
    p.write_text('{"a": 1}\n{"a": 2}\n{"a": 3, "b"')
    records, torn = load_runs.read_jsonl(p)
    assert records == [{"a": 1}, {"a": 2}] and torn == 1
    with pytest.warns(UserWarning, match=r"m\.jsonl: dropped a torn last line"):   # the trainer-side reader says so
        assert runlog.read_jsonl(p) == records
    p.write_text('{"a": 1}\n{"a": oops}\n{"a": 3}\n')
    with pytest.raises(CorruptLogError, match=r"m\.jsonl: line 2 is not valid JSON .* not the last line"):
        load_runs.read_jsonl(p)
    p.write_text('{"a": 1}\n\n[1, 2]\n')                  # blank lines are fine, a non-record is damage
    with pytest.raises(CorruptLogError, match="line 3 is a JSON list"):
        runlog.parse_jsonl(p)
    p.write_text('{"a": 1}\n{"a": 2}')                     # a whole record cut just before its newline: kept
    assert runlog.parse_jsonl(p).records == [{"a": 1}, {"a": 2}] and runlog.parse_jsonl(p).torn == 0


def test_iterations_csv_torn_last_row_and_damaged_row(tmp_path):
    p = tmp_path / "iterations.csv"
    p.write_text("iteration,loss\n0,1.0\n1,2.0\n2,3")
    df, torn = load_runs.read_iterations_csv(p)
    assert df["iteration"].tolist() == [0, 1] and torn == 1
    p.write_text("iteration,loss\n0,1.0\n1\n2,3.0\n")
    with pytest.raises(CorruptLogError, match=r"iterations\.csv: line 3 has 1 fields, the header 2"):
        load_runs.read_iterations_csv(p)


def _step(it, epoch, mb, **kw):
    rec = {"iteration": it, "epoch": epoch, "minibatch": mb, "opt_step": 0, "sde_indices": [0, 2],
           "time/step_s": 1.0, "time/rollout_s": 5.0, "time/reward_s": 1.0, "reward/tifa_mean": 0.5 + it,
           "ref_kl_per_dim": 0.1 * it, "loss": 1.0, "grad_norm": 2.0}
    rec.update(kw)
    return rec


def test_aggregate_iterations_uses_off_policy_steps():
    """The on-policy first step (KL 0, r 1) is excluded from trust-region means; max keeps the max."""
    recs = [_step(0, 0, 0, kl_per_dim_mean=0.0, kl_per_dim_max=0.0, loss=3.0,
                  per_step={"0": {"kept": 1.0}, "2": {"kept": 1.0}}),
            _step(0, 0, 1, kl_per_dim_mean=2e-4, kl_per_dim_max=5e-4, per_step={"0": {"kept": 0.5}, "2": {"kept": 0.9}}),
            _step(0, 1, 0, kl_per_dim_mean=4e-4, kl_per_dim_max=9e-4, per_step={"0": {"kept": 0.3}, "2": {"kept": 0.7}}),
            _step(1, 0, 0, kl_per_dim_mean=0.0, kl_per_dim_max=0.0)]
    df = load_runs.add_derived(load_runs.aggregate_iterations(recs))
    row = df.iloc[0]
    assert row["n_opt_steps"] == 3 and row["n_off_policy_steps"] == 2
    assert row["kl_per_dim_mean"] == pytest.approx(3e-4) and row["kl_per_dim_max"] == 9e-4
    assert row["per_step.0.kept"] == pytest.approx(0.4) and row["per_step.2.kept"] == pytest.approx(0.8)
    assert row["loss"] == pytest.approx(5 / 3)            # all steps
    assert row["reward/tifa_mean"] == 0.5 and row["sde_indices"] == "0;2"
    assert row["time/update_s"] == 3.0 and row["time/iter_s"] == 9.0
    assert df.iloc[1]["cpu_hours"] == pytest.approx((9.0 + 7.0) / 3600)
    assert math.isnan(df.iloc[1]["kl_per_dim_mean"])      # no off-policy step in iteration 1


def test_load_run_tolerates_a_truncated_metrics_line(fixture_root, tmp_path):
    src = fixture_root / "single-flow_dppo-s0"
    dst = tmp_path / "cut"
    dst.mkdir()
    for name in ("config.json", "run.json", "eval.jsonl"):
        (dst / name).write_bytes((src / name).read_bytes())
    text = (src / "metrics.jsonl").read_text()
    (dst / "metrics.jsonl").write_text(text[: len(text) - 40])   # torn in the middle of the last record
    full, cut = load_runs.load_run(src), load_runs.load_run(dst)
    assert cut.torn_lines == 1 and full.torn_lines == 0
    n_lines = text.count("\n")
    assert sum(cut.iters["n_opt_steps"]) == n_lines - 1


def test_load_runs_lists_missing(fixture_root):
    rs = load_runs.load_runs(fixture_root, ["single-flow_dppo-s0", "nope-s0"])
    assert list(rs.runs) == ["single-flow_dppo-s0"] and rs.missing == ["nope-s0"]
    assert rs.get("single-flow_dppo-s0").latent_dim == 16
    assert set(rs.evals()["split"]) == {"test", "ood"}


def test_compaction_round_trip_is_the_same_table(fixture_root, tmp_path):
    rid = "single-flow_dppo-s0"
    info = compact.compact_store(fixture_root, tmp_path / "store", [rid, "absent-s0"])
    assert info["runs"] == 1 and info["skipped"] == ["absent-s0"] and 0 < info["bytes"] < 100_000
    raw, small = load_runs.load_run(fixture_root / rid), load_runs.load_run(tmp_path / "store" / rid)
    assert small.compact and not raw.compact
    assert not (tmp_path / "store" / rid / "checkpoint.pt").exists()
    cols = [c for c in raw.iters.columns if c != "sde_indices"]
    np.testing.assert_allclose(small.iters[cols].to_numpy(float), raw.iters[cols].to_numpy(float), rtol=1e-3,
                               atol=1e-12)
    np.testing.assert_allclose(small.iters["ratio_mean"] - 1, raw.iters["ratio_mean"] - 1, rtol=1e-3, atol=1e-9)
    kept = sorted(p.name for p in (tmp_path / "store" / rid / "samples").iterdir())
    pngs = ["ood_iter00000.png", "ood_iter00006.png", "test_iter00000.png", "test_iter00006.png"]
    sidecars = [p.replace(".png", ".json") for p in pngs if (fixture_root / rid / "samples" / p.replace(".png", ".json")).exists()]
    assert kept == sorted(pngs + sidecars)      # each kept grid travels with its sidecar (texts, marks)


def test_compaction_keeps_the_step_log_and_grids_as_asked_and_records_wall_time(fixture_root, tmp_path):
    import gzip
    import shutil
    rid = "single-flow_dppo-s0"
    raw = tmp_path / "raw"
    shutil.copytree(fixture_root / rid, raw / rid)
    (raw / rid / "wall_seconds.json").write_text(json.dumps([{"seconds": 12.5}, {"seconds": 7.5}]))
    compact.compact_store(raw, tmp_path / "a", [rid], keep_steps=True, grid_seeds={1})
    a = tmp_path / "a" / rid
    with gzip.open(a / "metrics.jsonl.gz", "rt") as f:
        assert f.read() == (raw / rid / "metrics.jsonl").read_text()
    assert not list((a / "samples").iterdir())            # seed 0 is not in grid_seeds
    info = json.loads((a / "compaction.json").read_text())
    assert info["wall_seconds"] == 20.0 and info["wall_source"] == "runner" and info["processes"] == 2
    (raw / rid / "wall_seconds.json").unlink()
    compact.compact_store(raw, tmp_path / "b", [rid])
    info = json.loads((tmp_path / "b" / rid / "compaction.json").read_text())
    assert not (tmp_path / "b" / rid / "metrics.jsonl.gz").exists()
    assert info["wall_source"].startswith("file times") or info["wall_source"] == "unknown"


# ---------------------------------------------------------------------------------------------------
# Statistics against hand-computed values
# ---------------------------------------------------------------------------------------------------
def test_t_interval_hand_computed():
    ci = stats.t_interval([1.0, 2.0, 3.0])
    # s = 1, se = 1/√3, t_{0.975, 2} = 4.302652729911275
    half = 4.302652729911275 / math.sqrt(3)
    assert ci.mean == 2.0 and ci.n == 3
    assert ci.lo == pytest.approx(2 - half) and ci.hi == pytest.approx(2 + half)
    one = stats.t_interval([5.0, float("nan")])
    assert one.n == 1 and one.mean == 5.0 and math.isnan(one.lo)


def test_paired_difference_and_verdicts():
    a, b = {0: 3.0, 1: 4.0, 2: 5.0, 7: 100.0}, {0: 1.0, 1: 2.0, 2: 2.0}
    d = stats.paired_difference(a, b)          # per-seed differences 2, 2, 3 (seed 7 unpaired)
    assert d.n == 3 and d.mean == pytest.approx(7 / 3)
    sd = np.std([2, 2, 3], ddof=1)
    assert d.lo == pytest.approx(7 / 3 - 4.302652729911275 * sd / math.sqrt(3))
    assert stats.verdict(d) == stats.SUPPORTED
    assert stats.verdict(stats.Interval(-1, -2, -0.5, 3)) == stats.NOT_SUPPORTED
    assert stats.verdict(stats.Interval(0.1, -0.2, 0.4, 3)) == stats.INCONCLUSIVE
    assert stats.verdict(stats.Interval(1, float("nan"), float("nan"), 1)) == stats.INCONCLUSIVE
    assert stats.combine([stats.SUPPORTED, stats.SUPPORTED]) == stats.SUPPORTED
    assert stats.combine([stats.SUPPORTED, stats.INCONCLUSIVE]) == stats.INCONCLUSIVE
    assert stats.combine([stats.INCONCLUSIVE, stats.NOT_SUPPORTED]) == stats.NOT_SUPPORTED
    assert stats.verdict_at_least(stats.Interval(0.95, 0.92, 0.98, 3), 0.9) == stats.SUPPORTED


def test_smooth_tail_head_peak_hand_computed():
    y = np.array([[1.0, 2.0, 3.0, 4.0, 5.0]])
    np.testing.assert_allclose(stats.smooth(y, 3), [[1.5, 2.0, 3.0, 4.0, 4.5]])
    np.testing.assert_allclose(stats.smooth(np.array([1.0, np.nan, 3.0]), 3), [1.0, 2.0, 3.0])
    np.testing.assert_allclose(stats.tail_mean(np.array([[1.0, 2, 3, 4, 5, 6, 7, 8, 9, 10]]), 0.2), [9.5])
    np.testing.assert_allclose(stats.head_mean(np.array([[1.0, 2, 3, 4, np.nan]]), 0.5), [1.5])
    # peak of the smoothed curve 5 (window 1), final value 2 → drop 3
    np.testing.assert_allclose(stats.peak_to_final_drop(np.array([[1.0, 5.0, 2.0]]), 1, frac=0.3), [3.0])
    assert stats.ratio_of_means([1, 2, np.nan], [2, 2, 5]) == pytest.approx(0.75)


def test_align_and_curve_band():
    xs, Y, seeds = stats.align({0: ([0, 10, 20], [1.0, 2.0, 3.0]), 1: ([0, 10], [3.0, 4.0])})
    np.testing.assert_array_equal(xs, [0, 10, 20])
    assert seeds == [0, 1] and math.isnan(Y[1, 2])
    mean, lo, hi, n = stats.curve_band(Y)
    np.testing.assert_allclose(mean, [2.0, 3.0, 3.0])
    np.testing.assert_array_equal(n, [2, 2, 1])


def test_bootstrap_ci_contains_the_mean():
    ci = stats.bootstrap_ci(np.arange(20.0))
    assert ci.lo < 9.5 < ci.hi and ci.mean == 9.5


# ---------------------------------------------------------------------------------------------------
# Registry
# ---------------------------------------------------------------------------------------------------
def test_registry_shares_runs_and_scales_thresholds():
    reg = experiments.registry()
    ids = {r.run_id for r in experiments.all_runs(reg)}
    assert "single-flow_dppo_cps-s1" in {r.run_id for r in reg["fig3"]}          # δ_mid = the main run
    assert "multi-flow_dppo_cps-s2" in {r.run_id for r in reg["fig11"]}          # β = 0 = the main run
    assert {r.run_id for r in reg["fig2"]} == {r.run_id for r in reg["fig7"]} == {r.run_id for r in reg["fig9"]}
    guard = next(r for r in reg["fig2"] if r.cell == "GRPO-Guard")
    assert guard.overrides["clip_range"] == pytest.approx(4e-6 * math.sqrt(65536 / 256))
    c7 = {experiments.c7_role(r): r for r in reg["c7"] if r.seed == 0}
    assert c7["clip_matched_mid"].overrides["clip_range"] == pytest.approx(
        math.sqrt(2 * c7["dppo_mid"].overrides["delta"] / 256), rel=0.02)
    # every cell that compares methods has ≥ 3 seeds
    for key, runs in reg.items():
        cells = {}
        for r in runs:
            cells.setdefault(r.cell, set()).add(r.seed)
        if key not in ("fig1", "fig6"):
            assert all(len(s) >= 3 for s in cells.values()), key
    assert len(ids) == 93
    est = experiments.estimate_cpu_seconds(1.0)
    assert est["runs"] == 93 and est["cpu_seconds"] > 93 * experiments.BASE["iterations"]


def test_deltas_from_pilot_rounds_to_one_digit():
    d = experiments.deltas_from_pilot([1e-4, 1.4e-4, 3e-4, float("nan")])
    assert d["kl_old_median"] == pytest.approx(1.4e-4) and d["delta_mid"] == 1e-4
    assert d["delta_lo"] == pytest.approx(1e-5) and d["delta_hi"] == pytest.approx(1e-3)


# ---------------------------------------------------------------------------------------------------
# Plots: ax in, the same ax out, something drawn
# ---------------------------------------------------------------------------------------------------
def test_plot_functions_draw_on_the_given_axes():
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(2, 4)
    ax = axes.ravel()
    Y = np.array([[0.1, 0.2, 0.3], [0.2, 0.25, 0.35], [0.0, 0.3, 0.4]])
    ci = stats.t_interval([1.0, 2.0, 3.0])
    assert plots.curve_band(ax[0], np.arange(3), Y, label="a", color="k") is ax[0]
    assert ax[0].get_lines()[0].get_label() == "a (n=3)" and len(ax[0].collections) == 1   # the band
    assert plots.points_with_ci(ax[1], {"p": (ci, ci)}) is ax[1] and ax[1].containers
    assert plots.interval_bars(ax[2], {"x": ci, "y": ci}) is ax[2] and len(ax[2].patches) == 2
    assert plots.histograms(ax[3], {"h": np.array([1e-6, 1e-5, 1e-4])}, log=True) is ax[3] and ax[3].patches
    assert plots.image(ax[4], np.zeros((4, 4), dtype=np.uint8), "t") is ax[4] and ax[4].images
    kl = np.logspace(-2, 0, 5)
    assert plots.ratio_noise(ax[5], kl, -kl, np.sqrt(2 * kl), clip_window=(-0.2, 0.2), clip_label="c") is ax[5]
    assert plots.lines(ax[6], kl, {"a": kl}) is ax[6] and ax[6].get_lines()
    assert plots.missing_note(ax[7], ["r1", "r2"]) is ax[7] and "MISSING 2" in ax[7].texts[0].get_text()
    assert plots.style(ax[7], xlabel="x", logx=True) is ax[7] and ax[7].get_xscale() == "log"
    plt.close(fig)


def test_grid_cell_inverts_save_grid(tmp_path):
    from flowdppo.evaluation import save_grid
    from analysis.runs.figures import _read_png, grid_cell
    imgs = torch.rand(6, 1, 5, 5)   # 3 prompts × 2 seeds of 5×5 images
    save_grid(imgs, 2, tmp_path / "g.png", max_prompts=8, scale=3)
    cell = grid_cell(_read_png(tmp_path / "g.png"), 2, 1, 3, 2)
    expect = np.kron((imgs[5, 0].numpy() * 255).round(), np.ones((3, 3)))
    np.testing.assert_array_equal(cell, expect)


# ---------------------------------------------------------------------------------------------------
# Runner and make_figures on the fixture runs
# ---------------------------------------------------------------------------------------------------
def test_runner_plans_skip_resume_new_and_conflict(fixture_root):
    from analysis.campaign import runner as run_experiments
    reg = experiments.registry(seeds=(0, 1))
    spec = next(r for r in reg["fig2"] if r.run_id == "single-flow_dppo-s0")
    absent = next(r for r in reg["fig4"] if r.seed == 0)
    changed = experiments.RunSpec(spec.run_id, spec.cell, spec.seed, {**spec.overrides, "lr": 0.5})
    states = {j.spec.run_id: j for j in run_experiments.plan([spec, absent], fixture_root, None, base=FIXTURE_BASE)}
    assert states["single-flow_dppo-s0"].state == "done" and states[absent.run_id].state == "new"
    [resume] = run_experiments.plan([spec], fixture_root, 9, base=FIXTURE_BASE)
    assert resume.state == "resume" and resume.done_iterations == 6
    assert resume.command()[3:5] == ["train", "--resume"] and "iterations=9" in resume.command()
    [conflict] = run_experiments.plan([changed], fixture_root, None, base=FIXTURE_BASE)
    assert conflict.state == "conflict" and "lr" in conflict.detail
    new_cmd = states[absent.run_id].command()
    assert "threads=1" in new_cmd and "progress=false" in new_cmd and "advantage=gdpo" in new_cmd
    assert "rewards=tifa,agreement,realism,ink" in new_cmd


def test_make_figures_on_fixture_runs_reports_missing(fixture_root, tmp_path, capsys):
    from analysis.runs import figures as make_figures
    t0 = time.perf_counter()
    ctx = make_figures.make_all(fixture_root, tmp_path / "figs")
    elapsed = time.perf_counter() - t0
    out = capsys.readouterr().out
    assert "MISSING" in out and "multi-flow_grpo-s0" in out and "single-flow_dppo-s2" in out
    figs = tmp_path / "figs"
    for _, f in make_figures.FIGURE_INDEX:
        assert (figs / f).exists(), f
    manifest = json.loads((figs / "manifest.json").read_text())
    assert manifest["runs_found"] == len(ctx.runs.runs) and "cfg-flow_cps-s1" in manifest["missing"]
    fig2 = manifest["outputs"]["fig02_07_09_single_reward.png"]
    assert fig2["paper"] == ["Fig. 2", "Fig. 7", "Fig. 9"] and fig2["seeds"] == [0, 1]
    assert "single-flow_dppo-s2" in fig2["missing"] and "single-flow_dppo-s0" in fig2["runs"]
    assert manifest["outputs"]["fig04_08_multi_reward.png"]["runs"] == []       # drawn, empty, marked
    readme = (figs / "README.md").read_text()
    assert "Incomplete" in readme and all(f"### C{i}:" in readme for i in range(1, 8))
    assert "do not edit by hand" in readme
    table = (figs / "table1_multi_reward.md").read_text()
    assert "INCOMPLETE" in table
    assert elapsed < 60


def test_claims_are_the_same_from_the_compact_store(fixture_root, tmp_path):
    from analysis.runs import claims
    reg = experiments.registry()
    ids = [r.run_id for r in experiments.all_runs(reg, only=["fig3", "c7"])]
    compact.compact_store(fixture_root, tmp_path / "store", [i for i in ids if (fixture_root / i).exists()])
    raw = claims.all_claims(load_runs.load_runs(fixture_root, ids), reg)
    small = claims.all_claims(load_runs.load_runs(tmp_path / "store", ids), reg)
    for a, b in zip(raw, small):
        assert a.verdict == b.verdict
        for pa, pb in zip(a.parts, b.parts):
            assert pa.value.n == pb.value.n
            np.testing.assert_allclose(pa.value.mean, pb.value.mean, rtol=1e-2, atol=1e-9)


def test_partial_runs_are_drawn_but_not_counted_at_the_end(fixture_root, tmp_path):
    from analysis.runs import claims
    rid = "single-flow_dppo-s0"
    dst = tmp_path / rid
    dst.mkdir()
    for name in ("config.json", "run.json", "eval.jsonl"):
        (dst / name).write_bytes((fixture_root / rid / name).read_bytes())
    lines = (fixture_root / rid / "metrics.jsonl").read_text().splitlines(keepends=True)
    (dst / "metrics.jsonl").write_text("".join(lines[:4]))          # 2 of 6 iterations: killed
    run = load_runs.load_run(dst)
    assert run.partial and run.done_iterations == 2
    spec = next(r for r in experiments.registry()["fig2"] if r.run_id == rid)
    assert claims.per_seed(load_runs.load_runs(tmp_path, [rid]), [spec], claims.final_eval("tifa")) == {}
    assert claims.per_seed(load_runs.load_runs(fixture_root, [rid]), [spec], claims.final_eval("tifa")) != {}


def _tear_last_line(path: Path, keep_fraction: float = 0.5) -> None:
    """Cut the file inside its last line (no newline after the cut): a writer killed mid-write."""
    text = path.read_text()
    start = text.rstrip("\n").rfind("\n") + 1
    path.write_text(text[: start + int((len(text) - start) * keep_fraction)])


def _compact_in_place(root: Path, rid: str, tmp: Path) -> None:
    compact.compact_run(root / rid, tmp / rid)
    shutil.rmtree(root / rid)
    shutil.move(str(tmp / rid), str(root / rid))


def test_damaged_torn_and_partial_runs_are_reported_in_the_figure_readme(fixture_root, tmp_path):
    """Torn last lines in each log format (raw metrics.jsonl / eval.jsonl, compact eval.jsonl / iterations.csv,
    and a raw line torn before compaction) are listed in paper_figures/README.md and the manifest; a run
    whose final evaluation or iterations are incomplete is partial and left out of the tables (never its
    ood value of an older iteration beside a newer test value); one corrupt middle line makes that one run
    damaged — reported and skipped — while every figure is still made."""
    from analysis.runs import figures as make_figures
    root, work = tmp_path / "runs", tmp_path / "work"
    shutil.copytree(fixture_root, root)
    work.mkdir()
    torn_metrics, torn_final_eval = "single-flow_grpo-s0", "single-flow_grpo-s1"
    compact_torn_eval, compact_torn_csv = "single-flow_cps-s0", "single-flow_cps-s1"
    corrupt, torn_before_compaction = "single-grpo_guard-s0", "single-grpo_guard-s1"
    _tear_last_line(root / torn_metrics / "metrics.jsonl")
    _tear_last_line(root / torn_final_eval / "eval.jsonl")               # the final evaluation's ood record
    for rid in (compact_torn_eval, compact_torn_csv):
        _compact_in_place(root, rid, work)
    _tear_last_line(root / compact_torn_eval / "eval.jsonl")
    _tear_last_line(root / compact_torn_csv / "iterations.csv")
    lines = (root / corrupt / "metrics.jsonl").read_text().splitlines(keepends=True)
    lines[3] = lines[3][:20] + "\n"
    (root / corrupt / "metrics.jsonl").write_text("".join(lines))
    _tear_last_line(root / torn_before_compaction / "metrics.jsonl")
    _compact_in_place(root, torn_before_compaction, work)

    runs = load_runs.load_runs(root, [torn_metrics, torn_final_eval, compact_torn_eval, compact_torn_csv, corrupt,
                                      torn_before_compaction])
    assert list(runs.damaged) == [corrupt] and "line 4 is not valid JSON" in runs.damaged[corrupt]
    stale = runs.get(torn_final_eval)
    assert stale.partial and stale.partial_reason == "final evaluation (iteration 6) lacks split ood"
    assert np.isnan(stale.final_eval("tifa", "ood")) and np.isfinite(stale.final_eval("tifa", "test"))
    assert runs.get(compact_torn_csv).partial_reason == "5 of 6 iterations logged"
    assert not runs.get(torn_metrics).partial and runs.get(torn_metrics).torn == {"metrics.jsonl": 1}
    assert runs.get(torn_before_compaction).torn == {"metrics.jsonl (raw, at compaction)": 1}

    out = tmp_path / "figs"
    make_figures.make_all(root, out, verbose=False)
    for _, f in make_figures.FIGURE_INDEX:
        assert (out / f).exists(), f
    readme = (out / "README.md").read_text()
    damaged_part = readme.split("**Damaged:")[1].split("**Torn logs:")[0]
    torn_part = readme.split("**Torn logs:")[1].split("**Partial:")[0]
    partial_part = readme.split("**Partial:")[1].split("## Metric mapping")[0]
    assert f"`{corrupt}`" in damaged_part and "line 4 is not valid JSON" in damaged_part
    for rid, entry in ((torn_metrics, "metrics.jsonl 1"), (torn_final_eval, "eval.jsonl 1"),
                       (compact_torn_eval, "eval.jsonl 1"), (compact_torn_csv, "iterations.csv 1"),
                       (torn_before_compaction, "metrics.jsonl (raw, at compaction) 1")):
        assert f"- `{rid}`: {entry}" in torn_part, rid
    assert f"- `{torn_final_eval}`: final evaluation (iteration 6) lacks split ood" in partial_part
    assert f"- `{compact_torn_eval}`: final evaluation (iteration 6) lacks split" in partial_part
    assert f"- `{compact_torn_csv}`: 5 of 6 iterations logged" in partial_part
    manifest = json.loads((out / "manifest.json").read_text())
    assert list(manifest["damaged"]) == [corrupt]
    assert set(manifest["partial"]) == {torn_final_eval, compact_torn_eval, compact_torn_csv}
    # Table 4 (single reward block): only the complete seed of each damaged cell is counted
    t4 = pd.read_csv(out / "table4_full.csv")
    single_ood = t4[(t4["block"] == "single") & (t4["split"] == "ood") & (t4["metric"] == "tifa")].set_index("method")
    assert single_ood.loc["Flow-GRPO", "n"] == 1 and single_ood.loc["GRPO-Guard", "n"] == 1
    assert single_ood.loc["Flow-CPS", "n"] == 0 and single_ood.loc["Flow-DPPO", "n"] == 2
    assert single_ood.loc["Flow-GRPO", "mean"] == pytest.approx(runs.get(torn_metrics).final_eval("tifa", "ood"))
    assert "partial" in (out / "table4_full.md").read_text()


def test_compaction_reports_a_damaged_run_and_compacts_the_others(fixture_root, tmp_path):
    root = tmp_path / "runs"
    for rid in ("single-flow_dppo-s0", "single-flow_dppo-s1"):
        shutil.copytree(fixture_root / rid, root / rid)
    lines = (root / "single-flow_dppo-s1" / "metrics.jsonl").read_text().splitlines(keepends=True)
    lines[1] = "{oops\n"
    (root / "single-flow_dppo-s1" / "metrics.jsonl").write_text("".join(lines))
    info = compact.compact_store(root, tmp_path / "store")
    assert info["runs"] == 1 and list(info["damaged"]) == ["single-flow_dppo-s1"]
    assert "line 2 is not valid JSON" in info["damaged"]["single-flow_dppo-s1"]
    assert (tmp_path / "store" / "single-flow_dppo-s0").exists() and not (tmp_path / "store" / "single-flow_dppo-s1").exists()
