"""Claims C1–C7 decided by the pre-registered plan (docs/analysis_plan.md §1, §3) from the campaign's runs.

The endpoints of §1 are read from each complete run through `Run`; the paired differences of §3 go to
analysis.runs.verdicts (Holm over the seven primaries, intersection–union composites, TOST for C7).  A claim
whose cells lack runs is *pending* and names them; it is never judged on fewer seeds than the plan's n.
The no-trust-region control is tested on its own (one-sided, α = 0.05) outside the Holm family.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable, Optional

import numpy as np

from analysis.campaign import plan as cplan
from analysis.runs import verdicts as V
from analysis.runs.load_runs import Run, load_run


# ---------------------------------------------------------------------------------------------------
# §1 endpoints
# ---------------------------------------------------------------------------------------------------
def _last_quarter_start(run: Run) -> float:
    return 0.75 * int(run.config["iterations"])


def e_metric(run: Run, metric: str, split: str = "test") -> float:
    """E_<metric>: mean over the evaluations in the run's last quarter (75 and 100 of 100; 300 of 300)."""
    it, v = run.eval_series(metric, split)
    keep = it >= _last_quarter_start(run)
    return float(np.mean(v[keep])) if keep.any() else np.nan


def iter_tail(run: Run, column: str) -> float:
    """Mean of a per-iteration column over the last quarter of the iterations (R_final, K_ref)."""
    it, v = run.series(column)
    keep = it >= _last_quarter_start(run)
    return float(np.nanmean(v[keep])) if keep.any() else np.nan


def r_early_ink(run: Run) -> float:
    """R_early_ink: mean reward/ink_mean over the first quarter of the iterations minus its iteration-0 value."""
    it, v = run.series("reward/ink_mean")
    head = it < 0.25 * int(run.config["iterations"])
    return float(np.mean(v[head]) - v[it == 0][0]) if head.any() and (it == 0).any() else np.nan


ENDPOINTS: dict[str, Callable[[Run], float]] = {
    "E_test": lambda r: e_metric(r, "tifa"),
    "E_ood_fid": lambda r: e_metric(r, "fid", "ood"),
    "E_agreement": lambda r: e_metric(r, "agreement"),
    "E_realism": lambda r: e_metric(r, "realism"),
    "E_ink": lambda r: e_metric(r, "ink"),
    "E_accuracy": lambda r: e_metric(r, "accuracy"),
    "R_final": lambda r: iter_tail(r, "reward/tifa_mean"),
    "R_early_ink": r_early_ink,
    "K_ref": lambda r: iter_tail(r, "ref_kl_per_dim"),
}


# ---------------------------------------------------------------------------------------------------
# Runs of the store
# ---------------------------------------------------------------------------------------------------
@dataclass
class Campaign:
    store: Path
    calibration: Optional[dict]
    runs: dict[str, Run] = field(default_factory=dict)     # complete runs only
    partial: dict[str, str] = field(default_factory=dict)   # run_id → why it does not count

    @classmethod
    def load(cls, store: Path = cplan.STORE / "claims", calibration: Optional[dict] = None) -> "Campaign":
        cal = calibration if calibration is not None else cplan.load_calibration()
        c = cls(Path(store), cal)
        if c.store.exists():
            for d in sorted(p for p in c.store.iterdir() if (p / "config.json").exists()):
                run = load_run(d)
                if run.partial:
                    c.partial[d.name] = run.partial_reason
                else:
                    c.runs[d.name] = run
        return c

    def expected(self, cell: str) -> list[str]:
        cells = cplan.cells(self.calibration)
        if cell not in cells:
            return []
        n, n_reuse = cplan.seed_counts(self.calibration)
        return [f"{cell}-s{s}" for s in cplan.seeds_of(cells[cell], n, n_reuse)]

    def missing(self, cell: str) -> list[str]:
        if cell not in cplan.cells(self.calibration):      # a calibrated cell before the calibration exists
            return [f"{cell}-s*"]
        return [r for r in self.expected(cell) if r not in self.runs]

    def values(self, cell: str, endpoint: str) -> dict[int, float]:
        """{seed: endpoint} over the cell's complete runs."""
        out = {}
        for rid in self.expected(cell):
            if rid in self.runs:
                out[self.runs[rid].seed] = ENDPOINTS[endpoint](self.runs[rid])
        return out

    def paired(self, a: str, b: str, endpoint: str, endpoint_b: Optional[str] = None, sign: float = 1.0) -> list[float]:
        """d_s = sign·(E(a, s) − E(b, s)) over the seeds both cells have."""
        va, vb = self.values(a, endpoint), self.values(b, endpoint_b or endpoint)
        return [sign * (va[s] - vb[s]) for s in sorted(set(va) & set(vb))]


