"""Figures of the claims campaign (docs/analysis_plan.md §5), drawn from campaign_runs/ and valid on a partial campaign.

* `campaign_qualitative.png` — in-domain test prompts, with their text beside each row and every cell outlined
  green (right) or red (wrong): the base (the pilot's iteration-0 evaluation, shared by every run) next to seed 0
  of Flow-GRPO, Flow-DPPO, the firing-matched clip and the no-trust-region control, at the end of training.
* `campaign_fig01_qualitative_test.png`, `campaign_fig06_qualitative_ood.png` — the same, with the paper's Figs 1
  and 6 columns (base, Flow-GRPO, Flow-CPS, GRPO-Guard, Flow-DPPO, Flow-DPPO + CPS), on the in-domain test prompts
  and on the OOD prompts (the row wording never trained on: what forgetting looks like).
* `campaign_paired_curves.png` — each comparison of the plan as a paired difference to its reference method on
  the same seed (training reward, smoothed over 5 iterations), mean and 95 % t-band over seeds.
* `campaign_endpoints.png` — each claim's primary paired difference per seed, its mean and its Holm-level
  interval, against 0 and the plan's margin: what the verdict table says, drawn.
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import numpy as np

from analysis.runs import campaign_claims as CC
from analysis.runs import verdicts as V

SMOOTH = 5
QUALITATIVE_PROMPTS = 6
QUALITATIVE_SEEDS = 3
# (panel title, cell, reference cell, per-iteration column)
PAIRED = [
    ("C1: Flow-GRPO − Flow-DPPO", "grpo", "dppo", "reward/tifa_mean"),
    ("C7: clip ε_fire − Flow-DPPO", "clip_fire", "dppo", "reward/tifa_mean"),
    ("control: no trust region − Flow-DPPO", "no_tr", "dppo", "reward/tifa_mean"),
    ("C5: symmetric − asymmetric (δ_hi)", "sym_hi", "asym_hi", "reward/tifa_mean"),
    ("C3: GDPO Flow-GRPO − Flow-DPPO", "multi_grpo", "multi_dppo", "reward/tifa_mean"),
    ("C6: β = 0 − β = 0.1 (ink reward)", "multi_dppo_b0", "multi_dppo", "reward/ink_mean"),
    ("C4: G8-I2 clip ε=1.6e-3 − Flow-DPPO", "reuse_grpo_noise", "reuse_dppo", "reward/tifa_mean"),
    ("C4 mechanism: G8-I2 clip ε=1e-4 − Flow-DPPO", "reuse_grpo_value", "reuse_dppo", "reward/tifa_mean"),
]


def smooth(v: np.ndarray, k: int = SMOOTH) -> np.ndarray:
    """Trailing moving average over k iterations (shorter at the start)."""
    c = np.cumsum(np.insert(np.asarray(v, float), 0, 0.0))
    idx = np.arange(1, len(v) + 1)
    lo = np.maximum(idx - k, 0)
    return (c[idx] - c[lo]) / (idx - lo)


def paired_curves(c: CC.Campaign, cell: str, ref: str, column: str) -> tuple[np.ndarray, np.ndarray, list[int]]:
    """(iterations, [seeds, iterations] smoothed differences cell − ref, seeds) over the seeds both cells have."""
    runs_a = {c.runs[r].seed: c.runs[r] for r in c.expected(cell) if r in c.runs}
    runs_b = {c.runs[r].seed: c.runs[r] for r in c.expected(ref) if r in c.runs}
    seeds = sorted(set(runs_a) & set(runs_b))
    if not seeds:
        return np.array([]), np.zeros((0, 0)), []
    rows = []
    for s in seeds:
        (ia, va), (ib, vb) = runs_a[s].series(column), runs_b[s].series(column)
        n = min(len(va), len(vb))
        rows.append(smooth(va[:n] - vb[:n]))
    n = min(len(r) for r in rows)
    return ia[:n], np.array([r[:n] for r in rows]), seeds


def fig_paired_curves(c: CC.Campaign, out: Path) -> dict:
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(2, 4, figsize=(16, 6.5), squeeze=False)
    info = {}
    for ax, (title, cell, ref, col) in zip(axes.flat, PAIRED):
        it, d, seeds = paired_curves(c, cell, ref, col)
        ax.axhline(0, color="k", lw=0.6)
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("iteration", fontsize=8)
        if not seeds:
            ax.text(0.5, 0.5, "no paired runs yet", ha="center", va="center", transform=ax.transAxes, fontsize=9)
            ax.set_xticks([]); ax.set_yticks([])
            info[title] = {"seeds": []}
            continue
        for row in d:
            ax.plot(it, row, color="0.75", lw=0.6)
        m = d.mean(0)
        ax.plot(it, m, color="C0", lw=1.6, label=f"mean, n = {len(seeds)}")
        if len(seeds) >= 2:
            from scipy import stats as st
            half = st.t.ppf(0.975, len(seeds) - 1) * d.std(0, ddof=1) / np.sqrt(len(seeds))
            ax.fill_between(it, m - half, m + half, color="C0", alpha=0.25, lw=0, label="95 % band")
        ax.legend(fontsize=7, loc="lower left")
        ax.set_ylabel(f"Δ {col.split('/')[1].replace('_mean', '')} (train)", fontsize=8)
        info[title] = {"seeds": seeds, "final_mean": float(m[-1])}
    fig.suptitle(f"Paired differences to the reference method on the same seed (training reward, {SMOOTH}-iteration "
                 "trailing mean; grey: single seeds)", fontsize=10)
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return info


def fig_endpoints(c: CC.Campaign, out: Path) -> dict:
    """One row per claim: the per-seed paired primary difference, its mean and (1 − 2α_k) interval."""
    import matplotlib.pyplot as plt
    verdicts, _ = CC.decide(c)
    by_key = {v.key: v for v in verdicts}
    fig, axes = plt.subplots(1, len(CC.CLAIMS), figsize=(2.3 * len(CC.CLAIMS), 4.2), squeeze=False)
    info = {}
    for ax, cs in zip(axes[0], CC.CLAIMS):
        part = cs.build(c)[0]
        d = np.asarray(part.d, float)
        v = by_key[cs.key]
        ax.axhline(0, color="k", lw=0.7)
        margin = part.equivalence_margin
        if margin is not None:
            for y in (-margin, margin):
                ax.axhline(y, color="C3", lw=0.7, ls="--")
        if d.size:
            ax.scatter(np.random.default_rng(0).uniform(-0.15, 0.15, d.size), d, s=12, color="0.4", zorder=3)
        if d.size >= 2:
            lo, hi = V.t_ci(d, 1 - 2 * v.level)
            ax.errorbar([0.45], [d.mean()], yerr=[[d.mean() - lo], [hi - d.mean()]], fmt="o", color="C0", capsize=4)
        ax.set_xlim(-0.5, 0.8)
        ax.set_xticks([])
        ax.set_title(f"{cs.key}: {v.verdict}\n{part.label.split(' >')[0].split(' ≠')[0]}", fontsize=7.5)
        ax.tick_params(labelsize=7)
        info[cs.key] = {"n": int(d.size), "verdict": v.verdict}
    fig.suptitle("Primary paired differences per seed (grey), mean with its Holm-level interval (blue); "
                 "dashed: equivalence margin", fontsize=9)
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return info


QUALITATIVE_TEST = (("grpo", "Flow-GRPO"), ("dppo", "Flow-DPPO"), ("clip_fire", "clip ε_fire"),
                    ("no_tr", "no trust region"))
# Figs 1 and 6's columns: the base, then Flow-GRPO, Flow-CPS, GRPO-Guard, Flow-DPPO, Flow-DPPO + CPS
QUALITATIVE_PAPER = (("grpo", "Flow-GRPO"), ("x_cps_grpo", "Flow-CPS"), ("x_guard", "GRPO-Guard"),
                     ("dppo", "Flow-DPPO"), ("x_cps_dppo", "Flow-DPPO + CPS"))


def fig_qualitative(c: CC.Campaign, pilot_store: Path, out: Path, split: str = "test",
                    cells: tuple[tuple[str, str], ...] = QUALITATIVE_TEST) -> Optional[dict]:
    """The base vs seed 0 of `cells` at the end of training on `split`'s first prompts, each row with its text and
    each cell marked right or wrong (from the grids' sidecars)."""
    from flowdppo.evaluation import annotated_grid, read_grid
    from flowdppo.world import CELL_BOXES
    base_grid = next(iter(sorted(pilot_store.glob(f"*/samples/{split}_iter00000.png"))), None)
    columns, texts = [], None
    s = QUALITATIVE_SEEDS

    def add(title: str, png: Optional[Path]) -> None:
        nonlocal texts
        if png is None or not png.with_suffix(".json").exists():
            return
        imgs, side = read_grid(png)
        if side["texts"] is None or (texts is not None and side["texts"][:QUALITATIVE_PROMPTS] != texts):
            return
        texts = side["texts"][:QUALITATIVE_PROMPTS]
        keep = [i * side["per_prompt"] + j for i in range(len(texts)) for j in range(s)]
        columns.append((title, imgs[keep], [side["marks"][k] for k in keep] if side["marks"] else None))

    add("base", base_grid)
    for cell, title in cells:
        run = c.runs.get(f"{cell}-s0")
        add(f"{title} (seed 0)", run.sample_grid(split) if run is not None and run.path is not None else None)
    if texts is None or len(columns) < 2:
        return None
    annotated_grid(columns, texts, s, CELL_BOXES, out)
    return {"split": split, "columns": [t for t, _, _ in columns], "prompts": len(texts), "seeds": s}


def make(c: CC.Campaign, pilot_store: Path, out_dir: Path) -> dict[str, dict]:
    """Write the campaign's figures into out_dir; {file: what it holds}."""
    out_dir.mkdir(parents=True, exist_ok=True)
    made = {"campaign_paired_curves.png": fig_paired_curves(c, out_dir / "campaign_paired_curves.png"),
            "campaign_endpoints.png": fig_endpoints(c, out_dir / "campaign_endpoints.png")}
    for name, split, cells in (("campaign_qualitative.png", "test", QUALITATIVE_TEST),
                               ("campaign_fig01_qualitative_test.png", "test", QUALITATIVE_PAPER),
                               ("campaign_fig06_qualitative_ood.png", "ood", QUALITATIVE_PAPER)):
        q = fig_qualitative(c, pilot_store, out_dir / name, split, cells)
        if q is not None:
            made[name] = q
    made.update(paper_figures(c, pilot_store, out_dir))
    return made


# ---------------------------------------------------------------------------------------------------
# The paper's figures and tables from the campaign's cells
# ---------------------------------------------------------------------------------------------------
SINGLE = {"Flow-DPPO": "dppo", "Flow-GRPO": "grpo", "GRPO-Guard": "x_guard", "Flow-CPS": "x_cps_grpo",
          "Flow-DPPO + CPS": "x_cps_dppo", "no trust region": "no_tr"}
MULTI = {"Flow-DPPO": "multi_dppo", "Flow-GRPO": "multi_grpo"}
CFG = {"Flow-DPPO": "x_cfg_dppo", "Flow-GRPO": "x_cfg_grpo"}
DELTAS = {"δ = 1e-5": "x_delta_1e-5", "δ = 1e-4 (default)": "dppo", "δ = 1e-3": "x_delta_1e-3",
          "symmetric, δ = 1e-4": "x_sym_mid", "asymmetric, δ_hi": "asym_hi", "symmetric, δ_hi": "sym_hi"}
REUSE = {"Flow-DPPO G16-I1": "dppo", "Flow-GRPO G16-I1": "grpo", "Flow-DPPO G8-I2": "reuse_dppo",
         "Flow-GRPO G8-I2 ε=1.6e-3": "reuse_grpo_noise", "Flow-GRPO G8-I2 ε=1e-4": "reuse_grpo_value"}
BETAS = {"β = 0": "multi_dppo_b0", "β = 0.1 (default)": "multi_dppo", "β = 1": "x_multi_beta1",
         "β = 10": "x_multi_beta10"}
LR3 = {"Flow-DPPO lr 3e-4": "x_lr3_dppo", "Flow-GRPO lr 3e-4": "x_lr3_grpo", "no trust region lr 3e-4": "x_lr3_no_tr",
       "Flow-DPPO lr 1e-4": "dppo", "no trust region lr 1e-4": "no_tr"}
COLORS = ["#377eb8", "#7f7f7f", "#984ea3", "#a6761d", "#e41a1c", "#4daf4a", "#ff7f00", "#17becf"]


def cell_runs(c: CC.Campaign, cell: str) -> list:
    return [c.runs[r] for r in c.expected(cell) if r in c.runs]


def draw_cells(ax, c: CC.Campaign, cells: dict[str, str], column: str, *, x: str = "iteration",
               scale: float = 1.0) -> list[str]:
    """Seed mean ± 95 % t-band of a per-iteration column, each seed smoothed over SMOOTH iterations; x =
    iteration or samples seen (rollout batch × iteration, to compare G16-I1 with G8-I2). Returns the cells drawn."""
    from analysis.runs import plots
    drawn, means = [], []
    for (label, cell), color in zip(cells.items(), COLORS):
        runs = cell_runs(c, cell)
        rows = [smooth(r.series(column)[1]) for r in runs if column in r.iters]
        if not rows:
            continue
        n = min(len(r) for r in rows)
        it = np.arange(n, dtype=float)
        if x == "samples":
            cfg = runs[0].config
            it = it * int(cfg["prompts_per_iter"]) * int(cfg["group_size"])
        block = np.array([r[:n] for r in rows]) * scale
        plots.curve_band(ax, it, block, label=label, color=color)
        means.append(np.nanmean(block, axis=0))
        drawn.append(cell)
    if means:      # limits follow the seed means: at n = 2–3 a t-band (t_0.975,1 = 12.7) would flatten every curve
        allm = np.concatenate(means)
        if np.isfinite(allm).any():
            lo, hi = float(np.nanmin(allm)), float(np.nanmax(allm))
            pad = 0.35 * (hi - lo) if hi > lo else max(abs(hi), 1e-9) * 0.1
            ax.set_ylim(lo - pad, hi + pad)
    if not drawn:
        ax.text(0.5, 0.5, "no runs yet", ha="center", va="center", transform=ax.transAxes, fontsize=9)
    return drawn


def _figure(c: CC.Campaign, out: Path, title: str, panels: list[tuple[str, dict[str, str], str, dict]]) -> dict:
    """panels: (panel title, {label: cell}, column, kwargs of draw_cells)."""
    import matplotlib.pyplot as plt
    from analysis.runs import plots
    cols = min(len(panels), 4)
    rows = (len(panels) + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.3 * rows), squeeze=False)
    info = {}
    for ax, (ptitle, cells, column, kw) in zip(axes.flat, panels):
        drawn = draw_cells(ax, c, cells, column, **kw)
        plots.style(ax, xlabel="samples seen" if kw.get("x") == "samples" else "iteration", title=ptitle)
        if drawn:
            ax.legend(fontsize=6.5)
        info[ptitle] = {cell: len(cell_runs(c, cell)) for cell in cells.values()}
    for ax in list(axes.flat)[len(panels):]:
        ax.axis("off")
    fig.suptitle(title + f" — seed mean ± 95 % t-band, each seed a {SMOOTH}-iteration trailing mean (y-limits follow "
                 "the means)", fontsize=10)
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return info


