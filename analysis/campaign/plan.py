"""The claims campaign of docs/analysis_plan.md as data: its pilot, its cells and the calibrations the pilot fixes.

The plan (committed before any run) is the authority; this module transcribes it so that the runner
(`python analysis/run_experiments.py --campaign pilot|claims`) and the verdicts (analysis/runs/campaign_claims.py)
read one list.  Every run is the default `flowdppo.config.Config` plus `RUN` plus its cell's overrides plus its
seed — nothing is inherited from the older figure registry in experiments.py, which belongs to the first world's runs (paper_figures/first_world/).

Amendment A1 (2026-12-03, after the pilot and before any campaign run; listed in paper_figures/README.md):
the plan's §2 describes the default batch as "8 prompts × 8 samples"; the default Config, and hence the pilot,
is 16 prompts × 4 samples.  The runs use the default, as the plan's first sentence says.  The sample-reuse cells'
"G4-I2, the paper's G32-I2 analogue" therefore becomes G8-I2: half the default's groups per rollout, two inner
epochs — the paper's G32-I2 is half its default G64.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from analysis.campaign.experiments import RunSpec, paper_relative_eps

ROOT = Path(__file__).resolve().parents[2]
PLAN_FILE = ROOT / "docs" / "analysis_plan.md"
STORE = ROOT / "campaign_runs"                 # committed, compact
RAW = ROOT / "runs" / "campaign"               # git-ignored raw run directories (checkpoints)
CALIBRATION_FILE = ROOT / "analysis" / "data" / "campaign_calibration.json"

# §2: 100 iterations, evaluations at 75 and 100 (the iteration-0 evaluation is the shared base)
RUN: dict[str, Any] = {"iterations": 100, "eval_every": 75, "eval_from": 75, "checkpoint_every": 25}
# §4: the pilot ran the same, and also evaluated the base at iteration 0 in every run
PILOT_RUN: dict[str, Any] = {"iterations": 100, "eval_every": 75, "checkpoint_every": 25}
PILOT_SEEDS: tuple[int, ...] = tuple(range(100, 110))
LAST_QUARTER_EVALS = (75, 100)                 # E_* average these evaluations (§1)

EPS_PAPER_REL = round(paper_relative_eps(1e-4), 6)     # Flow-GRPO's ε_paper = 1e-4 at D = 256: 1.6e-3
EPS_GUARD = round(paper_relative_eps(4e-6), 8)         # GRPO-Guard: 6.4e-5
EPS_FORMULA = 8.8e-4                                   # √(2δ/D) at δ = 1e-4, D = 256, two digits
MULTI: dict[str, Any] = {"rewards": ("tifa", "agreement", "realism", "ink"), "advantage": "gdpo"}
GRPO: dict[str, Any] = {"loss": "flow_grpo", "clip_range": EPS_PAPER_REL}
# Amendment A1: G8-I2 (half the default 16 groups, two inner epochs), 300 iterations, one evaluation at the end
REUSE: dict[str, Any] = {"prompts_per_iter": 8, "num_inner_epochs": 2, "iterations": 300, "eval_every": 300,
                         "eval_from": 300, "checkpoint_every": 50}
CFG_SCALE = 3.0

# §3: non-inferiority / equivalence margins in metric units
MARGINS = {"tifa": 0.02, "agreement": 0.02, "realism": 0.03, "ink": 0.01}
MARGIN_C7 = 0.02
# §4: the paper-scaled effect (median relative advantage over the three single-reward Table 3 columns)
PAPER_RELATIVE_GAINS = {"FLUX2-9B": (85.1 - 84.5) / (84.5 - 25.4), "SD3.5": (78.9 - 56.6) / (56.6 - 12.4),
                        "FLUX.1-dev": (90.7 - 87.8) / (87.8 - 23.3)}
N_MIN, N_MAX = 8, 16
N_EXPLORATORY = 3
ALPHA_FIRST_HOLM_STEP = 0.05 / 7


@dataclass(frozen=True)
class Cell:
    name: str
    overrides: dict[str, Any]
    role: str            # primary | control | exploratory
    label: str

    def spec(self, seed: int) -> RunSpec:
        return RunSpec(f"{self.name}-s{seed}", self.name, seed, dict(self.overrides))


def _round_sig(x: float, digits: int) -> float:
    return float(f"{x:.{digits - 1}e}")


# ---------------------------------------------------------------------------------------------------
# The pilot (§4)
# ---------------------------------------------------------------------------------------------------
def pilot_cells() -> dict[str, Cell]:
    return {"pilot-dppo": Cell("pilot-dppo", dict(PILOT_RUN), "pilot", "Flow-DPPO (pilot)"),
            "pilot-grpo": Cell("pilot-grpo", {**PILOT_RUN, **GRPO}, "pilot", "Flow-GRPO ε=1.6e-3 (pilot)")}


def pilot_runs() -> list[RunSpec]:
    return [c.spec(s) for s in PILOT_SEEDS for c in pilot_cells().values()]


# ---------------------------------------------------------------------------------------------------
# The world check (docs/world_trust_region.md): no trust region vs Flow-DPPO at 200 iterations, outside C1–C7
# ---------------------------------------------------------------------------------------------------
WORLD_RUN: dict[str, Any] = {"iterations": 200, "eval_every": 50, "eval_from": 150, "checkpoint_every": 25}
WORLD_SEEDS: tuple[int, ...] = tuple(range(8))
WORLD_EVALS = (150, 200)


def world_cells() -> dict[str, Cell]:
    return {"w200_dppo": Cell("w200_dppo", dict(WORLD_RUN), "world", "Flow-DPPO, 200 iterations"),
            "w200_no_tr": Cell("w200_no_tr", {**WORLD_RUN, "loss": "no_trust_region"}, "world",
                               "no trust region, 200 iterations")}


def world_runs(only: Optional[list[str]] = None) -> list[RunSpec]:
    """Seed-major, as the campaign: seed s of both cells before seed s + 1."""
    cs = world_cells()
    unknown = [k for k in (only or []) if k not in cs]
    if unknown:
        raise ValueError(f"unknown world-check cell(s) {unknown}; choose from {sorted(cs)}")
    return [cs[k].spec(s) for s in WORLD_SEEDS for k in (only or cs)]


def eps_fire_from_rates(grid: dict[float, float], target: float) -> float:
    """§2: the clip ε at which clipping fires on `target` of the samples — log-linear interpolation between
    the two grid points whose firing rates bracket it, two significant digits.  The rate falls with ε."""
    pts = sorted(grid.items())
    for (e0, r0), (e1, r1) in zip(pts, pts[1:]):
        if r0 >= target >= r1 and r0 != r1:
            w = (r0 - target) / (r0 - r1)
            return _round_sig(math.exp(math.log(e0) + w * (math.log(e1) - math.log(e0))), 2)
    raise ValueError(f"no two points of the ε grid bracket the firing rate {target:.4g}: {pts}")


def delta_hi_from_median(kl_old_median: float) -> float:
    """§2: the pilot's median per-sample KL_old / 10, rounded down to a power of ten."""
    return 10.0 ** math.floor(math.log10(kl_old_median / 10))