# ---------------------------------------------------------------------------------------------------
# §3 hypotheses
# ---------------------------------------------------------------------------------------------------
@dataclass
class ClaimSpec:
    key: str
    statement: str
    cells: tuple[str, ...]
    build: Callable[[Campaign], list[V.Part]]
    endpoint: str
    test: str = "paired t, one-sided"


def _noninf(c: Campaign, a: str, b: str, metrics: tuple[str, ...]) -> list[V.Part]:
    return [V.Part(f"E_{m}({a}) − E_{m}({b}) > −{cplan.MARGINS[m]:g}",
                   c.paired(a, b, "E_test" if m == "tifa" else f"E_{m}"), margin=cplan.MARGINS[m]) for m in metrics]


CLAIMS: list[ClaimSpec] = [
    ClaimSpec("C1", "Flow-DPPO reaches a higher in-domain reward at a lower KL to the reference than Flow-GRPO",
              ("dppo", "grpo"),
              lambda c: [V.Part("E_test(dppo) − E_test(grpo) > 0", c.paired("dppo", "grpo", "E_test"),
                                equivalence_margin=cplan.MARGINS["tifa"]),
                         V.Part("K_ref(grpo) − K_ref(dppo) > 0", c.paired("grpo", "dppo", "K_ref"))], "E_test", "IUT: paired one-sided t on E_test and on K_ref"),
    ClaimSpec("C2", "Flow-DPPO forgets less out of domain", ("dppo", "grpo"),
              lambda c: [V.Part("E_ood_fid(grpo) − E_ood_fid(dppo) > 0", c.paired("grpo", "dppo", "E_ood_fid"))],
              "E_ood_fid", "paired t, one-sided"),
    ClaimSpec("C3", "under GDPO, Flow-DPPO raises the in-domain reward without sacrificing another objective",
              ("multi_dppo", "multi_grpo"),
              lambda c: [V.Part("E_test(multi_dppo) − E_test(multi_grpo) > 0",
                                c.paired("multi_dppo", "multi_grpo", "E_test"), equivalence_margin=cplan.MARGINS["tifa"])]
              + _noninf(c, "multi_dppo", "multi_grpo", ("agreement", "realism", "ink")), "E_test", "IUT: one-sided t on E_test, non-inferiority t on agreement, realism, ink"),
    ClaimSpec("C4", "with sample reuse, ratio clipping degrades where Flow-DPPO does not",
              ("reuse_dppo", "reuse_grpo_noise"),
              lambda c: [V.Part("R_final(reuse_dppo) − R_final(reuse_grpo_noise) > 0",
                                c.paired("reuse_dppo", "reuse_grpo_noise", "R_final"))], "R_final", "paired t, one-sided"),
    ClaimSpec("C5", "the asymmetry is necessary", ("asym_hi", "sym_hi"),
              lambda c: [V.Part("E_test(asym_hi) − E_test(sym_hi) > 0", c.paired("asym_hi", "sym_hi", "E_test"),
                                equivalence_margin=cplan.MARGINS["tifa"])], "E_test", "paired t, one-sided"),
    ClaimSpec("C6", "a moderate β suppresses early hacking without hurting final rewards",
              ("multi_dppo", "multi_dppo_b0"),
              lambda c: [V.Part("R_early_ink(multi_dppo_b0) − R_early_ink(multi_dppo) > 0",
                                c.paired("multi_dppo_b0", "multi_dppo", "R_early_ink"))]
              + _noninf(c, "multi_dppo", "multi_dppo_b0", ("tifa", "agreement", "realism")), "R_early_ink", "IUT: one-sided t on R_early_ink, non-inferiority t on tifa, agreement, realism"),
    ClaimSpec("C7", "the KL criterion matters beyond the trust region's tightness", ("dppo", "clip_fire"),
              lambda c: [V.Part("E_test(dppo) − E_test(clip_fire) ≠ 0", c.paired("dppo", "clip_fire", "E_test"),
                                two_sided=True, equivalence_margin=cplan.MARGIN_C7)], "E_test",
              "paired t, two-sided; TOST at ±0.02 if not significant"),
]