def endpoint_table(c: CC.Campaign, cells: dict[str, str], endpoints: list[str], base: Optional[dict] = None) -> str:
    """Markdown: one row per cell, one column per §1 endpoint, 'mean [95 % CI] (n)' over its complete runs."""
    from analysis.runs import stats
    head = "| method | " + " | ".join(endpoints) + " |\n|---|" + "---|" * len(endpoints) + "\n"
    body = ""
    if base:
        body += "| base (iteration 0) | " + " | ".join(f"{base.get(e, float('nan')):.4g}" if e in base else "–"
                                                     for e in endpoints) + " |\n"
    for label, cell in cells.items():
        vals = []
        for e in endpoints:
            v = [CC.ENDPOINTS[e](r) for r in cell_runs(c, cell)]
            ci = stats.t_interval(v)
            vals.append("–" if ci.n == 0 else (f"{ci.mean:.4g} (n=1)" if ci.n == 1 else
                                               f"{ci.mean:.4g} [{ci.lo:.4g}, {ci.hi:.4g}] (n={ci.n})"))
        body += f"| {label} | " + " | ".join(vals) + " |\n"
    return head + body


def base_endpoints(pilot_store: Path) -> dict:
    """The base's evaluation (the pilot's iteration-0 evaluation; the same in every run)."""
    from analysis.runs.load_runs import load_run
    first = next(iter(sorted(p for p in pilot_store.iterdir() if (p / "eval.jsonl").exists())), None)
    if first is None:
        return {}
    run = load_run(first)
    return {"E_test": run.initial_eval("tifa"), "E_accuracy": run.initial_eval("accuracy"),
            "E_ood_fid": run.initial_eval("fid", "ood"), "E_agreement": run.initial_eval("agreement"),
            "E_realism": run.initial_eval("realism"), "E_ink": run.initial_eval("ink")}