def calibrate(store: Path = STORE / "pilot") -> dict[str, Any]:
    """The numbers §2 and §4 take from the pilot: ε_fire, δ_hi, the per-seed sds, Δ* and the seed count."""
    import gzip

    import numpy as np

    from analysis.runs import verdicts
    from analysis.runs.load_runs import load_run
    from flowdppo.metrics import cf_clip_grid
    from flowdppo.config import Config

    missing = [r.run_id for r in pilot_runs() if not (store / r.run_id / "compaction.json").exists()]
    if missing:
        raise FileNotFoundError(f"the pilot is incomplete: {missing} not in {store}. "
                                "Fix: python analysis/run_experiments.py --campaign pilot")
    steps: list[dict[str, Any]] = []
    for s in PILOT_SEEDS:
        with gzip.open(store / f"pilot-dppo-s{s}" / "metrics.jsonl.gz", "rt") as f:
            steps += [json.loads(line) for line in f if line.strip()]
    latent_dim = load_run(store / f"pilot-dppo-s{PILOT_SEEDS[0]}").latent_dim    # from run.json, not typed in
    grid = {e: float(np.mean([r[f"cf/clip_fire@{e:g}"] for r in steps])) for e in cf_clip_grid(Config(), latent_dim)}
    blocked = float(np.mean([r["blocked"] for r in steps]))
    kl_med = float(np.mean([r["q/kl_old_per_dim@0.5"] for r in steps]))

    def e_test(rid: str) -> float:
        run = load_run(store / rid)
        ev = run.evals[(run.evals["split"] == "test") & run.evals["iteration"].isin(LAST_QUARTER_EVALS)]
        if len(ev) != len(LAST_QUARTER_EVALS):
            raise ValueError(f"{rid}: evaluations at {LAST_QUARTER_EVALS} expected, found {sorted(ev['iteration'])}")
        return float(ev["tifa"].mean())

    dppo = np.array([e_test(f"pilot-dppo-s{s}") for s in PILOT_SEEDS])
    grpo = np.array([e_test(f"pilot-grpo-s{s}") for s in PILOT_SEEDS])
    base = load_run(store / f"pilot-dppo-s{PILOT_SEEDS[0]}").initial_eval("tifa")
    d = dppo - grpo
    sd_d = float(d.std(ddof=1))
    gain = float(grpo.mean() - base)
    rel = sorted(PAPER_RELATIVE_GAINS.values())
    effect = rel[1] * gain
    n_needed = verdicts.seeds_for_power(effect, sd_d, ALPHA_FIRST_HOLM_STEP)
    n_mean = verdicts.seeds_for_power(float(np.mean(rel)) * gain, sd_d, ALPHA_FIRST_HOLM_STEP)
    n = min(max(n_needed, N_MIN), N_MAX)
    budget = campaign_budget(n, pilot_run_seconds(store))
    n_reuse = N_MIN if budget["core_hours_all_n"] > BUDGET_CORE_HOURS else n
    return {
        "budget": budget, "budget_core_hours": BUDGET_CORE_HOURS,
        "n_seeds_reuse": n_reuse,
        "n_seeds_reuse_rule": "§4: the C4 cells keep 8 seeds if the campaign at n seeds everywhere exceeds the "
                              "budget (estimated from the pilot's measured run time)",
        "rule": "docs/analysis_plan.md §2 (eps_fire, delta_hi) and §4 (sd, effect, seed count)",
        "pilot_seeds": list(PILOT_SEEDS), "optimizer_steps_averaged": len(steps),
        "mask_blocked_rate": blocked, "clip_fire_rate_by_eps": {f"{k:g}": v for k, v in grid.items()},
        "eps_fire": eps_fire_from_rates(grid, blocked),
        "kl_old_median_per_dim": kl_med, "delta_hi": delta_hi_from_median(kl_med),
        "base_E_test": base, "E_test_dppo": dppo.tolist(), "E_test_grpo": grpo.tolist(),
        "sd_E_test_dppo": float(dppo.std(ddof=1)), "sd_E_test_grpo": float(grpo.std(ddof=1)),
        "sd_paired_diff": sd_d, "mean_paired_diff": float(d.mean()), "gain_grpo": gain,
        "paper_relative_gain_median": rel[1], "paper_relative_gain_mean": float(np.mean(rel)),
        "effect": effect, "effect_optimistic": float(np.mean(rel)) * gain,
        "alpha": ALPHA_FIRST_HOLM_STEP, "power": verdicts.POWER,
        "n_needed_at_effect": n_needed, "n_needed_at_optimistic_effect": n_mean,
        "n_seeds": n, "n_clamp": [N_MIN, N_MAX],
        "power_at_n_seeds": verdicts.power_t(effect, sd_d, n, ALPHA_FIRST_HOLM_STEP),
    }