@dataclass
class Verdict:
    key: str
    statement: str
    verdict: str
    p: float
    level: float
    detail: str
    parts: list[tuple[str, float, tuple[float, float], int]]   # label, mean, 95 % CI, n
    missing: list[str]
    test: str = ""
    provisional: bool = False   # decided while another primary is pending: its Holm level can still rise


def provisional_note(v: Verdict, verdicts: list[Verdict]) -> str:
    """Why a decided verdict may still change: Holm ranks the seven p-values together, and a pending claim counts
    as the largest, so this one is tested at the lowest level it can get; '' when the family is complete."""
    pending = [w.key for w in verdicts if w.verdict == V.PENDING]
    if not v.provisional or not pending:
        return ""
    return (f"provisional until {', '.join(pending)} {'is' if len(pending) == 1 else 'are'} decided: its Holm level "
            f"(now {v.level:.4f}) can only rise as they get p-values, and the verdict can change with it")


def decide(c: Campaign) -> tuple[list[Verdict], dict]:
    """The seven primaries' verdicts (Holm) and the no-trust-region control."""
    hyps, specs = [], {}
    for cs in CLAIMS:
        parts = cs.build(c)
        hyps.append(V.Hypothesis(cs.key, parts, expected_n=len(c.expected(cs.cells[0]))))
        specs[cs.key] = (cs, parts)
    out = []
    for d in V.decide(hyps):
        cs, parts = specs[d.key]
        missing = [r for cell in cs.cells for r in c.missing(cell)]
        if missing:      # a hypothesis with a missing cell run is pending even if n is reached elsewhere
            verdict, detail = V.PENDING, f"{len(missing)} runs missing"
        else:
            verdict, detail = d.verdict, d.detail
        rows = []
        for p in parts:
            x = np.asarray(p.d, float)
            rows.append((p.label, float(x.mean()) if x.size else np.nan, V.t_ci(x, 0.95), int(x.size)))
        out.append(Verdict(d.key, cs.statement, verdict, d.p, d.level, detail, rows, missing, cs.test))
    if any(v.verdict == V.PENDING for v in out):
        for v in out:
            v.provisional = v.verdict != V.PENDING
    d_ctrl = c.paired("dppo", "no_tr", "E_test")
    ctrl_missing = c.missing("dppo") + c.missing("no_tr")
    control = {"hypothesis": "E_test(dppo) − E_test(no_tr) > 0 (one-sided, α = 0.05, outside the Holm family)",
               "n": len(d_ctrl), "mean": float(np.mean(d_ctrl)) if d_ctrl else np.nan,
               "ci95": V.t_ci(d_ctrl, 0.95), "p": V.one_sided_p(d_ctrl),
               "missing": ctrl_missing}
    control["verdict"] = (V.PENDING if ctrl_missing else
                          ("a trust region matters here" if control["p"] <= 0.05 else "not shown"))
    return out, control


# ---------------------------------------------------------------------------------------------------
# The paper's side of each claim, and how our verdict reads against it
# ---------------------------------------------------------------------------------------------------
PAPER_EVIDENCE = {
    "C1": "Tables 3 and 2: Flow-DPPO ends above Flow-GRPO on GenEval2 on all three single-reward models (SD3.5 78.9 "
          "vs 56.6, FLUX2-9B 85.1 vs 84.5, FLUX.1-dev 90.7 vs 87.8), with a lower reference KL (SD3.5 1.16e-3 vs "
          "2.34e-3, FLUX2-9B 0.17e-3 vs 0.77e-3)",
    "C2": "Figs 2 and 7, Table 4's OOD columns: every method's OOD scores rise and then fall; Flow-DPPO's fall "
          "least (SD3.5 single, OOD HPSv2 0.253 vs 0.206)",
    "C3": "Table 1, Figs 4 and 8: under GDPO, Flow-DPPO has the highest GenEval2 (FLUX2-9B multi 57.7 vs 46.8) "
          "and no other reward falls below the baselines",
    "C4": "Fig. 5: with sample reuse, Flow-GRPO's training reward degrades (SD3.5 G64-I2 ≈ 0.20 after 3000 "
          "epochs) while Flow-DPPO's keeps rising (≈ 0.60)",
    "C5": "Fig. 3: the symmetric mask (no asymmetry) makes training collapse",
    "C6": "Figs 11 and 13: β = 1e-3 suppresses the early hacking of PickScore and HPSv2 and lowers no final reward",
    "C7": "§1 and App. D argue that ratio clipping decides on a noisy estimate of the divergence, so the exact KL "
          "criterion should beat a clip of the same tightness; the paper runs no matched-tightness experiment",
}