def paper_figures(c: CC.Campaign, pilot_store: Path, out_dir: Path) -> dict[str, dict]:
    """The paper's figures and tables from the campaign: files → what each holds (runs per cell)."""
    made = {}
    made["campaign_fig02_07_09_single_reward.png"] = _figure(c, out_dir / "campaign_fig02_07_09_single_reward.png",
        "Figs 2/7/9 — single reward (tifa)", [
            ("training tifa", SINGLE, "reward/tifa_mean", {}),
            ("KL to the reference ×1e-3 per dim (Fig. 12)", SINGLE, "ref_kl_per_dim", {"scale": 1e3})])
    made["campaign_fig03_delta_asymmetry.png"] = _figure(c, out_dir / "campaign_fig03_delta_asymmetry.png",
        "Fig. 3 — δ and the asymmetry (single reward, Flow-SDE)", [
            ("training tifa", DELTAS, "reward/tifa_mean", {}),
            ("fraction of samples masked", DELTAS, "blocked", {})])
    made["campaign_fig04_08_multi_reward.png"] = _figure(c, out_dir / "campaign_fig04_08_multi_reward.png",
        "Figs 4/8 — four rewards, GDPO", [
            (f"training {m}", MULTI, f"reward/{m}_mean", {}) for m in ("tifa", "agreement", "realism", "ink")])
    made["campaign_fig05_multi_epoch.png"] = fig5(c, out_dir / "campaign_fig05_multi_epoch.png")
    made["campaign_fig10_cfg.png"] = _figure(c, out_dir / "campaign_fig10_cfg.png", "Fig. 10 — CFG 3 in training", [
        ("training tifa", CFG, "reward/tifa_mean", {}),
        ("KL to the reference ×1e-3 per dim", CFG, "ref_kl_per_dim", {"scale": 1e3})])
    made["campaign_fig11_13_beta.png"] = _figure(c, out_dir / "campaign_fig11_13_beta.png",
        "Figs 11/13 — β on the exact KL to the reference (four rewards, GDPO)", [
            ("training ink (the hackable reward)", BETAS, "reward/ink_mean", {}),
            ("training tifa", BETAS, "reward/tifa_mean", {}),
            ("KL to the reference ×1e-3 per dim (Fig. 13)", BETAS, "ref_kl_per_dim", {"scale": 1e3})])
    made["campaign_lr3_trust_region.png"] = _figure(c, out_dir / "campaign_lr3_trust_region.png",
        "Does a trust region matter? default lr and 3× (single reward)", [
            ("training tifa", LR3, "reward/tifa_mean", {})])
    base = base_endpoints(pilot_store)
    ends = ["E_test", "E_accuracy", "E_ood_fid", "E_agreement", "E_realism", "E_ink", "K_ref"]
    tables = {
        "campaign_table1_multi_reward.md": ("Table 1 — four rewards, GDPO", MULTI),
        "campaign_table3_4_single_cfg.md": ("Tables 3/4 — single reward, all methods, and CFG",
                                            {**SINGLE, **{f"{k}, CFG 3": v for k, v in CFG.items()}}),
        "campaign_table_delta_beta_lr.md": ("δ, asymmetry, β and learning rate",
                                            {**DELTAS, **{f"GDPO {k}": v for k, v in BETAS.items()}, **LR3}),
        "campaign_table2_ref_kl_reuse.md": ("Table 2 / Fig. 5 — sample reuse (R_final is the C4 endpoint)", REUSE),
    }
    for name, (title, cells) in tables.items():
        cols = ends + (["R_final"] if "reuse" in name else [])
        (out_dir / name).write_text(
            f"# {title}\n\nEndpoints of docs/analysis_plan.md §1 (E_* average the evaluations of the last quarter; "
            "K_ref, R_final the last quarter of the iterations): mean [95 % t-interval] (n complete runs). "
            "Generated by analysis/runs/campaign_figures.py.\n\n" + endpoint_table(c, cells, cols, base))
        made[name] = {cell: len(cell_runs(c, cell)) for cell in cells.values()}
    return made