BUDGET_CORE_HOURS = 15.0


def pilot_run_seconds(store: Path) -> float:
    """Median wall time of a pilot run (1 thread, two side by side; three evaluations)."""
    secs = sorted(json.loads((d / "compaction.json").read_text()).get("wall_seconds") or float("nan")
                  for d in store.iterdir() if (d / "compaction.json").exists())
    secs = [x for x in secs if x == x]
    return secs[len(secs) // 2] if secs else float("nan")


def campaign_budget(n: int, pilot_seconds: float) -> dict[str, float]:
    """Core-hours of the campaign estimated from the pilot's run time: a 100-iteration cell run costs the pilot
    run less one of its three evaluations; a G8-I2 300-iteration run, rollouts at half the batch and updates at
    twice the epochs, costs ≈ 2 pilot runs; CFG doubles a run."""
    one = pilot_seconds * 0.9
    c = cells({"delta_hi": 1e-6, "eps_fire": 1e-3})
    cost = {name: one * (2.0 if name.startswith("reuse_") else 1.0) * (2.0 if "cfg" in name else 1.0) for name in c}
    total_n = sum(cost[k] * len(seeds_of(c[k], n)) for k in c) / 3600
    total_8 = sum(cost[k] * len(seeds_of(c[k], n, N_MIN)) for k in c) / 3600
    return {"pilot_run_seconds": pilot_seconds, "core_hours_all_n": total_n, "core_hours_reuse_at_8": total_8}


def load_calibration(path: Path = CALIBRATION_FILE) -> Optional[dict[str, Any]]:
    return json.loads(path.read_text()) if path.exists() else None


# ---------------------------------------------------------------------------------------------------
# The cells (§2)
# ---------------------------------------------------------------------------------------------------
def cells(calibration: Optional[dict[str, Any]]) -> dict[str, Cell]:
    """Every campaign cell; the calibrated cells (asym_hi, sym_hi, clip_fire) need the pilot's calibration."""
    out = [
        Cell("dppo", {**RUN}, "primary", "Flow-DPPO"),
        Cell("grpo", {**RUN, **GRPO}, "primary", f"Flow-GRPO ε={EPS_PAPER_REL:g}"),
        Cell("multi_dppo", {**RUN, **MULTI}, "primary", "Flow-DPPO, GDPO 4 rewards"),
        Cell("multi_grpo", {**RUN, **MULTI, **GRPO}, "primary", "Flow-GRPO, GDPO 4 rewards"),
        Cell("multi_dppo_b0", {**RUN, **MULTI, "beta": 0.0}, "primary", "Flow-DPPO, GDPO, β=0"),
        Cell("reuse_dppo", {**RUN, **REUSE}, "primary", "Flow-DPPO G8-I2"),
        Cell("reuse_grpo_noise", {**RUN, **REUSE, **GRPO}, "primary", f"Flow-GRPO G8-I2 ε={EPS_PAPER_REL:g}"),
        Cell("reuse_grpo_value", {**RUN, **REUSE, "loss": "flow_grpo", "clip_range": 1e-4}, "exploratory8",
             "Flow-GRPO G8-I2 ε=1e-4 (by value)"),
        Cell("no_tr", {**RUN, "loss": "no_trust_region"}, "control", "no trust region"),
    ]
    if calibration is not None:
        dh, ef = float(calibration["delta_hi"]), float(calibration["eps_fire"])
        out += [Cell("asym_hi", {**RUN, "delta": dh}, "primary", f"Flow-DPPO δ={dh:g}"),
                Cell("sym_hi", {**RUN, "loss": "flow_dppo_symmetric", "delta": dh}, "primary",
                     f"symmetric mask δ={dh:g}"),
                Cell("clip_fire", {**RUN, "loss": "flow_grpo", "clip_range": ef}, "primary",
                     f"Flow-GRPO ε={ef:g} (firing-matched)")]
    out += [
        Cell("x_guard", {**RUN, "loss": "grpo_guard", "clip_range": EPS_GUARD}, "exploratory", f"GRPO-Guard ε={EPS_GUARD:g}"),
        Cell("x_cps_grpo", {**RUN, **GRPO, "kernel": "cps"}, "exploratory", "Flow-CPS"),
        Cell("x_cps_dppo", {**RUN, "kernel": "cps"}, "exploratory", "Flow-DPPO + CPS"),
        Cell("x_sym_mid", {**RUN, "loss": "flow_dppo_symmetric"}, "exploratory", "symmetric mask δ=1e-4"),
        Cell("x_delta_1e-5", {**RUN, "delta": 1e-5}, "exploratory", "Flow-DPPO δ=1e-5"),
        Cell("x_delta_1e-3", {**RUN, "delta": 1e-3}, "exploratory", "Flow-DPPO δ=1e-3"),
        Cell("x_multi_beta1", {**RUN, **MULTI, "beta": 1.0}, "exploratory", "Flow-DPPO, GDPO, β=1"),
        Cell("x_multi_beta10", {**RUN, **MULTI, "beta": 10.0}, "exploratory", "Flow-DPPO, GDPO, β=10"),
        Cell("x_clip_formula", {**RUN, "loss": "flow_grpo", "clip_range": EPS_FORMULA}, "exploratory",
             f"Flow-GRPO ε={EPS_FORMULA:g} (formula-matched)"),
        Cell("x_cfg_dppo", {**RUN, "guidance_scale": CFG_SCALE, "eval_guidance_scale": CFG_SCALE,
                            "ref_guidance_scale": CFG_SCALE}, "exploratory", "Flow-DPPO, CFG 3"),
        Cell("x_cfg_grpo", {**RUN, **GRPO, "guidance_scale": CFG_SCALE, "eval_guidance_scale": CFG_SCALE,
                            "ref_guidance_scale": CFG_SCALE}, "exploratory", "Flow-GRPO, CFG 3"),
        # added 2026-12-03 before any campaign run of them, outside the plan's families: the world's own question
        # (does a trust region matter at 3× the default learning rate?), asked by the embedded-world issue
        Cell("x_lr3_dppo", {**RUN, "lr": 3e-4}, "exploratory", "Flow-DPPO, lr 3e-4"),
        Cell("x_lr3_grpo", {**RUN, **GRPO, "lr": 3e-4}, "exploratory", "Flow-GRPO, lr 3e-4"),
        Cell("x_lr3_no_tr", {**RUN, "loss": "no_trust_region", "lr": 3e-4}, "exploratory", "no trust region, lr 3e-4"),
    ]
    return {c.name: c for c in out}


def seeds_of(cell: Cell, n_seeds: int, n_seeds_reuse: Optional[int] = None) -> tuple[int, ...]:
    """§4: n seeds for every compared cell (primary and control), n_seeds_reuse for the 3×-longer sample-reuse
    (C4) cells where the budget binds, 8 for the C4 mechanism cell, 3 for the exploratory ones; seeds 0 … n − 1,
    never a pilot seed."""
    if cell.role == "exploratory":
        return tuple(range(N_EXPLORATORY))
    if cell.role == "exploratory8":
        return tuple(range(N_MIN))
    if cell.name.startswith("reuse_") and n_seeds_reuse is not None:
        return tuple(range(n_seeds_reuse))
    return tuple(range(n_seeds))


def seed_counts(calibration: Optional[dict[str, Any]]) -> tuple[int, Optional[int]]:
    """(n for the compared cells, n for the C4 cells) from the calibration (N_MIN for both before it exists)."""
    if not calibration:
        return N_MIN, None
    return int(calibration["n_seeds"]), (int(calibration["n_seeds_reuse"]) if "n_seeds_reuse" in calibration else None)


def campaign_runs(calibration: Optional[dict[str, Any]], only: Optional[list[str]] = None,
                  max_seed: Optional[int] = None) -> list[RunSpec]:
    """Every campaign run, seed-major (§5: seed s of every cell before seed s + 1 of any)."""
    n, n_reuse = seed_counts(calibration)
    cs = cells(calibration)
    unknown = [k for k in (only or []) if k not in cs]
    if unknown:
        raise ValueError(f"unknown campaign cell(s) {unknown}; choose from {sorted(cs)}"
                         + ("" if calibration else " (asym_hi, sym_hi, clip_fire need the pilot's calibration)"))
    chosen = [cs[k] for k in (only or cs)]
    runs = [(s, i, c.spec(s)) for i, c in enumerate(chosen) for s in seeds_of(c, n, n_reuse)
            if max_seed is None or s <= max_seed]
    return [r for _, _, r in sorted(runs, key=lambda t: (t[0], t[1]))]