# Differences of setting that bear on every comparison (facts of the world and of the plan, not of the runs)
SCALE_NOTES = [
    "Dimension: the embedded latent has D = 256 dims, SD3.5's at 512² has 65 536. The dim-averaged log-ratio "
    "has mean −KL_dim and sd √(2·KL_dim/D) (App. D), so at equal per-dim KL it is 16× noisier relative to its "
    "bias here; the "
    "noise-matched ε (ε_paper·√(65536/D)) is how the plan carries the paper's clip to this D.",
    "Length: 100 iterations per run (300 for the sample-reuse cells), against the paper's 1000–3000 epochs. "
    "Effects that build up late (C4's degradation, C6's end-of-training rewards) may not have appeared yet.",
    "Model and rewards: a 0.63 M-parameter transformer trained in full (no LoRA) on digit layouts, with "
    "miniature rewards (README, \"The embedded default world\"): a difference of mechanism may show at this scale while its size does not "
    "carry over.",
]


def _parts_of(c: Campaign, key: str) -> list[V.Part]:
    return next(cs for cs in CLAIMS if cs.key == key).build(c)


def reading(c: Campaign, v: Verdict) -> str:
    """One sentence: how verdict `v` stands against the paper's claim."""
    label, mean, ci, n = v.parts[0]
    est = _est(mean, ci, n)
    if v.verdict == V.PENDING:
        return f"not decided yet: {len(v.missing)} of the plan's runs are missing (so far {label}: {est})."
    if v.provisional:
        return f"*provisional* (the Holm family is not complete) — " + reading(c, replace(v, provisional=False))
    parts = _parts_of(c, v.key)
    others = (f" Other part{'s' if len(parts) > 2 else ''}: " + "; ".join(
        f"{p.label}, {_est(float(np.mean(p.d)), V.t_ci(p.d, 0.95), p.n)}" for p in parts[1:]) + ".") if parts[1:] else ""
    if v.verdict == V.SUPPORTED:
        return (f"**we agree**: {label}, {est}, significant at the Holm level {v.level:.4f}." + others
                + _rank_note(v, parts))
    if v.verdict == V.REFUTED:
        why = [f"{p.label} goes the other way (reverse one-sided p = {V.one_sided_p(p.d, greater=False):.3g})"
               if kind == "reversed" else f"{p.label} fails: worse by more than the margin"
               for p, kind in V.refuting_parts(parts, v.level)]
        lo, hi = V.t_ci(parts[0].d, 1 - 2 * v.level)
        return (f"**we disagree**: {'; '.join(why) or 'a part is rejected the other way'} at the Holm level "
                f"{v.level:.4f}; its {100 * (1 - 2 * v.level):.0f} % interval is [{lo:+.4f}, {hi:+.4f}] (95 %: {est})."
                + others + _rank_note(v, parts))
    sup = next(p for p in parts if p.margin is None)
    x = np.asarray(sup.d, float)
    if v.verdict == V.EQUIVALENT:
        m = sup.equivalence_margin
        lo, hi = V.t_ci(sup.d, 1 - 2 * v.level)
        return (f"**we disagree: no difference beyond the margin**: the {100 * (1 - 2 * v.level):.1f} % interval of "
                f"{label} is [{lo:+.4f}, {hi:+.4f}], inside ±{m:g}; at our scale the two are the same within the "
                "margin." + others)
    detect = V.mde(float(x.std(ddof=1)), int(x.size), v.level)
    scaled = c.calibration.get("effect") if c.calibration else None
    lean = "leans the paper's way" if mean > 0 else "leans against the paper"
    return (f"**we cannot tell**: {label}, {est}; the estimate {lean}, but at n = {n} the test could detect "
            f"{detect:.3g} at 80 % power" + (f", and the paper-scaled effect is Δ* = {scaled:.3g}" if scaled and
                                               v.key in ("C1", "C3", "C5", "C7") else "") + "." + others)