def fig5(c: CC.Campaign, out: Path) -> dict:
    """Fig. 5: sample reuse. Left: ours, training tifa against samples seen (G16-I1 at 64 samples per iteration,
    G8-I2 at 32 with two passes each). Right: the paper's digitised Flow-SDE curves (reference only)."""
    import matplotlib.pyplot as plt
    import pandas as pd
    from analysis.runs import plots
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    draw_cells(axes[0], c, REUSE, "reward/tifa_mean", x="samples")
    plots.style(axes[0], xlabel="samples seen", ylabel="training tifa", title="ours (Flow-SDE)")
    if axes[0].get_legend_handles_labels()[0]:          # an empty campaign draws no curve
        axes[0].legend(fontsize=6.5)
    digitized = Path(__file__).resolve().parents[1] / "data" / "fig5_multiepoch_digitized.csv"
    d = pd.read_csv(digitized)
    for setting, color in zip(("G64-I1", "G32-I2", "G64-I2"), ("#e41a1c", "#4daf4a", "#377eb8")):
        s = d[(d["schedule"] == "flow_sde") & (d["setting"] == setting)]
        axes[1].plot(s["epoch"], s["ratio_clip_baseline"], "--", color=color, label=f"clip {setting}")
        axes[1].plot(s["epoch"], s["flow_dppo_variant"], "-", color=color, label=f"Flow-DPPO {setting}")
    plots.style(axes[1], xlabel="training epoch", ylabel="training GenEval2", title="paper, SD3.5 Flow-SDE (digitised)")
    axes[1].legend(fontsize=6.5)
    fig.suptitle(f"Fig. 5 — sample reuse (seed mean ± 95 % t-band, {SMOOTH}-iteration trailing mean; y-limits follow "
                 "the means, so a band at small n can run off the axis)", fontsize=10)
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return {cell: len(cell_runs(c, cell)) for cell in REUSE.values()}