def _rank_note(v: Verdict, parts: list[V.Part]) -> str:
    """Whether a decided verdict rests on its Holm rank: would it hold at the next level down, α/(k+1)?"""
    k = int(round(V.ALPHA / v.level))
    if k >= len(CLAIMS):
        return ""
    lower = V.ALPHA / (k + 1)
    holds = v.p <= lower if v.verdict == V.SUPPORTED else bool(V.refuting_parts(parts, lower))
    return (f" It would still hold at the next Holm level down ({lower:.4f})." if holds else
            f" It rests on its Holm rank: at the next level down ({lower:.4f}), had one more claim ranked after it, "
            f"it would no longer read *{v.verdict}*.")


def paper_section(c: Campaign, verdict_rows: list[Verdict]) -> list[str]:
    lines = ["## Where we stand on the paper's claims", "",
             "Each line: what the paper shows, then what the plan's test says here. *We agree* and *we disagree* "
             "are verdicts of the plan; *we cannot tell* is an underpowered test.", ""]
    for v in verdict_rows:
        lines.append(f"- **{v.key}** ({v.statement}). Paper: {PAPER_EVIDENCE[v.key]}. Here: {reading(c, v)}")
    noise, value, dppo = (c.values(k, "R_final") for k in ("reuse_grpo_noise", "reuse_grpo_value", "reuse_dppo"))
    common = sorted(set(noise) & set(value) & set(dppo))
    if common:
        m = {k: float(np.mean([d[s] for s in common])) for k, d in
             (("dppo", dppo), ("noise", noise), ("value", value))}
        diff = {k: [d[s] - dppo[s] for s in common] for k, d in (("noise", noise), ("value", value))}
        shown = {k: _est(float(np.mean(x)), V.t_ci(x, 0.95), len(x)) for k, x in diff.items()}
        lines += ["", f"C4's mechanism (exploratory, seeds {common[0]}–{common[-1]}, n = {len(common)}): R_final is "
                  f"{m['dppo']:.3f} for Flow-DPPO, {m['noise']:.3f} for the clip at the noise-matched ε and "
                  f"{m['value']:.3f} at ε_paper by value; paired against Flow-DPPO (95 % t-intervals) the clip is "
                  f"{shown['noise']} at the noise-matched ε and {shown['value']} at ε_paper. The plan reads a drop at "
                  "ε_paper only as the clip's tightness, and a drop at both as the ratio's bias "
                  "(docs/analysis_plan.md §3)."]
    lines += ["", "Why results here may differ from the paper's, whatever the verdicts:", ""]
    lines += [f"- {note}" for note in SCALE_NOTES]
    return lines + [""]


ROLE_LABELS = {"exploratory8": "exploratory (C4's mechanism: 8 seeds)"}
"""How the runs table names a cell role that is not self-explanatory (plan.seeds_of gives the seed counts)."""


def status_table(c: Campaign) -> list[tuple[str, str, int, int]]:
    """(cell, role, complete runs, planned runs) for every campaign cell."""
    rows = []
    for name, cell in cplan.cells(c.calibration).items():
        exp = c.expected(name)
        rows.append((name, cell.role, sum(r in c.runs for r in exp), len(exp)))
    return rows


def compute(store: Path) -> dict:
    """Measured core-hours of a store: the sum of its runs' 1-thread wall times (compaction.json), and the
    runs that have none recorded."""
    import json
    secs, unrecorded = 0.0, []
    if store is not None and Path(store).exists():
        for d in sorted(p for p in Path(store).iterdir() if (p / "compaction.json").exists()):
            w = json.loads((d / "compaction.json").read_text()).get("wall_seconds")
            if w is None:
                unrecorded.append(d.name)
            else:
                secs += float(w)
    return {"core_hours": secs / 3600, "unrecorded": unrecorded}


def _est(mean: float, ci: tuple[float, float], n: int) -> str:
    if n < 2:
        return f"n = {n}"
    return f"{mean:+.4f} [{ci[0]:+.4f}, {ci[1]:+.4f}], n = {n}"


def markdown(c: Campaign) -> str:
    """The campaign section of paper_figures/README.md."""
    verdict_rows, control = decide(c)
    cal = c.calibration
    lines = ["## Claims campaign (docs/analysis_plan.md)", ""]
    if cal is None:
        lines += ["The pilot's calibration (analysis/data/campaign_calibration.json) does not exist yet: every claim "
                  "is pending.", ""]
    else:
        lines += [f"Calibration from the pilot (seeds {cal['pilot_seeds'][0]}–{cal['pilot_seeds'][-1]}): "
                  f"ε_fire = {cal['eps_fire']:g} (the mask blocks {cal['mask_blocked_rate']:.3f} of samples), "
                  f"δ_hi = {cal['delta_hi']:g} (median KL_old per dim {cal['kl_old_median_per_dim']:.3g}); "
                  f"per-seed sd of the paired E_test difference {cal['sd_paired_diff']:.4f}, GRPO's gain "
                  f"{cal['gain_grpo']:.3f}, so Δ* = {cal['paper_relative_gain_median']:.3f} × gain = {cal['effect']:.4f}. "
                  f"80 % power at α/7 needs {cal['n_needed_at_effect']} seeds "
                  f"({cal['n_needed_at_optimistic_effect']} at the optimistic Δ = {cal['effect_optimistic']:.4f}); "
                  f"the plan's cap gives n = {cal['n_seeds']} (power {cal['power_at_n_seeds']:.2f} at Δ*). "
                  f"Estimated compute at n everywhere: {cal['budget']['core_hours_all_n']:.1f} core-hours "
                  f"(budget {cal['budget_core_hours']:g}), so the sample-reuse (C4) cells keep "
                  f"{cal['n_seeds_reuse']} seeds ({cal['budget']['core_hours_reuse_at_8']:.1f} core-hours).", ""]
    lines += ["| claim | verdict | primary part: mean [95 % CI], n | test | p | Holm level | power / note |",
              "|---|---|---|---|---|---|---|"]
    for v in verdict_rows:
        label, mean, ci, n = v.parts[0]
        note = (f"missing {len(v.missing)} runs" if v.missing else v.detail.split("; ")[-1])
        if v.provisional:
            note += "; " + provisional_note(v, verdict_rows)
        pending = v.verdict == V.PENDING
        shown = f"**{v.verdict}** (provisional)" if v.provisional else f"**{v.verdict}**"
        lines.append(f"| {v.key} | {shown} | {label}: {_est(mean, ci, n)} | {v.test} | {'–' if pending else f'{v.p:.3g}'} | "
                     f"{'–' if pending else f'{v.level:.4f}'} | {note} |")
    lines += ["", "Every part of each composite (exploratory reading of the parts):", ""]
    for v in verdict_rows:
        for label, mean, ci, n in v.parts:
            lines.append(f"- {v.key}: {label}: {_est(mean, ci, n)}")
    lines += ["", f"No-trust-region control: {control['hypothesis']}: {_est(control['mean'], control['ci95'], control['n'])}, "
              f"p = {control['p']:.3g}: **{control['verdict']}**.", "",
              "Runs per cell (complete / planned):", "", "| cell | role | runs |", "|---|---|---|"]
    for name, role, have, want in status_table(c):
        lines.append(f"| `{name}` | {ROLE_LABELS.get(role, role)} | {have} / {want} |")
    if c.partial:
        lines += ["", "Partial runs (not counted): " + ", ".join(f"{k} ({why})" for k, why in c.partial.items())]
    pilot, claims = compute(c.store.parent / "pilot" if c.store is not None else None), compute(c.store)
    complete = all(have == want for _, _, have, want in status_table(c))
    lines += ["", f"Compute{'' if complete else ' so far'} (1-thread wall time, two runs side by side on 2 cores): "
              f"campaign {claims['core_hours']:.2f} core-hours; pilot {pilot['core_hours']:.2f} core-hours"
              + (f" plus {len(pilot['unrecorded'])} runs made before wall times were recorded "
                 f"({', '.join(pilot['unrecorded'])})" if pilot["unrecorded"] else "") + ".",
              "", "Deviations from the plan: amendments A1 (the reuse cells run G8-I2: the default batch is 16 × 4, "
              "not the 8 × 8 the plan's text said) and A2 (no iteration-0 evaluation per run), both listed with their "
              "reasons in docs/analysis_plan.md and made before any campaign run; A3 added three exploratory lr-3× "
              "cells and ran seeds 1–2 of `dppo`, `no_tr` and those cells early, outside every verdict; A4 (reporting only) "
              "marks a verdict *provisional* while another claim is pending."]
    lines += [""] + paper_section(c, verdict_rows)
    return "\n".join(lines) + "\n"
